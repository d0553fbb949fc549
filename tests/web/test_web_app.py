"""The demo server over a real tiny run, through Starlette's test client: the explanation matches
the model, uploads are checked (type by decoding, size, decompression bombs) with one-line JSON
errors, no route reads files, requests beyond the queue get 503, and `serve` binds 127.0.0.1."""

from __future__ import annotations

import base64
import io
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from web_server import BlockingExplainer

pytest.importorskip("fastapi", reason="the web extra (fastapi) is not installed")
pytest.importorskip("multipart", reason="the web extra (python-multipart) is not installed")


@pytest.fixture(scope="module")
def explainer(web_run):
    from conceptclip.report.explainer import RunExplainer

    return RunExplainer(web_run["run"], bank=web_run["bank"])


@pytest.fixture(scope="module")
def client(explainer):
    from fastapi.testclient import TestClient

    from conceptclip.web.app import create_app

    with TestClient(create_app(explainer=explainer)) as c:
        yield c


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_page_and_info(client, web_run):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert 'id="file"' in page.text and "http://" not in page.text and "https://" not in page.text
    info = client.get("/api/info").json()
    assert info == {"run": "run", "method": "coop", "classnames": ["cat", "dog", "fish"], "backbone": "tiny-clip",
                    "dataset": "data", "explainers": ["gradcam", "similarity", "chefer"], "concepts": 6,
                    "concept_source": info["concept_source"], "max_bytes": 10 * 1024 * 1024}
    assert info["concept_source"].startswith("pets (sha256:")
    assert str(web_run["root"]) not in page.text + str(info)  # no server paths leak


def test_explain_returns_the_models_prediction_scores_and_maps(client, web_run):
    from conceptclip.engine.load import load_run

    image = Image.open(web_run["data"] / "dog" / "5.png").convert("RGB")
    res = client.post("/api/explain", files={"file": ("dog 5.png", png(image), "image/png")})
    assert res.status_code == 200, res.text
    doc = res.json()
    method, _ = load_run(web_run["run"])
    with torch.no_grad():
        pixels = method.backbone.preprocess([image])
        probs = method.probabilities(method.logits({"features": method.backbone.encode_image(pixels).global_}))[0]
    assert doc["prediction"] == method.classnames[int(probs.argmax())]
    got = {p["class"]: p["p"] for p in doc["probabilities"]}
    np.testing.assert_allclose([got[c] for c in method.classnames], probs.numpy(), atol=1e-6)
    assert [p["p"] for p in doc["probabilities"]] == sorted(got.values(), reverse=True)
    assert doc["concept_kind"] == "cosine" and len(doc["concepts"]) == 6
    assert doc["concepts"][0]["bar"] == 1.0
    assert [m["name"] for m in doc["maps"]] == ["gradcam", "chefer", "similarity", "concept"]
    for m in doc["maps"] + [{"data_url": doc["image"]}]:
        assert m["data_url"].startswith("data:image/png;base64,")
        im = Image.open(io.BytesIO(base64.b64decode(m["data_url"].split(",", 1)[1])))
        assert im.size == (method.backbone.image_size,) * 2
    assert doc["rationale"][0].startswith(f"Predicted {doc['prediction']} with probability")
    assert doc["file"] == "dog 5.png" and doc["seconds"] >= 0
    # every model map carries its sanity check (learned-parameter randomisation) and the verdict
    for m in doc["maps"][:3]:
        (check,) = m["sanity"]
        assert check["test"] == "parameter_randomisation" and -1 <= check["spearman"] <= 1
        assert m["failed"] == (check["applicable"] and not check["passed"])
        assert m["sanity_text"] == check["message"]
    assert doc["maps"][3]["failed"] is False and "Not a sanity-checked explanation" in doc["maps"][3]["sanity_text"]


@pytest.mark.parametrize("name,data,status,message", [
    ("notes.txt", b"just some text, not an image", 415, "'notes.txt' is not an image that can be decoded: cannot read image"),
    ("cut.png", None, 415, "'cut.png' is not an image that can be decoded"),
    ("empty.png", b"", 400, "'empty.png' is empty"),
])
def test_rejected_uploads(client, name, data, status, message):
    if data is None:  # a PNG cut in half: the header parses, the pixels do not
        whole = png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
        data = whole[: len(whole) // 2]
    res = client.post("/api/explain", files={"file": (name, data, "image/png")})
    assert res.status_code == status
    assert res.json()["error"].startswith(message)
    assert "\n" not in res.json()["error"] and "/tmp" not in res.json()["error"]


def test_decompression_bomb_is_refused(client):
    """A 1-bit 8200 x 8200 PNG is a few KB on disk but 67 M pixels: over load_image's 64 M limit."""
    buf = io.BytesIO()
    Image.new("1", (8200, 8200)).save(buf, format="PNG")
    assert len(buf.getvalue()) < 200_000
    res = client.post("/api/explain", files={"file": ("bomb.png", buf.getvalue(), "image/png")})
    assert res.status_code == 415
    assert "8200x8200 pixels exceeds the limit" in res.json()["error"]


def test_size_limit_default_10_mb(client):
    big = b"\x89PNG" + b"0" * (10 * 1024 * 1024 - 3)  # one byte over 10 MB
    res = client.post("/api/explain", files={"file": ("huge.png", big, "image/png")})
    assert res.status_code == 413
    assert res.json() == {"error": "'huge.png' is larger than the limit of 10.0 MB"}
    bigger = b"0" * (11 * 1024 * 1024)  # over the limit plus form overhead: refused before parsing
    res = client.post("/api/explain", files={"file": ("huger.png", bigger, "image/png")})
    assert res.status_code == 413
    assert res.json() == {"error": "the upload is larger than the limit of 10.0 MB"}


def test_chunked_body_over_the_limit_is_refused(explainer):
    from fastapi.testclient import TestClient

    from conceptclip.web.app import ServeConfig, create_app

    def chunks():
        for _ in range(40):
            yield b"x" * 10_000

    with TestClient(create_app(explainer=explainer, config=ServeConfig(max_bytes=100_000))) as c:
        res = c.post("/api/explain", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert res.status_code == 413 and "larger than the limit of" in res.json()["error"]


def test_malformed_requests(client):
    res = client.post("/api/explain", data={"x": "1"})  # url-encoded form
    assert res.status_code == 400 and "multipart/form-data" in res.json()["error"]
    res = client.post("/api/explain", content=b"raw", headers={"content-type": "application/octet-stream"})
    assert res.status_code == 400 and "multipart/form-data" in res.json()["error"]
    res = client.post("/api/explain", files={"other": ("a.png", b"123", "image/png")})
    assert res.status_code == 400 and res.json()["error"].startswith("no file uploaded")
    res = client.post("/api/explain", content=b"--b\r\nbroken", headers={"content-type": "multipart/form-data"})
    assert res.status_code == 400 and res.json()["error"].startswith(("malformed upload", "no file uploaded"))


def test_no_route_reads_files(client, web_run):
    secret = web_run["root"] / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    for url in ("/../secret.txt", "/%2e%2e/secret.txt", "/api/../../secret.txt", "/static/secret.txt",
                f"/{secret}", "/config.json", "/model.safetensors", "/api/info/../../config.json", "/docs",
                "/openapi.json"):
        res = client.get(url)
        assert "TOP-SECRET" not in res.text and '"split_sha256"' not in res.text
        if res.status_code != 200:
            assert res.status_code in (404, 405) and "error" in res.json()
    paths = sorted(getattr(r, "path", "") for r in client.app.app.routes)  # client.app is the body-limit wrapper
    assert paths == ["/", "/api/explain", "/api/info"]


def test_requests_beyond_the_queue_get_503(explainer, web_run):
    from fastapi.testclient import TestClient

    from conceptclip.web.app import ServeConfig, create_app

    slow = BlockingExplainer(explainer)
    data = png(Image.open(web_run["data"] / "cat" / "1.png").convert("RGB"))
    with TestClient(create_app(explainer=slow, config=ServeConfig(max_concurrency=1, max_queue=0))) as c:
        first: dict = {}
        t = threading.Thread(target=lambda: first.setdefault(
            "res", c.post("/api/explain", files={"file": ("a.png", data, "image/png")})))
        t.start()
        assert slow.entered.wait(30)
        busy = c.post("/api/explain", files={"file": ("b.png", data, "image/png")})
        slow.release.set()
        t.join(60)
    assert busy.status_code == 503 and "busy" in busy.json()["error"]
    assert first["res"].status_code == 200


def test_serve_command_binds_localhost_by_default(web_run, monkeypatch):
    import uvicorn
    from typer.testing import CliRunner

    from conceptclip.cli import app

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app_, **kw: calls.append(kw))
    res = CliRunner().invoke(app, ["serve", "--run", str(web_run["run"]), "--concepts", str(web_run["bank"])])
    assert res.exit_code == 0, res.output
    assert calls == [{"host": "127.0.0.1", "port": 8000, "log_level": "warning", "workers": 1}]
    res = CliRunner().invoke(app, ["serve", "--run", str(web_run["run"]), "--host", "0.0.0.0", "--port", "8123",
                                   "--concepts", str(web_run["bank"])])
    assert res.exit_code == 0 and calls[-1]["host"] == "0.0.0.0" and "no authentication" in res.output
    from conceptclip.cli.serve import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
