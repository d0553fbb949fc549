"""Report triplet extraction: rules on worked sentences, scores on hand-labelled sentences, IU X-Ray."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from conceptclip.errors import KnowledgeError
from conceptclip.knowledge.triplets import (
    Triplet, extract_reports, extract_triplets, score_triplets, split_sentences, triplet_sentence,
)

DATA = Path(__file__).parent / "data"


def keys(text: str) -> list[tuple]:
    return [t.key() for t in extract_triplets(text)]


def load_labelled(name: str) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, (DATA / name).read_text().splitlines())}


def test_sentence_splitting_keeps_decimals_and_numbered_items():
    assert split_sentences("1. Cardiomegaly. 2. Nodule of 2.5 cm.  No effusion.") == [
        "1.", "Cardiomegaly.", "2.", "Nodule of 2.5 cm.", "No effusion."]
    assert split_sentences("") == []


def test_negation_scope_ends_at_but_and_continues_over_a_list():
    assert keys("No pleural effusion, but there is mild pleural thickening on the right.") == [
        ("effusion", "pleural_unspec", "negative"), ("thicken", "right_pleural", "positive")]
    assert keys("No focal airspace disease, pleural effusion, or pneumothorax.") == [
        ("consolidation", None, "negative"), ("effusion", "pleural_unspec", "negative"),
        ("pneumothorax", None, "negative")]
    assert keys("No acute bony abnormality, possible small left effusion.") == [
        ("abnormality", None, "negative"), ("effusion", "left_pleural", "uncertain")]


def test_post_cues_versus_and_pseudo_negation():
    assert keys("Small left apical pneumothorax has resolved.") == [("pneumothorax", "left_apical_lung", "negative")]
    assert keys("Pneumonia cannot be excluded.") == [("pneumonia", None, "uncertain")]
    assert keys("Right lower lobe infiltrate and left basilar atelectasis versus scarring.") == [
        ("infiltrate", "lower_right_lobe", "positive"), ("atelectasis", "left_lower_lung", "uncertain"),
        ("scar", None, "uncertain")]
    assert keys("No change in the small right pleural effusion.") == [("effusion", "right_pleural", "positive")]


def test_locations_sides_and_relabelling():
    assert keys("Bilateral lower lobe infiltrates.") == [
        ("infiltrate", "lower_left_lobe", "positive"), ("infiltrate", "lower_right_lobe", "positive")]
    assert keys("Bibasilar atelectasis.") == [("atelectasis", "lung_bases", "positive")]
    assert keys("The heart is not enlarged.") == [("cardiomegaly", "heart_size", "negative")]
    assert keys("Enlarged cardiac silhouette.") == [("cardiomegaly", "heart_size", "positive")]
    assert keys("Leads in the right atrium and right ventricle.") == [
        ("lead", "right_atrium", "positive"), ("lead", "right_ventricle", "positive")]
    assert keys("Low lung volumes.") == [("low", "lung_volumes", "positive")]
    assert keys("The patient is at low risk.") == []  # "low" counts only for lung volumes
    assert keys("Stable calcified small granuloma in left base.") == [
        ("calcification", "left_lower_lung", "positive")]


def test_anonymisation_tokens_are_inert():
    assert keys("Normal chest x-XXXX.") == []
    assert keys("No XXXX of pneumothorax. XXXX XXXX are normal.") == [("pneumothorax", None, "negative")]


def test_triplet_sentence_and_score_worked_example():
    t = Triplet("effusion", "left_pleural", "negative")
    assert triplet_sentence(t) == "There is no effusion. It is located at left pleural."
    assert triplet_sentence(Triplet("opacity", None, "uncertain")) == "There may be opacity."
    gold = {"a": [("effusion", "left_pleural", "negative"), ("opacity", None, "positive")], "b": []}
    pred = {"a": [t, Triplet("opacity", None, "uncertain"), Triplet("nodule", None, "positive")], "b": []}
    s = score_triplets(pred, gold)
    assert (s.true_positives, s.n_pred, s.n_gold) == (1, 3, 2)
    assert s.precision == pytest.approx(1 / 3) and s.recall == pytest.approx(1 / 2)
    assert s.polarity_accuracy == pytest.approx(1 / 2) and s.polarity_pairs == 2  # effusion right, opacity wrong
    with pytest.raises(KnowledgeError, match="triplets"):
        score_triplets({"a": [("x", None, "maybe")]}, {"a": []})


@pytest.mark.parametrize("name, min_prf, min_polarity", [
    # development set: written before the rules, but the rules were then built on it
    ("labelled_sentences.jsonl", 0.9, 0.95),
    # held-out set: written after the rules were frozen and scored once (0.94 / 0.94 / 0.98 then)
    ("heldout_sentences.jsonl", 0.85, 0.9),
])
def test_precision_recall_on_hand_labelled_sentences(name, min_prf, min_polarity):
    """Thresholds: below ~0.85 one injected report fact in seven would be wrong, about what
    NegEx-style labellers are reported to reach on radiology negation; polarity, which decides
    whether a prompt asserts or denies a finding, must be right far more often."""
    rows = load_labelled(name)
    assert len(rows) >= 45
    pred = {i: extract_triplets(r["text"]) for i, r in rows.items()}
    gold = {i: [tuple(t) for t in r["triplets"]] for i, r in rows.items()}
    s = score_triplets(pred, gold)
    assert s.n_gold >= 60
    assert s.precision >= min_prf and s.recall >= min_prf, s
    assert s.polarity_accuracy >= min_polarity, s


def test_labelled_files_use_the_medklip_vocabulary():
    from conceptclip.knowledge import report_vocab as V

    concepts = set(V.CONCEPT_PATTERNS)
    locations = {loc for table in V.BASES.values() for loc in table.values()}
    for name in ("labelled_sentences.jsonl", "heldout_sentences.jsonl"):
        for r in load_labelled(name).values():
            for c, loc, pol in r["triplets"]:
                assert c in concepts and (loc is None or loc in locations) and pol in ("positive", "negative", "uncertain")


@pytest.mark.shared_data
def test_vocabulary_matches_medklip_lists(shared):
    from conceptclip.knowledge import report_vocab as V
    from conceptclip.knowledge.loaders import medklip_locations, medklip_observations

    obs = set(medklip_observations(shared / "banks"))
    assert set(V.CONCEPT_PATTERNS) | set(V.EXCLUDED_OBSERVATIONS) == obs
    locs = set(medklip_locations(shared / "banks"))
    assert {loc for table in V.BASES.values() for loc in table.values()} <= locs


@pytest.mark.shared_data
def test_iu_xray_reports_first_500(shared):
    reports = []
    for i, rep in enumerate(extract_reports(shared / "iuxray" / "reports.jsonl")):
        if i == 500:
            break
        reports.append(rep)
    assert reports[0].report_id == "CXR1"
    # CXR1: "... There is no pulmonary edema. ..." in its findings
    assert ("edema", "pulmonary", "negative") in {t.key() for t in reports[0].triplets}
    assert sum(bool(r.triplets) for r in reports) > 450
    assert {t.section for r in reports for t in r.triplets} == {"findings", "impression"}


@pytest.mark.slow
@pytest.mark.shared_data
def test_iu_xray_all_reports(shared):
    start = time.perf_counter()
    reports = list(extract_reports(shared / "iuxray" / "reports.jsonl"))
    seconds = time.perf_counter() - start
    n = sum(len(r.triplets) for r in reports)
    with_any = sum(bool(r.triplets) for r in reports)
    top = Counter(t.concept for r in reports for t in r.triplets).most_common(5)
    print(f"IU X-Ray: {len(reports)} reports, {n} triplets, {with_any} with >= 1, {seconds:.1f} s, top {top}")
    assert len(reports) == 3955 and with_any > 3500
    assert {c for c, _ in top[:2]} == {"effusion", "pneumothorax"}


def test_bad_input(tmp_path):
    with pytest.raises(KnowledgeError, match="expected report text as a string"):
        extract_triplets(None)  # type: ignore[arg-type]
    bad = tmp_path / "r.jsonl"
    bad.write_text('{"id": "A", "findings": "No effusion."}\n{oops\n')
    it = extract_reports(bad)
    assert next(it).triplets[0].key() == ("effusion", None, "negative")
    with pytest.raises(KnowledgeError, match="r.jsonl: line 2: not valid JSON"):
        next(it)
