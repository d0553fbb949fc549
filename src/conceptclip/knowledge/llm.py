"""A small client for any OpenAI-compatible `/v1/chat/completions` endpoint, with an on-disk
answer cache, retries with exponential backoff, and a minimum interval between requests.

Only the standard library is used (urllib). The cache key is
sha256(canonical JSON of {"model", "messages", "params"}); each answer is one JSON file under
`cache_dir/<key[:2]>/<key>.json`, written atomically, so reruns of an elicitation cost nothing
and are reproducible. Timeouts, connection errors, HTTP 429 and 5xx are retried (attempt k
waits `backoff_s * backoff_factor**k`); other HTTP errors and malformed responses fail at once.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from conceptclip.errors import KnowledgeError
from conceptclip.io import write_json
from conceptclip.knowledge.schema import canonical_json

KEY_ENV = "CONCEPTCLIP_LLM_KEY"


@dataclass(frozen=True)
class LLMConfig:
    base_url: str  # e.g. "http://127.0.0.1:8000/v1"; requests go to f"{base_url}/chat/completions"
    model: str
    api_key: str | None = None  # else read from $CONCEPTCLIP_LLM_KEY (may be unset for local servers)
    temperature: float = 0.0
    max_tokens: int | None = None
    timeout_s: float = 60.0
    max_retries: int = 3  # retries after the first attempt
    backoff_s: float = 1.0
    backoff_factor: float = 2.0
    min_interval_s: float = 0.0  # rate limit: at least this long between request starts
    cache_dir: str | None = None  # None: no cache

    def __post_init__(self):
        if not re.match(r"^https?://", self.base_url):
            raise KnowledgeError(f"base_url: expected an http(s) URL, got {self.base_url!r}")
        if not self.model.strip():
            raise KnowledgeError("model: expected a non-empty model name")
        if self.timeout_s <= 0 or self.max_retries < 0 or self.backoff_s < 0 or self.min_interval_s < 0:
            raise KnowledgeError("timeout_s must be > 0; max_retries, backoff_s and min_interval_s must be >= 0")

    def key(self) -> str | None:
        return self.api_key if self.api_key is not None else os.environ.get(KEY_ENV)


@dataclass
class ClientStats:
    cache_hits: int = 0
    cache_misses: int = 0
    requests: int = 0  # HTTP attempts, retries included
    retries: int = 0
    waits: list[float] = field(default_factory=list)  # seconds slept (backoff and rate limit)


def cache_key(model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json({"model": model, "messages": messages, "params": params})).hexdigest()


class ChatClient:
    """`chat(messages) -> answer text`; `clock` and `sleep` are injectable for tests."""

    def __init__(self, config: LLMConfig, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.config = config
        self.stats = ClientStats()
        self._clock, self._sleep = clock, sleep
        self._last_start: float | None = None

    @property
    def url(self) -> str:
        return self.config.base_url.rstrip("/") + "/chat/completions"

    def params(self) -> dict[str, Any]:
        p: dict[str, Any] = {"temperature": self.config.temperature}
        if self.config.max_tokens is not None:
            p["max_tokens"] = self.config.max_tokens
        return p

    def _cache_path(self, key: str) -> Path | None:
        if self.config.cache_dir is None:
            return None
        return Path(self.config.cache_dir) / key[:2] / f"{key}.json"

    def chat(self, messages: list[dict[str, str]]) -> str:
        _check_messages(messages)
        params = self.params()
        key = cache_key(self.config.model, messages, params)
        path = self._cache_path(key)
        if path is not None and path.is_file():
            try:
                answer = json.loads(path.read_text(encoding="utf-8"))["answer"]
                if isinstance(answer, str):
                    self.stats.cache_hits += 1
                    return answer
            except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
                pass  # a damaged entry is a miss and gets rewritten
        self.stats.cache_misses += 1
        answer = self._request(messages, params)
        if path is not None:
            write_json(path, {"key": key, "model": self.config.model, "messages": messages, "params": params,
                              "answer": answer, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        return answer

    # ---- HTTP --------------------------------------------------------------------------
    def _wait_rate_limit(self) -> None:
        if self._last_start is not None and self.config.min_interval_s > 0:
            wait = self._last_start + self.config.min_interval_s - self._clock()
            if wait > 0:
                self.stats.waits.append(wait)
                self._sleep(wait)
        self._last_start = self._clock()

    def _request(self, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
        body = json.dumps({"model": self.config.model, "messages": messages, **params}).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.config.key():
            headers["Authorization"] = f"Bearer {self.config.key()}"
        attempts = self.config.max_retries + 1
        last_error = ""
        for attempt in range(attempts):
            if attempt:
                wait = self.config.backoff_s * self.config.backoff_factor ** (attempt - 1)
                self.stats.retries += 1
                self.stats.waits.append(wait)
                self._sleep(wait)
            self._wait_rate_limit()
            self.stats.requests += 1
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
                    raw = response.read()
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:200].decode("utf-8", "replace")
                if exc.code == 429 or exc.code >= 500:
                    last_error = f"HTTP {exc.code} {detail}".strip()
                    continue
                hint = f" (check ${KEY_ENV})" if exc.code in (401, 403) else ""
                raise KnowledgeError(f"{self.url}: HTTP {exc.code}{hint}: {detail}") from None
            except (TimeoutError, socket.timeout) as exc:
                last_error = f"timed out after {self.config.timeout_s:g} s ({exc})"
                continue
            except urllib.error.URLError as exc:
                if isinstance(exc.reason, (TimeoutError, socket.timeout)):
                    last_error = f"timed out after {self.config.timeout_s:g} s"
                else:
                    last_error = f"connection failed ({exc.reason})"
                continue
            except (OSError, http.client.HTTPException) as exc:  # reset by peer, bad status line, ...
                last_error = f"connection failed ({type(exc).__name__}: {exc})"
                continue
            return _answer_text(raw, self.url)
        raise KnowledgeError(f"{self.url}: no answer after {attempts} attempt(s): {last_error}")


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise KnowledgeError("messages: expected a non-empty list of {'role', 'content'} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                or not isinstance(m.get("content"), str):
            raise KnowledgeError(f"messages[{i}]: expected {{'role': system|user|assistant, 'content': str}}")


def _answer_text(raw: bytes, url: str) -> str:
    try:
        data = json.loads(raw)
        content = data["choices"][0]["message"]["content"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError):
        raise KnowledgeError(
            f"{url}: response is not an OpenAI chat completion (expected choices[0].message.content), "
            f"got {raw[:120]!r}"
        ) from None
    if not isinstance(content, str):
        raise KnowledgeError(f"{url}: choices[0].message.content is not a string")
    return content


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)


def parse_json_answer(text: str, expected: type = dict, what: str = "LLM answer") -> Any:
    """The JSON value in an answer: the whole text, else a ```json fenced block, else the first
    {...} / [...] span. KnowledgeError quoting the answer's start when none parses or the type
    differs from `expected`."""
    candidates = [text.strip()]
    candidates += [m.group(1).strip() for m in _FENCE.finditer(text)]
    opener = "{" if expected is dict else "["
    closer = "}" if expected is dict else "]"
    if opener in text and closer in text:
        candidates.append(text[text.index(opener): text.rindex(closer) + 1])
    for cand in candidates:
        try:
            value = json.loads(cand)
        except json.JSONDecodeError:
            continue
        if isinstance(value, expected):
            return value
    shown = text.strip().replace("\n", " ")
    shown = shown[:80] + ("..." if len(shown) > 80 else "")
    raise KnowledgeError(f"{what}: expected a JSON {expected.__name__}, got malformed answer: {shown!r}")


def string_list(value: Any, key: str, what: str = "LLM answer") -> list[str]:
    """`value[key]` as a list of non-empty strings, stripped (KnowledgeError otherwise)."""
    if not isinstance(value, dict) or key not in value:
        raise KnowledgeError(f"{what}: expected an object with key {key!r}, got keys {sorted(value) if isinstance(value, dict) else type(value).__name__}")
    items = value[key]
    if not isinstance(items, list) or not items or not all(isinstance(x, str) and x.strip() for x in items):
        raise KnowledgeError(f"{what}: {key!r} must be a non-empty list of non-empty strings")
    return [x.strip() for x in items]
