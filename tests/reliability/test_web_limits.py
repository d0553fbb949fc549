"""Point 4, the web demo on loopback (a real uvicorn server over a real tiny-clip CoOp run): upload
size and type limits, the decompression-bomb guard, 20 parallel uploads all answered (200 or a
bounded 503, none hanging), and no URL reads files of the run folder or outside it."""

from __future__ import annotations

import http.client
import io
import json
import struct
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from web_server import running_server

pytest.importorskip("fastapi", reason="the web extra (fastapi) is not installed")
pytest.importorskip("uvicorn", reason="the web extra (uvicorn) is not installed")
pytest.importorskip("multipart", reason="the web extra (python-multipart) is not installed")

MAX_BYTES = 200_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from conceptclip.backbones import create_backbone
    from conceptclip.data import fewshot_split, from_folder, holdout_split
    from conceptclip.engine import run_experiment
    from conceptclip.web.app import ServeConfig, create_app

    root = tmp_path_factory.mktemp("webdata")
    rng = np.random.default_rng(5)
    for c, name in enumerate(["cat", "dog"]):
        (root / name).mkdir()
        for i in range(6):
            Image.fromarray(np.clip(rng.normal(60 + 90 * c, 20, (32, 32, 3)), 0, 255).astype(np.uint8)).save(
                root / name / f"{i}.png")
    ds = from_folder(root)
    run = tmp_path_factory.mktemp("webruns") / "run"
    run_experiment("coop", ds, fewshot_split(ds, holdout_split(ds), 1, 1), create_backbone("tiny-clip"), run,
                   method_config={"n_ctx": 2}, train_config={"epochs": 1, "progress": False})
    app = create_app(run, config=ServeConfig(max_bytes=MAX_BYTES, max_concurrency=1, max_queue=4))
    with running_server(app) as port:
        yield port, run


def _post(port: int, data: bytes, filename: str = "x.png", timeout: float = 120) -> tuple[int, dict]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/api/explain", body=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def _png(size: int = 32, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _bomb(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_upload_limits_and_types(server):
    port, _ = server
    status, doc = _post(port, _png())
    assert status == 200 and doc["prediction"] in ("cat", "dog"), doc
    cases = [(b"x" * (MAX_BYTES + 1), "big.png", 413, "limit"),
             (b"x" * (MAX_BYTES * 3), "huge.png", 413, "limit"),
             (b"hello, I am text\n", "text.png", 415, "not an image"),
             (b"", "empty.png", 400, "empty"),
             (_png()[:60], "truncated.png", 415, "not an image"),
             (_bomb(9_000, 8_000), "bomb.png", 415, "exceeds the limit"),
             (_bomb(100_000, 100_000), "bomb2.png", 415, "not an image")]
    for data, name, want, needle in cases:
        status, doc = _post(port, data, name)
        assert status == want and needle in doc["error"] and "\n" not in doc["error"], (name, status, doc)


def test_chunked_oversize_body_is_cut(server):
    """A body without Content-Length is counted as it streams and refused past the limit."""
    port, _ = server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.putrequest("POST", "/api/explain")
    conn.putheader("Content-Type", "multipart/form-data; boundary=b")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    try:
        for _ in range(20):
            piece = b"y" * 64_000
            conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        conn.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may close the connection once it has answered
    resp = conn.getresponse()
    assert resp.status == 413 and "limit" in json.loads(resp.read())["error"]
    conn.close()


def test_twenty_parallel_uploads_all_answered(server):
    port, _ = server
    images = [_png(48, seed) for seed in range(20)]
    t0 = time.time()
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda d: _post(port, d), images))
    statuses = [s for s, _ in results]
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 5, statuses  # 1 running + 4 queued at least
    assert all("busy" in doc["error"] for s, doc in results if s == 503)
    assert time.time() - t0 < 120
    assert _post(port, _png())[0] == 200  # still serving afterwards


def test_no_url_reads_files(server):
    port, run = server
    secret = (run / "config.json").read_text()[:40]
    for url in ("/config.json", "/../config.json", "/%2e%2e/%2e%2e/etc/passwd", "/static/../config.json",
                "/api/../../etc/passwd", "/api/info/../../model.safetensors", "//etc/passwd", "/model.safetensors"):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", url)
        resp = conn.getresponse()
        body = resp.read().decode("utf-8", "replace")
        conn.close()
        assert resp.status in (404, 405) and secret not in body and "root:" not in body, (url, resp.status, body[:200])
