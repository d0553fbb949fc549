"""End to end in a real browser: Debian's chromium, headless, driven by chromedriver through
selenium, loads the demo served by uvicorn on a free localhost port, uploads an image and waits
for the prediction, the concept bars and the heat maps; then uploads a non-image and an
oversize file and reads the error message the page shows.

Needs: the `chromium` and `chromium-driver` Debian packages (or CHROMIUM_BIN / CHROMEDRIVER_BIN
pointing at a Chromium and its matching driver), `selenium` and the web extra (fastapi, uvicorn,
python-multipart). Skips, saying which is missing, otherwise.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from web_server import running_server

pytest.importorskip("fastapi", reason="the web extra (fastapi) is not installed")
pytest.importorskip("uvicorn", reason="the web extra (uvicorn) is not installed")
pytest.importorskip("multipart", reason="the web extra (python-multipart) is not installed")
pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")

LIMIT = 256 * 1024  # a small upload limit, so the oversize file is quick to make and send


def _binary(env: str, *names: str) -> str | None:
    if os.environ.get(env):
        return os.environ[env] if os.path.isfile(os.environ[env]) else None
    return next((p for p in map(shutil.which, names) if p), None)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium = _binary("CHROMIUM_BIN", "chromium", "chromium-browser")
    driver_bin = _binary("CHROMEDRIVER_BIN", "chromedriver")
    if chromium is None or driver_bin is None:
        pytest.skip("chromium and/or chromedriver not found (apt-get install -y chromium chromium-driver, or set "
                    "CHROMIUM_BIN and CHROMEDRIVER_BIN)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-dev-shm-usage",
                 "--window-size=1280,1000", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_bin), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(web_run):
    from conceptclip.web.app import ServeConfig, create_app

    app = create_app(web_run["run"], bank=web_run["bank"], config=ServeConfig(max_bytes=LIMIT))
    with running_server(app, timeout=30, log_level="warning") as port:
        yield f"http://127.0.0.1:{port}/"


def _upload(browser, path, expect: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    browser.find_element(By.ID, "file").send_keys(str(path))
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 30).until(EC.visibility_of_element_located((By.ID, expect)))


def test_demo_in_chromium(browser, server, web_run, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server)
    assert browser.title == "conceptclip demo"
    assert "method coop" in browser.find_element(By.ID, "runinfo").text
    assert browser.find_element(By.ID, "limit").text == "256 KB"

    # a real image: prediction, concept bars and heat maps appear
    _upload(browser, web_run["data"] / "fish" / "2.png", "result")
    prediction = browser.find_element(By.ID, "prediction").text
    assert prediction.startswith("Prediction: ") and prediction.split()[1] in ("cat", "dog", "fish")
    bars = browser.find_elements(By.CSS_SELECTOR, "#concepts .concept-bar")
    assert len(bars) == 6 and bars[0].find_element(By.CSS_SELECTOR, ".name").text in (
        "whiskers", "pointed ears", "floppy ears", "wet nose", "fins", "scales")
    maps = browser.find_elements(By.CSS_SELECTOR, "img.heatmap")
    assert len(maps) == 4
    WebDriverWait(browser, 10).until(lambda d: all(d.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth > 0", m) for m in maps))
    predicted = prediction.split()[1]
    assert browser.find_element(By.CSS_SELECTOR, "#rationale li").text.startswith(
        f"Predicted {predicted} with probability")
    assert not browser.find_element(By.ID, "error").is_displayed()

    # a text file named like an image: rejected after decoding fails
    fake = tmp_path / "notes.png"
    fake.write_text("this is not an image")
    _upload(browser, fake, "error")
    error = browser.find_element(By.ID, "error").text
    assert error.startswith("'notes.png' is not an image that can be decoded: cannot read image")
    assert not browser.find_element(By.ID, "result").is_displayed()

    # an oversize file: rejected by size
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > LIMIT
    _upload(browser, big, "error")
    WebDriverWait(browser, 30).until(lambda d: "larger than the limit" in d.find_element(By.ID, "error").text)
    assert browser.find_element(By.ID, "error").text.endswith("larger than the limit of 256 KB")
