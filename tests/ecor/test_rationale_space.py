"""Rationale spaces from concept banks: vocabulary, candidate sets and pairs, prompts, per-image truth."""

from __future__ import annotations

import pytest
import torch

from conceptclip.errors import ConfigError
from conceptclip.knowledge.schema import Provenance, simple_bank
from conceptclip.prompts.rationales import build_rationale_space, clean_phrase

PROV = Provenance(kind="paper", citation="hand-made test bank")
BANK = simple_bank("toy", {"melanoma": ["blue veil", "Irregular streaks.", "irregular dots"],
                           "nevus": ["regular network", "irregular dots", "Regular dots"]}, PROV)


def test_vocabulary_pairs_and_class_truth():
    s = build_rationale_space(BANK, ["melanoma", "nevus"])
    assert s.vocab == ["blue veil", "irregular streaks", "irregular dots", "regular network", "regular dots"]
    assert s.sets == [(0,), (1,), (2,), (3,), (4,)]
    # default: every category x rationale permutation (ECOR Eq. 5)
    assert bool(s.pair_mask.all()) and s.summary()["pairs"] == 10
    assert s.class_truth.tolist() == [[True, True, True, False, False], [False, False, True, True, True]]
    b = build_rationale_space(BANK, ["melanoma", "nevus"], pairs="bank")  # ours: the bank's edges only
    assert b.pair_mask.tolist() == b.class_truth.tolist() and b.summary()["pairs"] == 6


def test_prompts_follow_the_knowledge_templates():
    s = build_rationale_space(BANK, ["melanoma", "nevus"], pairs="bank")
    assert s.rationale_prompts()[0] == "There are blue veil in the photo."
    texts, index = s.pair_prompts()
    assert texts[0] == "This is a photo of a melanoma because there is blue veil."
    assert texts[3] == "This is a photo of a nevus because there is irregular dots."
    assert index.tolist() == [[0, 0], [0, 1], [0, 2], [1, 2], [1, 3], [1, 4]]


def test_class_sets_join_rationales_with_and():
    s = build_rationale_space(BANK, ["melanoma", "nevus"], sets="class", max_per_class=2, pairs="bank")
    assert s.sets == [(0, 1), (2, 3)]
    assert s.rationale_prompts()[0] == "There are blue veil and irregular streaks in the photo."
    texts, _ = s.pair_prompts()
    assert texts[1] == "This is a photo of a nevus because there is regular network and irregular dots."
    assert s.pair_mask.tolist() == [[True, False], [False, True]]


def test_all_pairs_and_class_map():
    s = build_rationale_space(BANK, ["mel", "nev"], class_map={"mel": "melanoma", "nev": "Nevus"}, pairs="all")
    assert bool(s.pair_mask.all()) and s.pair_mask.shape == (2, 5)
    assert s.pair_prompts()[0][5] == "This is a photo of a nev because there is blue veil."


def test_truth_and_positive_sets():
    s = build_rationale_space(BANK, ["melanoma", "nevus"])
    truth = s.truth([["Blue veil", "irregular dots", "not in the bank"], []])
    assert truth.tolist() == [[1, 0, 1, 0, 0], [0, 0, 0, 0, 0]]
    assert s.positive_sets(truth).tolist() == [[True, False, True, False, False], [False] * 5]
    c = build_rationale_space(BANK, ["melanoma", "nevus"], sets="class", max_per_class=2)
    t = c.truth([["blue veil", "irregular streaks", "regular network"], ["irregular dots"]])
    assert c.positive_sets(t).tolist() == [[True, False], [False, False]]  # a set is right only when all of it is
    assert c.sets_to_multihot(torch.tensor([1])).tolist() == [[0, 0, 1, 1]]


def test_clean_phrase():
    assert clean_phrase("Two wings attached to the fuselage") == "two wings attached to the fuselage"
    assert clean_phrase("Logo or airline livery.") == "logo or airline livery"
    assert clean_phrase("MRI signal") == "MRI signal"


def test_errors_name_what_is_wrong():
    with pytest.raises(ConfigError, match=r"no rationales for class\(es\) \['cat'\]"):
        build_rationale_space(BANK, ["melanoma", "cat"])
    with pytest.raises(ConfigError, match="rationale_sets='pairs'"):
        build_rationale_space(BANK, ["melanoma"], sets="pairs")
    with pytest.raises(ConfigError, match="class_map names classes"):
        build_rationale_space(BANK, ["melanoma"], class_map={"dog": "nevus"})


@pytest.mark.shared_data
def test_ph2_bank_and_per_image_truth(ph2):
    from conceptclip.knowledge import ph2_concepts_per_image
    from conceptclip.knowledge.loaders import load_shared_bank

    s = build_rationale_space(load_shared_bank("ph2"), ph2.classnames, pairs="bank")
    assert len(s.vocab) == 16 and int(s.pair_mask.sum()) == 23
    # P(c | R, I) is 1 by construction for every rationale the bank pairs with one class only
    single = int((s.pair_mask.sum(0) == 1).sum())
    assert single == 11 and int(build_rationale_space(load_shared_bank("ph2"), ph2.classnames).pair_mask.sum()) == 48
    per = ph2_concepts_per_image(ph2.root / "labels.csv")
    assert per["IMD003"] == ["symmetric shape", "typical pigment network", "dark-brown colour"]
    t = s.truth([per["IMD003"]])
    assert [s.vocab[i] for i in t[0].nonzero().squeeze(1).tolist()] == [
        "typical pigment network", "symmetric shape", "dark-brown colour"]
    mel = ph2.classnames.index("melanoma")
    assert "This is a photo of a melanoma because there is blue-whitish veil." in s.pair_prompts()[0]
    assert bool(s.class_truth[mel, s.vocab.index("blue-whitish veil")])


@pytest.mark.shared_data
def test_dror_banks_through_the_knowledge_loaders():
    from conceptclip.knowledge.loaders import banks_dir, load_shared_bank

    if not (banks_dir() / "dror").is_dir():
        pytest.skip(f"DROR banks not found at {banks_dir() / 'dror'}")
    bank = load_shared_bank("dror/cifar10")
    s = build_rationale_space(bank, list(bank.classes), pairs="bank")
    assert len(s.vocab) == 77 and int(s.pair_mask.sum()) == 79  # 79 entries, 77 distinct (data README)
    assert s.pair_prompts()[0][0] == "This is a photo of a airplane because there is two wings attached to the fuselage."
    graphs = load_shared_bank("dror/rationale_imagenet")
    g = build_rationale_space(graphs, ["tench"], field="rationale")
    assert g.vocab[0] == "body is olive green"
