"""DEAL's regularisers on toy maps, by hand: R_disen = -mean pairwise L1 distance between an image's
concept maps, R_local = L1 distance between their mean and the category map (Li et al., ECCV 2024);
and the map normalisation that makes both bounded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist

from conceptclip.errors import ConfigError
from conceptclip.methods.deal import disentangle_loss, localize_loss, normalize_heatmaps
from conceptclip.metrics import disentanglability


def maps(*rows: list[float]) -> torch.Tensor:
    """K maps of 2 x 2 from flat rows, as one image (1, K, 2, 2)."""
    return torch.tensor(rows, dtype=torch.float64).reshape(1, len(rows), 2, 2)


def test_disentangle_hand_computed():
    # |p0 - p1|_1 = 2, |p0 - p2|_1 = 1, |p1 - p2|_1 = 1 -> mean 4/3 -> R_disen = -4/3
    m = maps([1, 0, 0, 0], [0, 1, 0, 0], [0.5, 0.5, 0, 0])
    assert float(disentangle_loss(m)) == pytest.approx(-4 / 3)
    # identical maps: 0; a batch averages images: (-4/3 + 0) / 2
    same = maps([0.25] * 4, [0.25] * 4, [0.25] * 4)
    assert float(disentangle_loss(same)) == 0.0
    assert float(disentangle_loss(torch.cat([m, same]))) == pytest.approx(-2 / 3)


def test_disentangle_mask_drops_padded_concepts():
    # concept 2 is padding: only the pair (0, 1) counts, distance 2
    m = maps([1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0])
    mask = torch.tensor([[True, True, False]])
    assert float(disentangle_loss(m, mask)) == pytest.approx(-2.0)
    # one real concept: no pair, contributes 0
    assert float(disentangle_loss(m, torch.tensor([[True, False, False]]))) == 0.0


def test_disentangle_is_minus_the_disentanglability_metric_and_scipy():
    rng = np.random.default_rng(0)
    raw = torch.from_numpy(rng.random((3, 4, 5, 5)))
    p = normalize_heatmaps(raw, "sum", eps=0.0)
    expected = np.mean([pdist(p[i].reshape(4, -1).numpy(), "cityblock").mean() for i in range(3)])
    assert float(disentangle_loss(p)) == pytest.approx(-expected)
    assert float(disentangle_loss(p)) == pytest.approx(-disentanglability(raw))


def test_localize_hand_computed():
    # mean of [1,0,0,0] and [0,1,0,0] is [.5,.5,0,0]; vs uniform [.25]*4: |.25|*4 = 1
    m = maps([1, 0, 0, 0], [0, 1, 0, 0])
    cat = torch.full((1, 2, 2), 0.25, dtype=torch.float64)
    assert float(localize_loss(m, cat)) == pytest.approx(1.0)
    # the category map equal to the mean concept map: 0
    assert float(localize_loss(m, torch.tensor([[[0.5, 0.5], [0, 0]]], dtype=torch.float64))) == 0.0
    # padding excluded from the mean: mean is [1,0,0,0]; |1 - .25| + 3 * .25 = 1.5
    m3 = maps([1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1])
    assert float(localize_loss(m3, cat, torch.tensor([[True, False, False]]))) == pytest.approx(1.5)


def test_normalize_heatmaps_by_hand():
    h = torch.tensor([[[1.0, -1.0], [3.0, 0.0]]])
    torch.testing.assert_close(normalize_heatmaps(h, "sum", eps=0.0), torch.tensor([[[0.25, 0.0], [0.75, 0.0]]]))
    torch.testing.assert_close(normalize_heatmaps(h, "minmax", eps=0.0), torch.tensor([[[0.5, 0.0], [1.0, 0.25]]]))
    # scale invariant, so the regularisers cannot be gamed by inflating the maps
    torch.testing.assert_close(normalize_heatmaps(7 * h, "sum"), normalize_heatmaps(h, "sum"))
    with pytest.raises(ConfigError, match="map_norm"):
        normalize_heatmaps(h, "softmax")


def test_bounds_on_normalised_maps():
    disjoint = maps([1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0])
    assert float(disentangle_loss(disjoint)) == pytest.approx(-2.0)  # the lowest R_disen possible
    assert float(localize_loss(disjoint[:, :1], torch.tensor([[[0.0, 1.0], [0.0, 0.0]]], dtype=torch.float64))) \
        == pytest.approx(2.0)  # the largest R_local possible


def test_shape_errors_are_one_line():
    with pytest.raises(ConfigError, match=r"\(B, K, h, w\)"):
        disentangle_loss(torch.zeros(2, 2, 2))
    with pytest.raises(ConfigError, match="concept mask"):
        disentangle_loss(torch.zeros(1, 3, 2, 2), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ConfigError, match="category map"):
        localize_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 3))
