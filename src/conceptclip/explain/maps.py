"""Map helpers: upsampling to the image, per-map min-max normalisation, the image geometry of
preprocessing (for overlays and masks, `load_masks`), and baseline maps (centre Gaussian, random)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from conceptclip.errors import ConfigError, DataError
from conceptclip.metrics.grounding import normalize_maps as _normalize_maps


def upsample_maps(maps: torch.Tensor, size: int | tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize maps (..., h, w) to (..., H, W) (bilinear, align_corners=False: the same values as
    `metrics.resize_maps`, but differentiable)."""
    if not isinstance(maps, torch.Tensor) or maps.dim() < 2:
        raise ConfigError(f"maps: expected a tensor of shape (..., h, w), got {getattr(maps, 'shape', maps)}")
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(maps.shape[-2:]) == size:
        return maps
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    m = flat if flat.is_floating_point() else flat.float()
    out = F.interpolate(m, size=size, mode=mode, align_corners=False if mode in ("bilinear", "bicubic") else None)
    return out.reshape(*maps.shape[:-2], *size)


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map (..., h, w) to [0, 1] (a constant map becomes zeros)."""
    return _normalize_maps(maps)


def center_crop_geometry(image: Image.Image, size: int, resample: int = Image.BICUBIC) -> Image.Image:
    """The square crop the backbones' preprocessing shows the model: resize the short side to
    `size`, then centre-crop `size` x `size` (use Image.NEAREST for masks)."""
    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), resample)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


def load_masks(paths: Sequence[str | Path], size: int, threshold: int = 127) -> torch.Tensor:
    """Ground-truth masks (N, size, size) bool, seen with the preprocessing geometry
    (`center_crop_geometry`, nearest neighbour), foreground where the grey value > `threshold`."""
    out = []
    for path in paths:
        try:
            with Image.open(path) as m:
                crop = center_crop_geometry(m.convert("L"), size, Image.NEAREST)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read mask ({type(exc).__name__}: {exc})") from None
        out.append(torch.from_numpy(np.asarray(crop) > threshold))
    return torch.stack(out) if out else torch.zeros(0, size, size, dtype=torch.bool)


def center_gaussian_maps(n: int, size: int | tuple[int, int], sigma: float = 0.25) -> torch.Tensor:
    """Baseline maps (n, H, W): an isotropic Gaussian at the image centre, std `sigma` times the
    image side: g(y, x) = exp(-((y - c_y)^2 / H^2 + (x - c_x)^2 / W^2) / (2 sigma^2))."""
    h, w = (size, size) if isinstance(size, int) else size
    if sigma <= 0:
        raise ConfigError(f"sigma: expected a positive fraction of the image side, got {sigma}")
    y = (torch.arange(h, dtype=torch.float64) + 0.5 - h / 2) / h
    x = (torch.arange(w, dtype=torch.float64) + 0.5 - w / 2) / w
    g = torch.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma**2))
    return g.float().expand(n, h, w).clone()


def random_maps(n: int, size: int | tuple[int, int], seed: int = 0) -> torch.Tensor:
    """Baseline maps (n, h, w) of i.i.d. uniform values from a seeded generator."""
    h, w = (size, size) if isinstance(size, int) else size
    return torch.rand(n, h, w, generator=torch.Generator().manual_seed(seed))


BASELINES = ("random", "centre")


def baseline_maps(n: int, grid: int | tuple[int, int], size: int | tuple[int, int], seed: int = 0,
                  sigma: float = 0.25) -> dict[str, torch.Tensor]:
    """The maps every explanation score is read against: "random" (i.i.d. uniform on the
    explainer's `grid`, upsampled to `size` like the explanations) and "centre" (the centre prior,
    `center_gaussian_maps` at `size`); each (n, H, W)."""
    return {"random": upsample_maps(random_maps(n, grid, seed=seed), size),
            "centre": center_gaussian_maps(n, size, sigma)}
