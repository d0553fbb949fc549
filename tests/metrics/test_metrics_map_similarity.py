"""Map-similarity measures of the saliency sanity checks, against scipy and the SSIM paper's formula."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from conceptclip.errors import ConfigError
from conceptclip.metrics.map_similarity import map_rank_correlation, map_ssim


def test_rank_correlation_matches_scipy_with_ties():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (4, 6, 7), generator=g).double()  # many ties
    b = a + 0.7 * torch.randn(4, 6, 7, generator=g).double()
    b[1] = b[1].round()  # ties on both sides
    got = map_rank_correlation(a, b)
    for i in range(4):
        want = spearmanr(a[i].reshape(-1).numpy(), b[i].reshape(-1).numpy()).statistic
        assert got[i].item() == pytest.approx(want, abs=1e-12)


def test_rank_correlation_extremes_and_constant():
    x = torch.arange(12.0).reshape(3, 4)
    assert map_rank_correlation(x, 2 * x + 1).item() == pytest.approx(1.0)
    assert map_rank_correlation(x, -x).item() == pytest.approx(-1.0)
    assert math.isnan(map_rank_correlation(x, torch.zeros(3, 4)).item())


def _ssim_by_hand(x: np.ndarray, y: np.ndarray, sigma=1.5, k1=0.01, k2=0.03) -> float:
    """Wang et al. 2004, Eq. 13 with a Gaussian window (radius int(3.5 sigma + 0.5)), computed with
    explicit loops over every window position fully inside the image."""
    r = int(3.5 * sigma + 0.5)
    w1 = np.array([math.exp(-(i * i) / (2 * sigma * sigma)) for i in range(-r, r + 1)])
    w = np.outer(w1, w1)
    w /= w.sum()
    c1, c2 = (k1 * 1.0) ** 2, (k2 * 1.0) ** 2
    vals = []
    for i in range(r, x.shape[0] - r):
        for j in range(r, x.shape[1] - r):
            px, py = x[i - r:i + r + 1, j - r:j + r + 1], y[i - r:i + r + 1, j - r:j + r + 1]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim_matches_the_papers_formula():
    rng = np.random.default_rng(1)
    a = rng.random((2, 16, 18))
    b = np.clip(a + 0.3 * rng.standard_normal((2, 16, 18)), 0, 1)
    b[:, 0, 0], b[:, -1, -1] = 0.0, 1.0  # keep min-max normalisation the identity
    a[:, 0, 0], a[:, -1, -1] = 0.0, 1.0
    got = map_ssim(torch.from_numpy(a), torch.from_numpy(b))
    for i in range(2):
        assert got[i].item() == pytest.approx(_ssim_by_hand(a[i], b[i]), abs=1e-10)


def test_ssim_identity_normalisation_and_shape_errors():
    x = torch.rand(3, 20, 20, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(map_ssim(x, x), torch.ones(3, dtype=torch.float64))
    # min-max normalisation first: an affine change of a map does not change its SSIM to itself
    assert torch.allclose(map_ssim(x, 5 * x + 2), torch.ones(3, dtype=torch.float64))
    assert (map_ssim(x, 1 - x) < 0).all()
    small = torch.rand(2, 7, 7, generator=torch.Generator().manual_seed(3))  # smaller than the window
    assert torch.allclose(map_ssim(small, small), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ConfigError, match="same shape"):
        map_ssim(torch.rand(2, 5, 5), torch.rand(2, 5, 6))
