"""Grounding metrics of explanation maps against binary masks: pointing game, and Dice,
IoU, precision and recall of thresholded maps.

Maps have shape (..., h, w) and masks (..., H, W); the leading dims broadcast (e.g. maps
(N, T, h, w) for T targets against masks (N, 1, H, W)). Maps are resized bilinearly to the mask
size before anything else, so a 7x7 patch map is scored against a full-resolution mask.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from conceptclip.errors import ConfigError
from conceptclip.metrics._tasks import safe_div
from conceptclip.metrics._validate import (
    ArrayLike,
    as_tensor,
    check_binary,
    check_choice,
    check_finite,
    check_fraction,
    check_nonempty,
    nanmean,
    shape_str,
)

Reduction = Literal["mean", "none"]


def resize_maps(maps: ArrayLike, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of maps (..., h, w) to (..., *size) (align_corners=False, float32+)."""
    m = as_tensor(maps, "maps")
    if m.ndim < 2:
        raise ConfigError(f"maps: expected shape (..., h, w), got {shape_str(m.shape)}")
    m = m.float() if not m.is_floating_point() or m.dtype in (torch.float16, torch.bfloat16) else m
    if tuple(m.shape[-2:]) == tuple(size):
        return m
    lead = m.shape[:-2]
    flat = m.reshape(-1, 1, *m.shape[-2:])
    out = F.interpolate(flat, size=tuple(size), mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size)


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map (..., H, W) to [0, 1]; a constant map becomes all zeros."""
    flat = maps.reshape(*maps.shape[:-2], -1)
    lo = flat.amin(dim=-1, keepdim=True)
    span = flat.amax(dim=-1, keepdim=True) - lo
    out = torch.where(span > 0, (flat - lo) / span.clamp_min(torch.finfo(flat.dtype).tiny), torch.zeros_like(flat))
    return out.reshape(maps.shape)


def top_fraction_mask(maps: torch.Tensor, fraction: float) -> torch.Tensor:
    """Keep the k = max(1, floor(fraction * H * W + 0.5)) highest pixels of each map (ties by
    raster order), as a bool tensor of the maps' shape."""
    check_fraction(fraction, "top_fraction")
    flat = maps.reshape(-1, maps.shape[-2] * maps.shape[-1])
    n = flat.shape[1]
    k = max(1, int(math.floor(fraction * n + 0.5)))
    # the k-th largest value by selection (no full sort), then ties at it in raster order
    kth = torch.kthvalue(flat, n - k + 1, dim=1, keepdim=True).values
    above = flat > kth
    tied = flat == kth
    keep = above | (tied & (tied.cumsum(dim=1) <= k - above.sum(dim=1, keepdim=True)))
    return keep.reshape(maps.shape)


def binarize_maps(
    maps: torch.Tensor,
    *,
    threshold: float | None = None,
    top_fraction: float | None = None,
    normalize: bool = True,
) -> torch.Tensor:
    """Binary masks from maps: `map >= threshold` (after per-map min-max normalisation when
    `normalize`), or the `top_fraction` most salient pixels. Give at most one of the two;
    neither means threshold 0.5."""
    if threshold is not None and top_fraction is not None:
        raise ConfigError("threshold/top_fraction: expected at most one of them, got both")
    if top_fraction is not None:
        return top_fraction_mask(maps, top_fraction)
    values = normalize_maps(maps) if normalize else maps
    return values >= (0.5 if threshold is None else threshold)


def align(maps: ArrayLike, masks: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate, broadcast leading dims and resize: returns maps (..., H, W) float and masks
    (..., H, W) bool of one common shape."""
    m = as_tensor(maps, "maps")
    k = as_tensor(masks, "masks")
    if m.ndim < 2:
        raise ConfigError(f"maps: expected shape (..., h, w), got {shape_str(m.shape)}")
    if k.ndim < 2:
        raise ConfigError(f"masks: expected shape (..., H, W), got {shape_str(k.shape)}")
    check_nonempty(m, "maps")
    check_nonempty(k, "masks")
    check_finite(m, "maps")
    try:
        lead = torch.broadcast_shapes(m.shape[:-2], k.shape[:-2])
    except RuntimeError:
        raise ConfigError(
            f"masks: leading dims {shape_str(k.shape[:-2])} do not broadcast with maps' "
            f"{shape_str(m.shape[:-2])}"
        ) from None
    kb = check_binary(k, "masks")
    size = tuple(kb.shape[-2:])
    m = resize_maps(m, size)  # type: ignore[arg-type]
    return m.expand(*lead, *size), kb.to(m.device).expand(*lead, *size)


def _reduce(values: torch.Tensor, reduction: Reduction) -> float | torch.Tensor:
    return nanmean(values) if reduction == "mean" else values


def pointing_game(
    maps: ArrayLike, masks: ArrayLike, *, tolerance: float = 0.0, reduction: Reduction = "mean"
) -> float | torch.Tensor:
    """Pointing game (Zhang et al., 2016): a hit when the map's maximum falls on the mask.

        hit_i = [exists p in mask_i : ||argmax(map_i) - p||_2 <= tolerance]
        accuracy = #hits / (#hits + #misses)

    The map is first resized to the mask; the argmax takes the first maximum in raster order.
    A constant map (e.g. all zeros) points nowhere and counts as a miss, whatever the mask.
    The original protocol uses a 15-pixel tolerance. Samples whose mask is empty are undefined
    (NaN with reduction="none") and skipped by the mean.
    """
    check_choice(reduction, "reduction", ("mean", "none"))
    if not tolerance >= 0:
        raise ConfigError(f"tolerance: expected a non-negative number of pixels, got {tolerance!r}")
    m, k = align(maps, masks)
    lead, (h, w) = m.shape[:-2], m.shape[-2:]
    flat_m = m.reshape(-1, h * w)
    flat_k = k.reshape(-1, h * w)
    idx = flat_m.argmax(dim=1)
    if tolerance < 1:
        hit = flat_k.gather(1, idx[:, None])[:, 0]
    else:  # look only at the (2r+1)^2 window around each maximum, cut to a disk of radius `tolerance`
        r = int(math.floor(tolerance))
        padded = F.pad(k.reshape(-1, h, w), (r, r, r, r))
        off = torch.arange(2 * r + 1, device=m.device)
        rows = (idx // w)[:, None] + off[None]  # padded coordinates of rows y-r .. y+r
        cols = (idx % w)[:, None] + off[None]
        batch = torch.arange(idx.shape[0], device=m.device)[:, None, None]
        window = padded[batch, rows[:, :, None], cols[:, None, :]]
        disk = ((off - r)[:, None] ** 2 + (off - r)[None, :] ** 2) <= tolerance**2
        hit = (window & disk).flatten(1).any(dim=1)
    out = hit.double()
    out[flat_m.amax(dim=1) == flat_m.amin(dim=1)] = 0.0  # a constant map has no maximum to point with
    out[~flat_k.any(dim=1)] = float("nan")
    return _reduce(out.reshape(lead), reduction)


def overlap_scores(
    pred_masks: ArrayLike, true_masks: ArrayLike, *, reduction: Reduction = "mean"
) -> dict[str, float | torch.Tensor]:
    """Overlap of binary predicted masks with true masks, per mask (..., H, W):

        Dice = 2 TP / (2 TP + FP + FN)      IoU = TP / (TP + FP + FN)
        precision = TP / (TP + FP)           recall = TP / (TP + FN)

    with pixel counts TP, FP, FN. Undefined values (empty denominators) are NaN and skipped by
    the mean. Returns {"dice", "iou", "precision", "recall"}.
    """
    check_choice(reduction, "reduction", ("mean", "none"))
    p = check_binary(as_tensor(pred_masks, "pred_masks"), "pred_masks")
    t = check_binary(as_tensor(true_masks, "true_masks"), "true_masks")
    if p.ndim < 2 or p.shape != t.shape:
        raise ConfigError(
            f"true_masks: expected shape {shape_str(p.shape)} (..., H, W) to match pred_masks, got {shape_str(t.shape)}"
        )
    return _overlap(p, t.to(p.device), reduction)


def _overlap(p: torch.Tensor, t: torch.Tensor, reduction: Reduction) -> dict[str, float | torch.Tensor]:
    dims = (-2, -1)
    tp = (p & t).sum(dims).double()
    fp = p.sum(dims).double() - tp
    fn = t.sum(dims).double() - tp
    scores = {
        "dice": safe_div(2 * tp, 2 * tp + fp + fn),
        "iou": safe_div(tp, tp + fp + fn),
        "precision": safe_div(tp, tp + fp),
        "recall": safe_div(tp, tp + fn),
    }
    return {name: _reduce(v, reduction) for name, v in scores.items()}


def map_grounding_scores(
    maps: ArrayLike,
    masks: ArrayLike,
    *,
    threshold: float | None = None,
    top_fraction: float | None = None,
    normalize: bool = True,
    reduction: Reduction = "mean",
) -> dict[str, float | torch.Tensor]:
    """Dice, IoU, precision and recall of maps against masks: resize each map bilinearly to
    its mask, binarise it (`binarize_maps`: value threshold after min-max normalisation, or
    top fraction of pixels), then `overlap_scores`."""
    check_choice(reduction, "reduction", ("mean", "none"))
    m, k = align(maps, masks)
    pred = binarize_maps(m, threshold=threshold, top_fraction=top_fraction, normalize=normalize)
    return _overlap(pred, k, reduction)
