"""Softmax-weighted aggregation of region-level similarities into one score per class: the local
branch of text-as-image prompt learning (regions are report sentences while training on text,
patch tokens at inference), usable by any method that scores a class against a set of regions.

    w_jc = exp(s_jc / tau) / sum_j' exp(s_j'c / tau)        (softmax over the regions j)
    s_c  = sum_j w_jc s_jc

tau -> 0 gives max_j s_jc, tau -> infinity the mean over the regions.
"""

from __future__ import annotations

import torch

from conceptclip.errors import ConfigError


def softmax_pool(sims: torch.Tensor, tau: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Aggregate region similarities (B, N, C) over N into (B, C) with softmax weights at
    temperature `tau`; `mask` (B, N) bool marks the real regions (padding is ignored). A row with
    no real region scores 0 for every class."""
    if not isinstance(sims, torch.Tensor) or sims.dim() != 3:
        raise ConfigError(f"softmax_pool: expected similarities (B, N, C), got {getattr(sims, 'shape', sims)}")
    if not tau > 0:
        raise ConfigError(f"softmax_pool: temperature tau={tau!r}: expected a positive number")
    logits = sims / tau
    if mask is not None:
        if mask.shape != sims.shape[:2]:
            raise ConfigError(f"softmax_pool: mask of shape {tuple(mask.shape)} does not match the regions "
                              f"{tuple(sims.shape[:2])}")
        keep = mask.to(torch.bool).unsqueeze(-1)
        logits = logits.masked_fill(~keep, float("-inf"))
        weights = torch.softmax(logits, dim=1).nan_to_num(0.0)  # all-masked rows: 0/0 -> 0
        return (weights * sims.masked_fill(~keep, 0.0)).sum(dim=1)
    return (torch.softmax(logits, dim=1) * sims).sum(dim=1)
