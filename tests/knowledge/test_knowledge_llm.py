"""LLM client and elicitation against a scripted fake OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json

import pytest

from conceptclip.errors import KnowledgeError
from conceptclip.knowledge.elicit import ELICITATION_TEMPLATES, build_messages, elicit_bank
from conceptclip.knowledge.llm import ChatClient, LLMConfig, cache_key, parse_json_answer, string_list
from conceptclip.knowledge.schema import load_bank, save_bank

MSG = [{"role": "user", "content": "List concepts of melanoma."}]


class FakeClock:
    """Time that only moves when the client sleeps."""

    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def client(fake, tmp_path=None, clock=None, **kw) -> ChatClient:
    cfg = LLMConfig(base_url=fake.base_url, model="fake-1", cache_dir=str(tmp_path / "cache") if tmp_path else None,
                    backoff_s=0.5, backoff_factor=2.0, **kw)
    clock = clock or FakeClock()
    return ChatClient(cfg, clock=clock, sleep=clock.sleep)


def test_cache_hits_and_misses(fake_llm, tmp_path):
    fake_llm.script = [("ok", "first answer"), ("ok", "second answer")]
    c = client(fake_llm, tmp_path)
    assert c.chat(MSG) == "first answer"
    assert c.chat(MSG) == "first answer"  # hit: no request
    assert (c.stats.cache_hits, c.stats.cache_misses, len(fake_llm.requests)) == (1, 1, 1)
    other = [{"role": "user", "content": "List concepts of nevus."}]
    assert c.chat(other) == "second answer"
    assert (c.stats.cache_hits, c.stats.cache_misses, len(fake_llm.requests)) == (1, 2, 2)
    # the key is sha256 of canonical {"model", "messages", "params"}; a new client reads the same file
    key = hashlib.sha256(json.dumps({"model": "fake-1", "messages": MSG, "params": {"temperature": 0.0}},
                                    sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert key == cache_key("fake-1", MSG, {"temperature": 0.0})
    entry = tmp_path / "cache" / key[:2] / f"{key}.json"
    assert json.loads(entry.read_text())["answer"] == "first answer"
    again = client(fake_llm, tmp_path)
    assert again.chat(MSG) == "first answer" and again.stats.cache_hits == 1 and len(fake_llm.requests) == 2
    # other params -> other key -> miss
    warm = client(fake_llm, tmp_path, temperature=0.7)
    fake_llm.script = [("ok", "warm answer")]
    assert warm.chat(MSG) == "warm answer" and warm.stats.cache_misses == 1
    # a damaged entry is a miss and is rewritten
    entry.write_text("{not json")
    fake_llm.script = [("ok", "fresh")]
    fresh = client(fake_llm, tmp_path)
    assert fresh.chat(MSG) == "fresh" and fresh.stats.cache_misses == 1
    assert json.loads(entry.read_text())["answer"] == "fresh"


def test_request_shape_and_key_from_env(fake_llm, monkeypatch):
    monkeypatch.setenv("CONCEPTCLIP_LLM_KEY", "sk-test")
    fake_llm.script = [("ok", "x")]
    client(fake_llm, max_tokens=64).chat(MSG)
    req = fake_llm.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    assert req["body"] == {"model": "fake-1", "messages": MSG, "temperature": 0.0, "max_tokens": 64}


def test_500_then_success_retries_with_backoff(fake_llm):
    fake_llm.script = [("status", 500), ("status", 502), ("ok", "after retries")]
    c = client(fake_llm, max_retries=3)
    assert c.chat(MSG) == "after retries"
    assert len(fake_llm.requests) == 3 and c.stats.retries == 2
    assert c.stats.waits == [0.5, 1.0]  # backoff_s * factor**k


def test_persistent_5xx_and_4xx_errors(fake_llm):
    fake_llm.script = [("status", 503)] * 3
    with pytest.raises(KnowledgeError, match=r"no answer after 3 attempt\(s\): HTTP 503"):
        client(fake_llm, max_retries=2).chat(MSG)
    assert len(fake_llm.requests) == 3
    fake_llm.script = [("status", 401)]
    with pytest.raises(KnowledgeError, match=r"HTTP 401 \(check \$CONCEPTCLIP_LLM_KEY\)"):
        client(fake_llm, max_retries=2).chat(MSG)
    assert len(fake_llm.requests) == 4  # no retry on 4xx


def test_timeout_is_retried_then_reported(fake_llm):
    fake_llm.script = [("sleep", 0.6, "too late"), ("ok", "in time")]
    c = client(fake_llm, timeout_s=0.2, max_retries=1)
    assert c.chat(MSG) == "in time" and c.stats.retries == 1
    fake_llm.script = [("sleep", 0.6, "late"), ("sleep", 0.6, "late")]
    with pytest.raises(KnowledgeError, match=r"no answer after 2 attempt\(s\): timed out after 0.2 s"):
        client(fake_llm, timeout_s=0.2, max_retries=1).chat([{"role": "user", "content": "other"}])


def test_connection_refused_and_non_openai_body(fake_llm):
    fake_llm.script = [("raw", b"<html>proxy error</html>")]
    with pytest.raises(KnowledgeError, match=r"not an OpenAI chat completion .*proxy error"):
        client(fake_llm).chat(MSG)
    dead = LLMConfig(base_url="http://127.0.0.1:9/v1", model="m", max_retries=1, backoff_s=0)
    with pytest.raises(KnowledgeError, match="connection failed"):
        ChatClient(dead, sleep=lambda s: None).chat(MSG)


def test_rate_limit_spaces_requests(fake_llm, tmp_path):
    clock = FakeClock()
    c = client(fake_llm, tmp_path, clock=clock, min_interval_s=1.5)
    c.chat([{"role": "user", "content": "one"}])
    clock.now += 0.5  # half a second of work between calls
    c.chat([{"role": "user", "content": "two"}])
    c.chat([{"role": "user", "content": "one"}])  # cache hit: no request, no wait
    assert c.stats.waits == [1.0] and len(fake_llm.requests) == 2


def test_parse_json_answers():
    assert parse_json_answer('{"concepts": ["a"]}') == {"concepts": ["a"]}
    assert parse_json_answer('Sure!\n```json\n{"concepts": ["a", "b"]}\n```') == {"concepts": ["a", "b"]}
    assert parse_json_answer('Here: {"concepts": ["x"]} hope it helps') == {"concepts": ["x"]}
    assert parse_json_answer('["a", "b"]', expected=list) == ["a", "b"]
    with pytest.raises(KnowledgeError, match="expected a JSON dict, got malformed answer: 'blue veil, streaks'"):
        parse_json_answer("blue veil, streaks")
    with pytest.raises(KnowledgeError, match="'concepts' must be a non-empty list of non-empty strings"):
        string_list({"concepts": ["ok", 3]}, "concepts")
    with pytest.raises(KnowledgeError, match="expected an object with key 'concepts'"):
        string_list({"items": []}, "concepts")


def test_elicit_bank_end_to_end_with_cache(fake_llm, tmp_path):
    def answer(body):
        user = body["messages"][1]["content"]
        cls = "melanoma" if "recognise melanoma in" in user else "nevus"
        return ("ok", json.dumps({"reasoning": "…", "concepts": [f"{cls} concept 1", f"{cls} concept 2",
                                                                  f"{cls} concept 1"]}))
    fake_llm.default = answer
    c = client(fake_llm, tmp_path)
    bank = elicit_bank(c, ["melanoma", "nevus"], template="descriptors", modality="dermoscopy", n=2,
                       date="2025-03-04")
    assert bank.as_dict_of_lists() == {"melanoma": ["melanoma concept 1", "melanoma concept 2"],
                                       "nevus": ["nevus concept 1", "nevus concept 2"]}  # repeats dropped
    prov = bank.sources["llm"]
    assert (prov.kind, prov.model, prov.date) == ("llm", "fake-1", "2025-03-04")
    assert ELICITATION_TEMPLATES["descriptors"].user in prov.prompt
    assert load_bank(save_bank(bank, tmp_path / "e.json")) == bank
    again = client(fake_llm, tmp_path)
    assert elicit_bank(again, ["melanoma", "nevus"], modality="dermoscopy", n=2, date="2025-03-04") == bank
    assert (again.stats.cache_hits, again.stats.cache_misses, len(fake_llm.requests)) == (2, 0, 2)


def test_elicit_rationales_and_malformed_answer(fake_llm):
    fake_llm.script = [("ok", '{"rationales": ["blue-whitish veil"]}'), ("ok", "I think: veil, streaks")]
    bank = elicit_bank(client(fake_llm), ["melanoma"], template="rationales", n=1)
    assert bank.classes["melanoma"].concepts[0].rationale == "blue-whitish veil"
    with pytest.raises(KnowledgeError, match=r"LLM answer of fake-1 for class 'nevus': expected a JSON dict, got "
                                             r"malformed answer: 'I think: veil, streaks'"):
        elicit_bank(client(fake_llm), ["nevus"], template="descriptors")
    msgs = build_messages(ELICITATION_TEMPLATES["cot_concepts"], "melanoma", ["melanoma", "nevus"], "dermoscopy", 5)
    assert "distinguish melanoma from nevus in dermoscopy images" in msgs[1]["content"]
    with pytest.raises(KnowledgeError, match="unknown elicitation template"):
        elicit_bank(client(fake_llm), ["a"], template="poetry")
