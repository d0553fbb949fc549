"""Serve an ASGI app with uvicorn in a background thread on a free local port (web tests)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any, Iterator


@contextlib.contextmanager
def running_server(app: Any, timeout: float = 60, log_level: str = "error") -> Iterator[int]:
    """Start `app` on 127.0.0.1, yield its port once uvicorn has started, stop it afterwards."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level=log_level))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not srv.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    try:
        yield port
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


class BlockingExplainer:
    """Wraps a real explainer and holds each request inside `explain` until `release` is set
    (queue and concurrency tests of the web demo); `entered` says a request got there."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.entered, self.release = inner, threading.Event(), threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def explain(self, image: Any) -> Any:
        self.entered.set()
        assert self.release.wait(120), "the test never released the explainer"
        return self.inner.explain(image)
