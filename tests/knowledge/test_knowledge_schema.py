"""Bank schema: canonical save/load round trip, content hash, validation messages, merge."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conceptclip.errors import KnowledgeError
from conceptclip.knowledge.schema import (
    ClassEntry, Concept, ConceptBank, Provenance, bank_from_dict, load_bank, merge_banks, save_bank, simple_bank,
)

ANN = Provenance(kind="annotation", citation="PH2", file="labels.csv")
LLM = Provenance(kind="llm", citation="local", model="m1", prompt="List {n} concepts", date="2025-01-02")


def small_bank() -> ConceptBank:
    return ConceptBank(
        name="toy",
        sources={"ph2": ANN, "llm": LLM},
        classes={
            "melanoma": ClassEntry((
                Concept("blue-whitish veil", "ph2", frequency=0.75, count=30),
                Concept("asymmetry", "llm", rationale="asymmetric shape", polarity="uncertain"),
            )),
            "common nevus": ClassEntry((Concept("typical pigment network", "ph2", location="lesion"),), "80 images"),
        },
    )


def test_save_load_round_trip_is_byte_identical(tmp_path):
    bank = small_bank()
    p1, p2 = tmp_path / "a.json", tmp_path / "b.json"
    save_bank(bank, p1)
    loaded = load_bank(p1)
    assert loaded == bank
    save_bank(loaded, p2)
    assert p1.read_bytes() == p2.read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file


def test_content_hash_is_sha256_of_canonical_content():
    bank = simple_bank("x", {"c": ["p"]}, Provenance(kind="paper", citation="ref"), source_key="s")
    canonical = ('{"classes":{"c":{"concepts":[{"phrase":"p","source":"s"}]}},"kind":"concepts",'
                 '"locations":[],"schema_version":1,"sources":{"s":{"citation":"ref","kind":"paper"}}}')
    assert bank.content_hash == "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
    # labels do not change it, content does
    assert replace(bank, name="other", description="d").content_hash == bank.content_hash
    assert simple_bank("x", {"c": ["q"]}, Provenance(kind="paper", citation="ref"), source_key="s").content_hash \
        != bank.content_hash


def test_file_layout_names_schema_and_omits_defaults(tmp_path):
    data = json.loads(save_bank(small_bank(), tmp_path / "b.json").read_text())
    assert list(data)[:5] == ["schema", "schema_version", "name", "kind", "content_hash"]
    assert data["classes"]["melanoma"]["concepts"][0] == {
        "phrase": "blue-whitish veil", "frequency": 0.75, "count": 30, "source": "ph2"}
    assert data["classes"]["melanoma"]["concepts"][1]["polarity"] == "uncertain"
    assert "locations" not in data


def _doc(**class_concepts) -> dict:
    bank = small_bank().to_dict()
    bank.pop("content_hash")
    for cname, concepts in class_concepts.items():
        bank["classes"][cname] = {"concepts": concepts}
    return bank


def test_validation_names_file_and_json_path():
    doc = _doc(melanoma=[{"phrase": "a", "source": "ph2"}] * 3 + [{"phrase": 3, "source": "ph2"}])
    with pytest.raises(KnowledgeError) as err:
        bank_from_dict(doc, file="bank.json")
    assert str(err.value) == "bank.json: $.classes.melanoma.concepts[3].phrase: expected a non-empty string, got 3"


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["classes"]["common nevus"]["concepts"][0].update(source="nope"),
     '$.classes["common nevus"].concepts[0].source: expected a key of $.sources (ph2, llm), got "nope"'),
    (lambda d: d["classes"]["melanoma"]["concepts"][0].update(polarity="maybe"),
     "$.classes.melanoma.concepts[0].polarity: expected one of positive/negative/uncertain"),
    (lambda d: d["classes"]["melanoma"]["concepts"][0].update(frequency=1.5), "frequency: expected a number in [0, 1]"),
    (lambda d: d["classes"]["melanoma"]["concepts"][0].update(count=True), "count: expected a non-negative integer"),
    (lambda d: d["classes"]["melanoma"]["concepts"][0].update(phrse="x"), "phrse: unexpected key"),
    (lambda d: d["sources"]["llm"].pop("model"), "$.sources.llm.model: an 'llm' source must name its model"),
    (lambda d: d["sources"]["llm"].update(date="yesterday"), "$.sources.llm.date: expected an ISO date"),
    (lambda d: d["sources"]["ph2"].update(kind="guess"), "$.sources.ph2.kind: expected one of annotation/llm/paper"),
    (lambda d: d.update(schema_version=2), "newer than this conceptclip supports"),
    (lambda d: d.update(kind="images"), "$.kind: expected one of concepts/prompts"),
    (lambda d: d.pop("classes"), "$: missing required key 'classes'"),
])
def test_validation_errors(mutate, message):
    doc = _doc()
    mutate(doc)
    with pytest.raises(KnowledgeError, match="^b.json: ") as err:
        bank_from_dict(doc, file="b.json")
    assert message in str(err.value)


def test_load_rejects_bad_json_duplicate_keys_and_edited_hash(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": ')
    with pytest.raises(KnowledgeError, match=r"bad.json: not valid JSON \(line 1"):
        load_bank(bad)
    dup = tmp_path / "dup.json"
    dup.write_text('{"a": 1, "a": 2}')
    with pytest.raises(KnowledgeError, match='dup.json: duplicate key "a"'):
        load_bank(dup)
    with pytest.raises(KnowledgeError, match="not found"):
        load_bank(tmp_path / "missing.json")
    good = save_bank(small_bank(), tmp_path / "g.json")
    good.write_text(good.read_text().replace("blue-whitish veil", "blue veil"))
    with pytest.raises(KnowledgeError, match=r"\$.content_hash: file says sha256:.* but the content hashes to"):
        load_bank(good)
    assert load_bank(good, verify_hash=False).phrases("melanoma")[0] == "blue veil"


def test_merge_keeps_order_renames_clashing_sources_and_drops_exact_duplicates():
    a = small_bank()
    other = Provenance(kind="paper", citation="another paper")
    b = ConceptBank(name="b", sources={"ph2": other, "llm": LLM}, classes={
        "melanoma": ClassEntry((Concept("asymmetry", "llm", rationale="asymmetric shape", polarity="uncertain"),
                                Concept("irregular streaks", "ph2"))),
        "atypical nevus": ClassEntry((Concept("atypical pigment network", "ph2"),)),
    }, locations=("lesion",))
    m = merge_banks([a, b], name="m")
    assert list(m.classes) == ["melanoma", "common nevus", "atypical nevus"]
    assert m.phrases("melanoma") == ["blue-whitish veil", "asymmetry", "irregular streaks"]  # duplicate asymmetry once
    assert m.sources["ph2"] == ANN and m.sources["ph2.2"] == other and m.sources["llm"] == LLM
    assert m.classes["melanoma"].concepts[2].source == "ph2.2"
    assert m.locations == ("lesion",)
    assert len(merge_banks([a, b], drop_exact_duplicates=False).classes["melanoma"].concepts) == 4
    with pytest.raises(KnowledgeError, match="different kinds"):
        merge_banks([a, replace(b, kind="prompts")])


text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12).filter(lambda s: s.strip())


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(text, st.lists(st.tuples(text, st.none() | st.floats(0, 1), st.sampled_from(
    ["positive", "negative", "uncertain"])), max_size=4), min_size=1, max_size=4))
def test_any_valid_bank_round_trips(tmp_path_factory, classes):
    bank = ConceptBank(name="h", sources={"s": ANN}, classes={
        c: ClassEntry(tuple(Concept(p, "s", frequency=f, polarity=pol) for p, f, pol in items))
        for c, items in classes.items()})
    path = tmp_path_factory.mktemp("h") / "h.json"
    first = save_bank(bank, path).read_bytes()
    loaded = load_bank(path)
    assert loaded == bank
    assert save_bank(loaded, path).read_bytes() == first
