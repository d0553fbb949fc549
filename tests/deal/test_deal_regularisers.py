"""DEAL's loss terms on toy inputs, each expected value written out from the paper's formula with
explicit loops (Li et al., ECCV 2024): L_contr (Eq. 2, in-batch InfoNCE), R_disen (Eq. 3, a sum over
ordered concept pairs), R_local (Eq. 4); the named options (symmetric / class-prompt CE, the pair
mean); and the map normalisation that makes the terms bounded."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conceptclip.errors import ConfigError
from conceptclip.methods.deal import contrastive_loss, disentangle_loss, localize_loss, normalize_heatmaps
from conceptclip.metrics import disentanglability


def maps(*rows: list[float]) -> torch.Tensor:
    """K maps of 2 x 2 from flat rows, as one image (1, K, 2, 2)."""
    return torch.tensor(rows, dtype=torch.float64).reshape(1, len(rows), 2, 2)


def l1(a: list[float], b: list[float]) -> float:
    return sum(abs(x - y) for x, y in zip(a, b))


def eq3(images: list[list[list[float]]]) -> float:
    """Eq. 3 per image, - sum_k sum_{j != k} Dist(g(C_k), g(C_j)) with Dist = L1, averaged over images."""
    total = 0.0
    for concepts in images:
        r = 0.0
        for k in range(len(concepts)):
            for j in range(len(concepts)):
                if j != k:
                    r -= l1(concepts[k], concepts[j])
        total += r
    return total / len(images)


def sum_normalise(row: list[float]) -> list[float]:
    pos = [max(v, 0.0) for v in row]
    return [v / sum(pos) for v in pos]


def test_disentangle_is_eq3_summed_over_ordered_pairs():
    # |p0 - p1|_1 = 2, |p0 - p2|_1 = 1, |p1 - p2|_1 = 1: ordered pairs 2 (2 + 1 + 1) = 8
    m = maps([1, 0, 0, 0], [0, 1, 0, 0], [0.5, 0.5, 0, 0])
    assert float(disentangle_loss(m)) == pytest.approx(-8.0)
    assert float(disentangle_loss(m, reduction="mean")) == pytest.approx(-8.0 / 6)  # the option: / K (K - 1)
    rng = np.random.default_rng(0)
    raw = rng.random((3, 4, 3, 3))
    rows = [[sum_normalise(list(raw[i, k].ravel())) for k in range(4)] for i in range(3)]
    got = disentangle_loss(normalize_heatmaps(torch.from_numpy(raw), "sum", eps=0.0))
    assert float(got) == pytest.approx(eq3(rows))
    assert float(disentangle_loss(torch.from_numpy(np.array(rows)).reshape(3, 4, 3, 3), reduction="mean")) \
        == pytest.approx(eq3(rows) / 12)
    same = maps([0.25] * 4, [0.25] * 4, [0.25] * 4)
    assert float(disentangle_loss(same)) == 0.0
    assert float(disentangle_loss(torch.cat([m, same]))) == pytest.approx(-4.0)  # the batch mean of -8 and 0
    with pytest.raises(ConfigError, match="disen_reduction"):
        disentangle_loss(m, reduction="max")


def test_disentangle_mask_drops_padded_concepts():
    # concept 2 is padding: only the ordered pairs (0, 1) and (1, 0) count, distance 2 each
    m = maps([1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0])
    mask = torch.tensor([[True, True, False]])
    assert float(disentangle_loss(m, mask)) == pytest.approx(-4.0)
    assert float(disentangle_loss(m, mask, "mean")) == pytest.approx(-2.0)
    # one real concept: no pair, contributes 0
    assert float(disentangle_loss(m, torch.tensor([[True, False, False]]))) == 0.0


def test_disentanglability_metric_is_eq3_normalised_to_unit_interval():
    rng = np.random.default_rng(1)
    raw = rng.random((3, 4, 5, 5))
    expected = []
    for i in range(3):
        p = [sum_normalise(list(raw[i, k].ravel())) for k in range(4)]
        pairs = [l1(p[k], p[j]) for k in range(4) for j in range(4) if j != k]
        expected.append(sum(pairs) / (2 * len(pairs)))  # L1 of two distributions <= 2
    assert disentanglability(raw) == pytest.approx(float(np.mean(expected)))
    assert disentanglability(maps([1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0])) == pytest.approx(1.0)
    assert disentanglability(maps([1, 2, 0, 0], [2, 4, 0, 0])) == pytest.approx(0.0)


def test_localize_is_eq4():
    rng = np.random.default_rng(2)
    con = rng.random((2, 3, 2, 2))
    cat = rng.random((2, 2, 2))
    expected = 0.0
    for i in range(2):
        for pix in range(4):
            mean = sum(con[i, k].ravel()[pix] for k in range(3)) / 3
            expected += abs(mean - cat[i].ravel()[pix])
    assert float(localize_loss(torch.from_numpy(con), torch.from_numpy(cat))) == pytest.approx(expected / 2)
    # padding excluded from the mean: mean is [1,0,0,0]; |1 - .25| + 3 * .25 = 1.5
    uniform = torch.full((1, 2, 2), 0.25, dtype=torch.float64)
    m3 = maps([1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1])
    assert float(localize_loss(m3, uniform, torch.tensor([[True, False, False]]))) == pytest.approx(1.5)


def test_contrastive_is_eq2_in_batch_infonce():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(5, 3)) * 3  # v_i . t_c / tau for the C = 3 class texts
    labels = [0, 2, 0, 1, 2]  # image i's text t_i is its class's; classes repeat within the batch
    n = len(labels)
    eq2 = sum(-math.log(math.exp(scores[i, labels[i]]) / sum(math.exp(scores[i, labels[m]]) for m in range(n)))
              for i in range(n)) / n
    text_to_image = sum(-math.log(math.exp(scores[i, labels[i]]) /
                                  sum(math.exp(scores[m, labels[i]]) for m in range(n))) for i in range(n)) / n
    by_class = sum(-math.log(math.exp(scores[i, labels[i]]) / sum(math.exp(s) for s in scores[i]))
                   for i in range(n)) / n
    s, y = torch.from_numpy(scores), torch.tensor(labels)
    assert float(contrastive_loss(s, y)) == pytest.approx(eq2)
    assert float(contrastive_loss(s, y, "symmetric")) == pytest.approx((eq2 + text_to_image) / 2)
    assert float(contrastive_loss(s, y, "classes")) == pytest.approx(by_class)
    assert eq2 != pytest.approx(by_class)  # duplicates count n times in Eq. 2's denominator
    with pytest.raises(ConfigError, match="contrastive"):
        contrastive_loss(s, y, "triplet")


def test_normalize_heatmaps_by_hand():
    h = torch.tensor([[[1.0, -1.0], [3.0, 0.0]]])
    torch.testing.assert_close(normalize_heatmaps(h, "sum", eps=0.0), torch.tensor([[[0.25, 0.0], [0.75, 0.0]]]))
    torch.testing.assert_close(normalize_heatmaps(h, "minmax", eps=0.0), torch.tensor([[[0.5, 0.0], [1.0, 0.25]]]))
    # scale invariant, so the regularisers cannot be gamed by inflating the maps
    torch.testing.assert_close(normalize_heatmaps(7 * h, "sum"), normalize_heatmaps(h, "sum"))
    # two maps of one image are normalised each on its own (over positions, not over maps)
    two = torch.tensor([[[[1.0, 3.0], [0.0, 0.0]], [[2.0, 2.0], [4.0, 0.0]]]])
    torch.testing.assert_close(normalize_heatmaps(two, "minmax", eps=0.0),
                               torch.tensor([[[[1 / 3, 1.0], [0.0, 0.0]], [[0.5, 0.5], [1.0, 0.0]]]]))
    torch.testing.assert_close(normalize_heatmaps(two, "sum", eps=0.0),
                               torch.tensor([[[[0.25, 0.75], [0.0, 0.0]], [[0.25, 0.25], [0.5, 0.0]]]]))
    # a map with no positive evidence (Grad-CAM's ReLU can give one) or a flat map stays 0, never NaN
    assert torch.equal(normalize_heatmaps(torch.zeros(1, 2, 2), "sum"), torch.zeros(1, 2, 2))
    assert torch.equal(normalize_heatmaps(torch.full((1, 2, 2), 3.0), "minmax"), torch.zeros(1, 2, 2))
    with pytest.raises(ConfigError, match="map_norm"):
        normalize_heatmaps(h, "softmax")


def test_bounds_on_normalised_maps():
    disjoint = maps([1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0])
    assert float(disentangle_loss(disjoint)) == pytest.approx(-12.0)  # the lowest possible at K = 3: -2 K (K - 1)
    assert float(localize_loss(disjoint[:, :1], torch.tensor([[[0.0, 1.0], [0.0, 0.0]]], dtype=torch.float64))) \
        == pytest.approx(2.0)  # the largest R_local possible


def test_shape_errors_are_one_line():
    with pytest.raises(ConfigError, match=r"\(B, K, h, w\)"):
        disentangle_loss(torch.zeros(2, 2, 2))
    with pytest.raises(ConfigError, match="concept mask"):
        disentangle_loss(torch.zeros(1, 3, 2, 2), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ConfigError, match=r"category map: expected \(1, 2, 2\), got \(1, 3, 3\)"):
        localize_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 3))
