"""How alike two saliency maps are: the similarity measures of the sanity checks for saliency maps
(Adebayo et al., NeurIPS 2018, Sec. 3): Spearman rank correlation and SSIM between the map of the
trained model and the map of a randomised one. High similarity = the map does not depend on what the
model learned.

Both take maps (..., H, W) in pairs and return one value per pair (...). Following the paper, each map
is compared after min-max normalisation to [0, 1] (`grounding.normalize_maps`; a constant map becomes
zeros).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from conceptclip.errors import ConfigError
from conceptclip.metrics._validate import as_tensor
from conceptclip.metrics.grounding import normalize_maps


def _pairs(a, b, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = as_tensor(a, f"{name} a").double(), as_tensor(b, f"{name} b").double()
    if a.dim() < 2 or a.shape != b.shape:
        raise ConfigError(f"{name}: expected two maps of the same shape (..., H, W); got {tuple(a.shape)} and "
                          f"{tuple(b.shape)}")
    return a, b


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..N of each row of x (R, N), ties sharing their average rank (as scipy's rankdata)."""
    out = torch.empty_like(x, dtype=torch.float64)
    for r in range(x.shape[0]):
        _, inverse, counts = torch.unique(x[r], sorted=True, return_inverse=True, return_counts=True)
        ends = counts.cumsum(0).double()  # rank of the last member of each tied group
        out[r] = (ends - (counts.double() - 1) / 2)[inverse]
    return out


def map_rank_correlation(a, b) -> torch.Tensor:
    """Spearman's rank correlation between paired maps: rho = Pearson(rank(a), rank(b)) over the
    H*W pixels, average ranks for ties. NaN where a map is constant (its ranks have no variance)."""
    a, b = _pairs(a, b, "map_rank_correlation")
    lead = a.shape[:-2]
    ra = average_ranks(a.reshape(-1, a.shape[-2] * a.shape[-1]))
    rb = average_ranks(b.reshape(-1, b.shape[-2] * b.shape[-1]))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    den = (ra.pow(2).sum(1) * rb.pow(2).sum(1)).sqrt()
    rho = (ra * rb).sum(1) / den
    return torch.where(den > 0, rho, torch.full_like(rho, float("nan"))).reshape(lead)


def _gaussian_window(sigma: float, truncate: float = 3.5) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-x.pow(2) / (2 * sigma**2))
    return g / g.sum()


def map_ssim(a, b, *, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03, normalize: bool = True) -> torch.Tensor:
    """Mean structural similarity (Wang et al., IEEE TIP 2004, Eq. 13) between paired maps, with
    the paper's settings: Gaussian window sigma 1.5 (11 x 11, truncated at 3.5 sigma), K1 = 0.01,
    K2 = 0.03, data range L = 1 (maps min-max normalised first unless `normalize=False`), population
    (co)variances, averaged over the window positions fully inside the map:

        SSIM(x, y) = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2)),
        C1 = (K1 L)^2, C2 = (K2 L)^2.

    Maps smaller than the window are compared with one window over the whole map."""
    a, b = _pairs(a, b, "map_ssim")
    if normalize:
        a, b = normalize_maps(a), normalize_maps(b)
    lead, (h, w) = a.shape[:-2], a.shape[-2:]
    x, y = a.reshape(-1, 1, h, w), b.reshape(-1, 1, h, w)
    g = _gaussian_window(sigma)
    if len(g) > min(h, w):  # one global window
        dims = (-2, -1)
        mx, my = x.mean(dims), y.mean(dims)
        vx, vy = x.var(dims, unbiased=False), y.var(dims, unbiased=False)
        cxy = ((x - mx[..., None, None]) * (y - my[..., None, None])).mean(dims)
    else:
        kern_h, kern_w = g.view(1, 1, -1, 1), g.view(1, 1, 1, -1)

        def blur(t: torch.Tensor) -> torch.Tensor:
            return F.conv2d(F.conv2d(t, kern_h), kern_w)

        mx, my = blur(x), blur(y)
        vx, vy = blur(x * x) - mx * mx, blur(y * y) - my * my
        cxy = blur(x * y) - mx * my
    c1, c2 = k1**2, k2**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.reshape(s.shape[0], -1).mean(1).reshape(lead)


def mean_finite(x: torch.Tensor) -> float:
    """Mean over the finite entries (NaN when there are none)."""
    x = x.reshape(-1).double()
    x = x[torch.isfinite(x)]
    return float(x.mean()) if x.numel() else math.nan
