"""Pruning: format checks, exact and near duplicates, statistics-based outliers, removal report."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conceptclip.errors import KnowledgeError
from conceptclip.knowledge.prune import PruneConfig, outlier_mask, outlier_scores, prune_bank
from conceptclip.knowledge.schema import Provenance, simple_bank

SRC = Provenance(kind="llm", citation="test", model="m")


def table_embed(table: dict[str, list[float]]):
    def embed(texts):
        return torch.nn.functional.normalize(torch.tensor([table[t] for t in texts], dtype=torch.float32), dim=-1)
    return embed


def test_outlier_rule_closed_form():
    """k identical unit vectors a and one b: s_a = k/sqrt(k^2+1), s_b = 1/sqrt(k^2+1) (a ⟂ b); with
    sigma = |s_a - s_b| sqrt(k) / (k+1), b < mu - z sigma  <=>  z < sqrt(k), whatever the vectors."""
    emb = torch.tensor([[1.0, 0.0]] * 5 + [[0.0, 1.0]])
    s = outlier_scores(emb)
    assert torch.allclose(s, torch.tensor([5 / math.sqrt(26)] * 5 + [1 / math.sqrt(26)]))
    assert float(s.std(unbiased=False)) == pytest.approx((5 - 1) / math.sqrt(26) * math.sqrt(5) / 6)
    assert outlier_mask(s, z=2.2, min_keep=1).tolist() == [True] * 5 + [False]
    assert outlier_mask(s, z=2.25, min_keep=1).all()  # sqrt(5) = 2.236
    assert outlier_mask(s, z=2.2, min_keep=6).all()  # min_keep wins


def test_prune_bank_reports_outlier_with_score():
    texts = [f"prompt {i}" for i in range(6)]
    table = {t: [1.0, 0.0] for t in texts[:5]} | {texts[5]: [0.0, 1.0]}
    cfg = PruneConfig(near_duplicates=False, outlier_z=2.0)
    pruned, report = prune_bank(simple_bank("b", {"c": texts}, SRC, kind="prompts"), cfg, embed=table_embed(table))
    assert pruned.phrases("c") == texts[:5]
    (r,) = report.removals
    assert (r.reason, r.index, r.phrase) == ("outlier", 5, "prompt 5")
    assert r.score == pytest.approx(1 / math.sqrt(26), abs=1e-6)
    assert report.counts() == {"format": 0, "exact_duplicate": 0, "near_duplicate": 0, "outlier": 1}
    assert report.per_class == {"c": (6, 5)} and (report.n_before, report.n_after) == (6, 5)


def test_exact_and_near_duplicates_keep_the_first():
    c = math.cos(math.radians(10))  # cos 10° = 0.985 >= 0.95; cos 20° = 0.940 < 0.95
    table = {
        "Blue-whitish veil.": [1, 0], "same": [1, 0], "ten": [c, math.sin(math.radians(10))],
        "twenty": [math.cos(math.radians(20)), math.sin(math.radians(20))], "ninety": [0, 1],
    }
    bank = simple_bank("b", {"x": ["Blue-whitish veil.", "blue-whitish   VEIL", "same", "ten", "twenty", "ninety"]}, SRC)
    cfg = PruneConfig(outliers=False)
    pruned, report = prune_bank(bank, cfg, embed=table_embed(table))
    assert pruned.phrases("x") == ["Blue-whitish veil.", "twenty", "ninety"]  # 20° only from a dropped entry
    reasons = [(r.index, r.reason, r.kept_index) for r in report.removals]
    assert reasons == [(1, "exact_duplicate", 0), (2, "near_duplicate", 0), (3, "near_duplicate", 0)]
    assert report.removals[2].score == pytest.approx(c, abs=1e-6)


def test_format_checks():
    bank = simple_bank("b", {"x": ["ok phrase", "a", "has {slot}", "bad\x07char", "word " * 61, "--"]}, SRC)
    pruned, report = prune_bank(bank, PruneConfig(near_duplicates=False, outliers=False))
    assert pruned.phrases("x") == ["ok phrase"]
    assert [r.detail for r in report.removals] == [
        "shorter than 2 characters", "contains an unfilled template slot {...}", "contains control characters",
        "61 words, more than 60", "no letters or digits"]
    assert json.loads(json.dumps(report.to_dict()))["removed"]["format"] == 5


def test_bad_embedder_and_config():
    bank = simple_bank("b", {"x": ["a1", "b1"]}, SRC)
    with pytest.raises(KnowledgeError, match=r"expected a \(2, dim\) tensor"):
        prune_bank(bank, embed=lambda t: torch.zeros(3, 4))
    with pytest.raises(KnowledgeError, match="L2-normalised"):
        prune_bank(bank, embed=lambda t: torch.ones(2, 4))
    with pytest.raises(KnowledgeError, match="near_duplicate_threshold"):
        PruneConfig(near_duplicate_threshold=1.5)


def test_default_minilm_embedder_finds_a_paraphrase():
    from conceptclip.knowledge.embed import minilm_embed

    texts = ["a dermoscopy image showing a blue-whitish veil", "dermoscopy image showing blue-whitish veil",
             "regular pigment network at the periphery"]
    emb = minilm_embed(texts)
    assert emb.shape == (3, 384) and torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    sims = emb @ emb.T
    assert sims[0, 1] > 0.95 > sims[0, 2]
    pruned, report = prune_bank(simple_bank("b", {"x": texts}, SRC), PruneConfig(outliers=False))
    assert pruned.phrases("x") == [texts[0], texts[2]] and report.removals[0].reason == "near_duplicate"


@pytest.mark.shared_data
def test_biomedcoop_exact_duplicates_and_the_concatenated_prompt(shared):
    """Without the encoder: exact duplicates equal those counted straight from the JSON, and the
    one format removal is the 'tumor' entry where four prompts were fused (47 instead of 50)."""
    from conceptclip.knowledge.loaders import BIOMEDCOOP_DATASETS, biomedcoop_bank

    cfg = PruneConfig(near_duplicates=False, outliers=False)
    exact = fmt = expected = 0
    for ds in (*BIOMEDCOOP_DATASETS, "_other_classes"):
        raw = json.loads((shared / "banks" / "biomedcoop" / "prompts" / f"{ds}.json").read_text())
        expected += sum(len(v) - len(set(v)) for v in raw.values())
        _, report = prune_bank(biomedcoop_bank(ds, shared / "banks"), cfg)
        exact += report.counts()["exact_duplicate"]
        for r in report.removals:
            if r.reason == "format":
                fmt += 1
                assert (ds, r.class_name, r.index) == ("_other_classes", "tumor", 46)
                assert r.phrase.count("An endoscopy") == 4
    assert exact == expected == 322 and fmt == 1


@pytest.mark.slow
@pytest.mark.shared_data
def test_biomedcoop_pruning_statistics_with_minilm(shared):
    from conceptclip.knowledge.loaders import BIOMEDCOOP_DATASETS, biomedcoop_bank

    before = after = 0
    for ds in (*BIOMEDCOOP_DATASETS, "_other_classes"):
        pruned, report = prune_bank(biomedcoop_bank(ds, shared / "banks"))
        before, after = before + report.n_before, after + report.n_after
        assert all(a >= 3 for _, a in report.per_class.values())
    assert before == 3597 and 0.5 * before < after < before
