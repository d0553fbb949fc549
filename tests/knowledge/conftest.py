"""Fixtures of the knowledge tests: the shared data folder (skip when absent) and a scripted
fake OpenAI-compatible chat server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conceptclip.paths import shared_data_dir




@pytest.fixture(scope="session")
def shared() -> Path:
    root = shared_data_dir()
    if not (root / "banks").is_dir():
        pytest.skip(f"shared data not found at {root}")
    return root


def chat_body(content: str) -> bytes:
    return json.dumps({"id": "x", "object": "chat.completion",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}).encode()


class FakeLLM:
    """Each request takes the next scripted action; with the script empty, `default(request)`
    answers. Actions: ("ok", content) | ("status", code) | ("sleep", seconds, content) | ("raw", bytes).
    At most `max_requests` are served (then 503), so a faulty client cannot loop for ever."""

    def __init__(self, max_requests: int = 50):
        self.script: list[tuple] = []
        self.requests: list[dict] = []
        self.max_requests = max_requests
        self.default = lambda req: ("ok", '{"concepts": ["a", "b"]}')
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                fake.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                if len(fake.requests) > fake.max_requests:
                    action = ("status", 503)
                else:
                    action = fake.script.pop(0) if fake.script else fake.default(body)
                try:
                    if action[0] == "sleep":
                        time.sleep(action[1])
                        action = ("ok", action[2])
                    if action[0] == "status":
                        self.send_response(action[1])
                        self.send_header("Content-Type", "text/plain")
                        self.end_headers()
                        self.wfile.write(b"scripted failure")
                        return
                    payload = chat_body(action[1]) if action[0] == "ok" else action[1]
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"


@pytest.fixture
def fake_llm():
    fake = FakeLLM()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()
