"""`serve` limits: requests beyond --queue get 503 (exactly the bound: one running, --queue waiting), a
concept bank larger than --max-concepts is refused at start-up with one line saying how to raise the
cap, concept prompts are encoded in batches, and the CLI options reach the server's config."""

from __future__ import annotations

import io
import threading

import pytest
from PIL import Image

from web_server import BlockingExplainer

pytest.importorskip("fastapi", reason="the web extra (fastapi) is not installed")
pytest.importorskip("multipart", reason="the web extra (python-multipart) is not installed")


@pytest.fixture(scope="module")
def explainer(web_run):
    from conceptclip.report.explainer import RunExplainer

    return RunExplainer(web_run["run"], bank=web_run["bank"])


def _png(path) -> bytes:
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("queue", [0, 2])
def test_requests_beyond_the_queue_bound_get_503(explainer, web_run, queue):
    from fastapi.testclient import TestClient

    from conceptclip.web.app import ServeConfig, create_app

    blocking = BlockingExplainer(explainer)
    data = _png(web_run["data"] / "cat" / "1.png")
    extra = queue + 3  # while one image is explained: `queue` requests wait, every further one is refused
    statuses: dict[str, int] = {}
    refused = threading.Semaphore(0)
    with TestClient(create_app(explainer=blocking, config=ServeConfig(max_concurrency=1, max_queue=queue))) as c:
        def post(name: str) -> None:
            r = c.post("/api/explain", files={"file": (f"{name}.png", data, "image/png")})
            statuses[name] = r.status_code
            if r.status_code == 503:
                assert "busy" in r.json()["error"]
                refused.release()

        first = threading.Thread(target=post, args=("first",))
        first.start()
        assert blocking.entered.wait(120)
        others = [threading.Thread(target=post, args=(f"r{i}",)) for i in range(extra)]
        for t in others:
            t.start()
        for _ in range(extra - queue):  # the refusals come back while the first image is still held
            assert refused.acquire(timeout=120)
        assert "first" not in statuses
        blocking.release.set()
        for t in [first, *others]:
            t.join(120)
    assert statuses["first"] == 200
    others_status = sorted(statuses[f"r{i}"] for i in range(extra))
    assert others_status == [200] * queue + [503] * (extra - queue), statuses


def test_a_bank_larger_than_the_cap_is_refused_with_the_option_to_raise_it(web_run):
    from conceptclip.errors import ConfigError
    from conceptclip.web.app import ServeConfig, create_app

    with pytest.raises(ConfigError, match=r"has 6 concepts, more than the cap of 5 .*--max-concepts 6"):
        create_app(web_run["run"], bank=str(web_run["bank"]), config=ServeConfig(max_concepts=5))
    with pytest.raises(ConfigError, match="max_concepts=0"):
        ServeConfig(max_concepts=0)
    app = create_app(web_run["run"], bank=str(web_run["bank"]), config=ServeConfig(max_concepts=6))
    assert app is not None


def test_concept_prompts_are_encoded_in_batches(tiny_clip, monkeypatch):
    from conceptclip.prompts import encode_prompts

    sizes = []
    real = type(tiny_clip).encode_texts

    def counting(self, texts):
        sizes.append(len(texts))
        return real(self, texts)

    monkeypatch.setattr(type(tiny_clip), "encode_texts", counting)
    feats = encode_prompts(tiny_clip, [f"concept {i}" for i in range(600)], desc="encoding 600 concept prompts")
    assert sizes == [256, 256, 88] and feats.shape == (600, tiny_clip.embed_dim)


def test_serve_options_reach_the_server_config(web_run, monkeypatch):
    import uvicorn

    import conceptclip.web.app as web_app
    from conceptclip.cli import main

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.setdefault("run", kw))
    real = web_app.create_app
    monkeypatch.setattr(web_app, "create_app", lambda *a, **k: seen.setdefault("config", k["config"]) and real(*a, **k))
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--run", str(web_run["run"]), "--concepts", str(web_run["bank"]), "--queue", "2",
              "--max-concepts", "7"])
    assert exc.value.code == 0
    assert seen["config"].max_queue == 2 and seen["config"].max_concepts == 7
    assert seen["run"]["host"] == "127.0.0.1"
