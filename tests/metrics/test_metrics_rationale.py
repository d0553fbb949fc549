"""ECOR's RR/RW/WR/WW grid on a hand-worked example for every rationale rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conceptclip.errors import ConfigError
from conceptclip.metrics import rationale_grid, right_rationale
from conceptclip.metrics.rationale import CLASS_LEVEL_NOTE, truth_level


def multi_hot(sets: list[set[int]], r: int = 4) -> torch.Tensor:
    out = torch.zeros(len(sets), r, dtype=torch.bool)
    for i, s in enumerate(sets):
        out[i, list(s)] = True
    return out


PRED_CLASS = torch.tensor([0, 0, 1, 1, 2, 2])
TRUE_CLASS = torch.tensor([0, 0, 1, 2, 2, 0])  # category right: T T T F T F
TRUE_R = multi_hot([{0, 1}, {0, 1}, {2}, {3}, {2, 3}, {0}])
PRED_R = multi_hot([{0}, {0, 2}, {2}, {3}, set(), {1}])


def test_right_rationale_rules():
    # subset: {0}⊆{0,1} T, {0,2}⊄ F, {2} T, {3} T, {} F (empty), {1}⊄{0} F
    assert right_rationale(PRED_R, TRUE_R, rule="subset").tolist() == [True, False, True, True, False, False]
    # any: intersections non-empty for rows 0..3
    assert right_rationale(PRED_R, TRUE_R, rule="any").tolist() == [True, True, True, True, False, False]
    # exact: only rows 2 and 3 equal
    assert right_rationale(PRED_R, TRUE_R, rule="exact").tolist() == [False, False, True, True, False, False]


def test_grid_subset_rule_hand():
    # category right T T T F T F ; rationale right T F T T F F
    # RR rows 0,2 ; RW rows 1,4 ; WR row 3 ; WW row 5
    g = rationale_grid(PRED_CLASS, TRUE_CLASS, PRED_R, TRUE_R)
    assert g == pytest.approx({"RR": 2 / 6, "RW": 2 / 6, "WR": 1 / 6, "WW": 1 / 6, "n": 6, "truth": "image"})


def test_grid_any_and_exact_rules_hand():
    # any: rationale right T T T T F F -> RR 0,1,2 ; RW 4 ; WR 3 ; WW 5
    g = rationale_grid(PRED_CLASS, TRUE_CLASS, PRED_R, TRUE_R, rule="any")
    assert g == pytest.approx({"RR": 3 / 6, "RW": 1 / 6, "WR": 1 / 6, "WW": 1 / 6, "n": 6, "truth": "image"})
    # exact: rationale right F F T T F F -> RR 2 ; RW 0,1,4 ; WR 3 ; WW 5
    g = rationale_grid(PRED_CLASS, TRUE_CLASS, PRED_R, TRUE_R, rule="exact")
    assert g == pytest.approx({"RR": 1 / 6, "RW": 3 / 6, "WR": 1 / 6, "WW": 1 / 6, "n": 6, "truth": "image"})


def test_grid_topk_rule_from_scores_hand():
    scores = torch.tensor(
        [
            [0.1, 0.9, 0.0, 0.0],  # top-1 = 1 ∈ {0,1} T ; top-2 = {1,0} ⊆ T
            [0.2, 0.1, 0.7, 0.0],  # top-1 = 2 ∉ {0,1} F
            [0.0, 0.3, 0.6, 0.1],  # top-1 = 2 ∈ {2} T ; top-2 = {2,1} F
            [0.8, 0.0, 0.0, 0.2],  # top-1 = 0 ∉ {3} F
            [0.0, 0.0, 0.4, 0.6],  # top-1 = 3 ∈ {2,3} T ; top-2 = {3,2} T
            [0.5, 0.5, 0.0, 0.0],  # tie 0/1 -> lower index 0 ∈ {0} T ; top-2 = {0,1} F
        ]
    )
    # k=1 rationale right T F T F T T ; category T T T F T F
    # RR 0,2,4 ; RW 1 ; WR 5 ; WW 3
    g = rationale_grid(PRED_CLASS, TRUE_CLASS, scores, TRUE_R, rule="topk", k=1)
    assert g == pytest.approx({"RR": 3 / 6, "RW": 1 / 6, "WR": 1 / 6, "WW": 1 / 6, "n": 6, "truth": "image"})
    assert rationale_grid(PRED_CLASS, TRUE_CLASS, scores, TRUE_R, rule="topk") == g  # k = 1 by default
    # k=2 rationale right T F F F T F -> RR 0,4 ; RW 1,2 ; WR none ; WW 3,5
    g = rationale_grid(PRED_CLASS, TRUE_CLASS, scores, TRUE_R, rule="topk", k=2)
    assert g == pytest.approx({"RR": 2 / 6, "RW": 2 / 6, "WR": 0.0, "WW": 2 / 6, "n": 6, "truth": "image"})


def test_grid_accepts_class_scores_and_numpy_and_sums_to_one():
    class_scores = torch.nn.functional.one_hot(PRED_CLASS, 3).float() + 0.1
    g = rationale_grid(class_scores.numpy(), TRUE_CLASS.numpy(), PRED_R.numpy(), TRUE_R.numpy())
    assert g["RR"] == pytest.approx(2 / 6)
    assert g["RR"] + g["RW"] + g["WR"] + g["WW"] == pytest.approx(1.0)
    # per-class truth expanded by indexing: class 0 -> {0,1}, 1 -> {2}, 2 -> {2,3}
    class_truth = multi_hot([{0, 1}, {2}, {2, 3}])
    g2 = rationale_grid(PRED_CLASS, TRUE_CLASS, PRED_R, class_truth[TRUE_CLASS])
    # truth rows become {0,1},{0,1},{2},{2,3},{2,3},{0,1}: subset right T F T T F T
    # RR 0,2 ; RW 1,4 ; WR 3,5 ; WW none
    assert g2 == pytest.approx({"RR": 2 / 6, "RW": 2 / 6, "WR": 2 / 6, "WW": 0.0, "n": 6, "truth": "class",
                                "note": CLASS_LEVEL_NOTE})
    assert "no per-image rationale information" in g2["note"]


def test_grid_bad_inputs():
    with pytest.raises(ConfigError, match="true_rationales"):
        rationale_grid(PRED_CLASS, TRUE_CLASS, PRED_R, TRUE_R[:, :3])
    with pytest.raises(ConfigError, match="pred_class"):
        rationale_grid(PRED_CLASS[:5], TRUE_CLASS, PRED_R, TRUE_R)
    with pytest.raises(ConfigError, match="pred_rationales"):
        rationale_grid(PRED_CLASS, TRUE_CLASS, PRED_R[:5], TRUE_R[:5])
    with pytest.raises(ConfigError, match="true_class"):  # label 3 but only 3 class scores
        rationale_grid(torch.rand(6, 3), TRUE_CLASS + 1, PRED_R, TRUE_R)
    with pytest.raises(ConfigError, match="rule"):
        rationale_grid(PRED_CLASS, TRUE_CLASS, PRED_R, TRUE_R, rule="top1")
    with pytest.raises(ConfigError, match="k"):
        right_rationale(np.random.rand(6, 4), TRUE_R, rule="topk", k=5)
    with pytest.raises(ConfigError, match="pred_rationales"):
        right_rationale(np.random.rand(6, 4), TRUE_R, rule="subset")  # scores need rule="topk"


def test_truth_level_detects_class_level_truth():
    labels = torch.tensor([0, 0, 1, 1])
    rows = multi_hot([{0}, {0}, {1, 2}, {1, 2}])
    assert truth_level(labels, rows) == "class"
    assert truth_level(labels, multi_hot([{0}, {1}, {1, 2}, {1, 2}])) == "image"  # one image differs
    assert truth_level(torch.tensor([0, 1]), multi_hot([{0}, {1}])) == "image"  # one image per class: unknown
    # with class-level truth and rationales named within the predicted class's list: RW = 0, RR = accuracy
    class_truth = multi_hot([{0, 1}, {2, 3}])
    true_c, pred_c = torch.tensor([0, 0, 1, 1, 1]), torch.tensor([0, 1, 1, 1, 0])
    pred_r = multi_hot([{1}, {2}, {3}, {2}, {0}])  # each a rationale of the predicted class
    g = rationale_grid(pred_c, true_c, pred_r, class_truth[true_c])
    assert g["RW"] == 0.0 and g["RR"] == pytest.approx(float((pred_c == true_c).float().mean()))
    assert g["truth"] == "class" and g["note"] == CLASS_LEVEL_NOTE


def test_float_labels_must_be_integral():
    g = rationale_grid(PRED_CLASS.float(), TRUE_CLASS, PRED_R, TRUE_R)
    assert g == rationale_grid(PRED_CLASS, TRUE_CLASS, PRED_R, TRUE_R)
    with pytest.raises(ConfigError, match="non-integral"):
        rationale_grid(PRED_CLASS.float() + 0.5, TRUE_CLASS, PRED_R, TRUE_R)


def test_label_range_comes_from_both_label_vectors():
    r = multi_hot([{0}, {1}])
    g = rationale_grid(torch.tensor([0, 3]), torch.tensor([0, 1]), r, r)  # a predicted label above every true one
    assert (g["RR"], g["WR"]) == (0.5, 0.5)
    g = rationale_grid(torch.tensor([0, 0]), torch.tensor([0, 2]), r, r)  # a true label above every predicted one
    assert (g["RR"], g["WR"]) == (0.5, 0.5)
