"""DEAL concept metrics (Sec. 4.2): disentanglability in [0, 1], localisability (normalised insertion AUC
of the concept's own score), Eq. 6 prediction accuracy; part mIoU and the per-slot concept accuracy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist
from sklearn import metrics as skm

from conceptclip.errors import ConfigError
from conceptclip.metrics import (
    concept_prediction_accuracy,
    gaussian_blur,
    concept_slot_accuracy,
    disentanglability,
    localisability,
    part_miou,
)


def maps_2x2(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64).reshape(len(rows), 2, 2)


# ---------------------------------------------------------------- disentanglability
def test_disentanglability_hand():
    # p0 = [1,0,0,0], p1 = [0,1,0,0], p2 = [.5,.5,0,0] (normalised to sum 1)
    # |p0-p1|_1 = 2, |p0-p2|_1 = 1, |p1-p2|_1 = 1 -> mean 4/3, halved to [0, 1]: 2/3
    a = maps_2x2([1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0])
    assert disentanglability(a[None]) == pytest.approx(2 / 3)
    # scale invariant, and negative values are clipped at 0
    b = maps_2x2([1, -3, 0, 0], [0, 5, 0, 0], [7, 7, 0, -1])
    assert disentanglability(b[None]) == pytest.approx(2 / 3)
    # identical maps -> 0 ; batch mean (2/3 + 0) / 2
    same = maps_2x2([1, 2, 3, 4], [1, 2, 3, 4], [2, 4, 6, 8])
    per = disentanglability(torch.stack([a, same]), reduction="none")
    assert per.tolist() == pytest.approx([2 / 3, 0.0])
    assert disentanglability(torch.stack([a, same])) == pytest.approx(1 / 3)


def test_disentanglability_disjoint_maps_reach_1_and_zero_maps_are_skipped():
    disjoint = maps_2x2([1, 0, 0, 0], [0, 0, 3, 0], [0, 0, 0, 2])
    assert disentanglability(disjoint[None]) == pytest.approx(1.0)
    # one all-zero map: only the pair (0, 1) is defined, distance 2 of at most 2
    with_zero = maps_2x2([1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0])
    assert disentanglability(with_zero[None]) == pytest.approx(1.0)
    only_one = maps_2x2([1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0])
    assert math.isnan(disentanglability(only_one[None], reduction="none")[0])


def test_disentanglability_against_scipy_pdist():
    rng = np.random.default_rng(0)
    maps = rng.random((4, 5, 6, 7))
    per = disentanglability(maps, reduction="none")
    for i in range(4):
        p = maps[i].reshape(5, -1)
        p = p / p.sum(1, keepdims=True)
        assert float(per[i]) == pytest.approx(pdist(p, "cityblock").mean() / 2)
    # one image without a batch dimension (K, H, W), non-square maps
    assert float(disentanglability(maps[1], reduction="none")) == pytest.approx(float(per[1]))


# ---------------------------------------------------------------- part mIoU
# image 0: part 0 pred {(0,0),(0,1)} vs mask {(0,0)}        -> I 1, U 2
#          part 1 pred {(1,1)} vs mask {(1,0),(1,1)}         -> I 1, U 2
# image 1: part 0 pred {(0,0)} vs mask {(0,0)}               -> I 1, U 1
#          part 1 pred {(0,0)} vs mask {(1,1)}               -> I 0, U 2
MAPS = torch.stack([maps_2x2([1, 1, 0, 0], [0, 0, 0, 1]), maps_2x2([1, 0, 0, 0], [1, 0, 0, 0])])
PARTS = torch.stack([maps_2x2([1, 0, 0, 0], [0, 0, 1, 1]), maps_2x2([1, 0, 0, 0], [0, 0, 0, 1])])


def test_part_miou_dataset_and_sample_modes_hand():
    # dataset: part 0 (1+1)/(2+1) = 2/3 ; part 1 (1+0)/(2+2) = 1/4 -> mIoU 11/24
    assert part_miou(MAPS, PARTS, average="none").tolist() == pytest.approx([2 / 3, 1 / 4])
    assert part_miou(MAPS, PARTS) == pytest.approx(11 / 24)
    # sample: part 0 (1/2 + 1)/2 = 3/4 ; part 1 (1/2 + 0)/2 = 1/4 -> 1/2
    assert part_miou(MAPS, PARTS, mode="sample") == pytest.approx(0.5)


def test_part_miou_valid_mask_hand():
    valid = torch.tensor([[True, True], [True, False]])  # part 1 not annotated on image 1
    # dataset: part 0 2/3 ; part 1 1/2 -> 7/12 ; sample: part 0 3/4, part 1 1/2 -> 5/8
    assert part_miou(MAPS, PARTS, valid=valid) == pytest.approx(7 / 12)
    assert part_miou(MAPS, PARTS, valid=valid, mode="sample") == pytest.approx(5 / 8)


def test_part_miou_dataset_mode_equals_pooled_jaccard():
    rng = np.random.default_rng(1)
    maps = torch.tensor(rng.random((5, 3, 4, 4)))
    parts = torch.tensor(rng.random((5, 3, 8, 8)) < 0.4)
    per = part_miou(maps, parts, top_fraction=0.3, average="none")
    from conceptclip.metrics import binarize_maps, resize_maps

    pred = binarize_maps(resize_maps(maps, (8, 8)), top_fraction=0.3)
    for k in range(3):
        ref = skm.jaccard_score(parts[:, k].flatten().numpy(), pred[:, k].flatten().numpy())
        assert float(per[k]) == pytest.approx(ref)


# ---------------------------------------------------------------- Eq. 6 prediction accuracy
def test_concept_prediction_accuracy_is_eq6():
    """s(I, c) = (1/K_c) sum_k similarity(I, C_{c,k}); predict argmax_c; padded concepts excluded."""
    rng = np.random.default_rng(5)
    scores = rng.normal(size=(7, 3, 4))
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=bool)
    scores[:, 2, 0] += 2.0  # class 2 has a large score in one of its three concepts: sum vs mean disagree
    scores[:, 1, 2:] = 50.0  # and huge padding in class 1 (two real concepts)
    pred = []
    for n in range(7):
        class_scores = []
        for c in range(3):
            real = [scores[n, c, k] for k in range(4) if mask[c, k]]
            class_scores.append(sum(real) / len(real))
        pred.append(max(range(3), key=lambda c: class_scores[c]))
    y = np.array(pred)
    y[:2] = (y[:2] + 1) % 3  # two wrong: accuracy 5/7
    assert concept_prediction_accuracy(scores, y, mask) == pytest.approx(5 / 7)
    # one real concept: its mean is itself (0.9 beats the two-concept mean 0.8)
    one = np.array([[[0.7, 0.9], [0.9, 0.0]]])
    assert concept_prediction_accuracy(one, [1], np.array([[1, 1], [1, 0]], dtype=bool)) == 1.0
    # a padded slot can change the prediction: class 1's padding holds a huge score
    padded = np.zeros((1, 2, 2))
    padded[0, 0] = [1.0, 1.0]
    padded[0, 1] = [0.5, 100.0]
    assert concept_prediction_accuracy(padded, [0], np.array([[1, 1], [1, 0]], dtype=bool)) == 1.0
    assert concept_prediction_accuracy(padded, [0]) == 0.0
    with pytest.raises(ConfigError, match="mask"):
        concept_prediction_accuracy(scores, y, mask[:2])


# ---------------------------------------------------------------- localisability
def test_localisability_is_the_normalised_insertion_auc_of_the_concept_score():
    """y_s: the concept's score after inserting the top k_s pixels of its map onto the canvas;
    y'_s = clip(|y_s - y_0| / |y_S - y_0|, 0, 1); AUC = trapezoid over the inserted fractions."""
    img = torch.tensor([[[[4.0, 0.0], [1.0, 2.0]]]])  # one image, one channel, 2 x 2
    sal = torch.tensor([[[0.1, 0.9], [0.5, 0.3]]])  # insertion order: (0,1), (1,0), (1,1), (0,0)
    canvas = torch.tensor(1.0)

    def score(x: torch.Tensor) -> torch.Tensor:  # a concept score reading pixel (0, 0) and (1, 1)
        return x[:, 0, 0, 0] + 0.5 * x[:, 0, 1, 1]

    order = [(0, 1), (1, 0), (1, 1), (0, 0)]
    ys = []
    for k in range(5):
        x = [[1.0, 1.0], [1.0, 1.0]]
        for i, j in order[:k]:
            x[i][j] = float(img[0, 0, i, j])
        ys.append(x[0][0] + 0.5 * x[1][1])
    norm = [min(max(abs(v - ys[0]) / abs(ys[-1] - ys[0]), 0.0), 1.0) for v in ys]
    auc = sum((norm[s] + norm[s - 1]) / 2 * 0.25 for s in range(1, 5))
    res = localisability(score, img, sal, n_steps=4, canvas=canvas)
    assert res.scores[0].tolist() == pytest.approx(norm)
    assert float(res.auc[0]) == pytest.approx(auc)
    # invariant to the score's scale and offset (cosine vs logit); NaN when the image scores as the canvas
    res2 = localisability(lambda x: 30 * score(x) - 2, img, sal, n_steps=4, canvas=canvas)
    assert float(res2.auc[0]) == pytest.approx(auc)
    flat = localisability(lambda x: x[:, 0, 0, 1] * 0, img, sal, n_steps=4, canvas=canvas)
    assert math.isnan(float(flat.auc[0]))
    # the full image scoring as the canvas (y_S = y_0) leaves the whole curve undefined, not 1
    same_ends = localisability(lambda x: x[:, 0, 0, 1] + x[:, 0, 1, 0], torch.tensor([[[[0.0, 0.0], [2.0, 0.0]]]]),
                               sal, n_steps=4, canvas=canvas)
    assert torch.isnan(same_ends.scores).all()
    # an overshoot past the full image's score is clipped at 1: (0,0) = 4 inserted before (1,1) = -2
    img2, sal2 = torch.tensor([[[[4.0, 0.0], [1.0, -2.0]]]]), torch.tensor([[[0.5, 0.9], [0.7, 0.1]]])
    ys2 = [1.5, 1.5, 1.5, 4 + 0.5, 4 + 0.5 * -2]  # y_s by hand for the order (0,1), (1,0), (0,0), (1,1)
    clipped = [min(abs(v - ys2[0]) / abs(ys2[-1] - ys2[0]), 1.0) for v in ys2]
    assert localisability(score, img2, sal2, n_steps=4, canvas=canvas).scores[0].tolist() == pytest.approx(clipped)


def test_localisability_defaults_are_100_steps_on_a_rise_blurred_canvas():
    gen = torch.Generator().manual_seed(0)
    img, sal = torch.rand(2, 1, 12, 12, generator=gen), torch.rand(2, 12, 12, generator=gen)

    def score(x: torch.Tensor) -> torch.Tensor:
        return (x[:, 0] * torch.linspace(0, 1, 144).reshape(12, 12)).sum(dim=(1, 2))

    got = localisability(score, img, sal)
    assert len(got.fractions) == 101
    canvas = gaussian_blur(img, 11, 5.0)  # RISE's kernel: 11 px, sigma 5
    torch.testing.assert_close(got.auc, localisability(score, img, sal, n_steps=100, canvas=canvas).auc)


# ---------------------------------------------------------------- per-slot concept accuracy (ours)
def test_concept_slot_accuracy_hand():
    preds = torch.tensor([[0, 0, 1], [1, 1, 1], [2, 0, 2], [2, 2, 2]])
    y = torch.tensor([0, 1, 2, 2])
    # concept 0: [0,1,2,2] all right -> 1 ; concept 1: [0,1,0,2] -> 3/4 ; concept 2: [1,1,2,2] -> 3/4
    assert concept_slot_accuracy(preds, y, average="none").tolist() == pytest.approx([1.0, 0.75, 0.75])
    assert concept_slot_accuracy(preds, y) == pytest.approx(2.5 / 3)
    # (N, K, C) scores give the same through argmax
    scores = torch.nn.functional.one_hot(preds, 3).double() * 0.8 + 0.1
    assert concept_slot_accuracy(scores, y) == pytest.approx(2.5 / 3)


def test_concept_presence_accuracy_with_threshold():
    probs = np.array([[0.9, 0.2], [0.4, 0.5], [0.7, 0.1]])  # 0.5 is at the threshold: present
    present = np.array([[1, 0], [1, 1], [0, 0]])
    # decisions [[1,0],[0,1],[1,0]]: concept 0 right on rows 0 only -> 1/3 ; concept 1 all right -> 1
    assert concept_slot_accuracy(probs, present, average="none").tolist() == pytest.approx([1 / 3, 1.0])
    assert concept_slot_accuracy(probs, present) == pytest.approx(2 / 3)


def test_concept_metrics_bad_inputs():
    with pytest.raises(ConfigError, match="maps"):
        disentanglability(torch.rand(2, 1, 4, 4))  # one concept: no pairs
    with pytest.raises(ConfigError, match="masks"):
        part_miou(MAPS, PARTS[:1, :1].expand(3, 1, 2, 2))
    with pytest.raises(ConfigError, match="valid"):
        part_miou(MAPS, PARTS, valid=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ConfigError, match="targets"):
        concept_slot_accuracy(torch.zeros(4, 3, dtype=torch.long), torch.zeros(5, dtype=torch.long))
