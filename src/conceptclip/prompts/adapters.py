"""Feature adapters on frozen CLIP features: CLIP-Adapter's bottleneck MLP with residual blending,
Tip-Adapter's key-value cache (its affinity function), shared by CLIP-Adapter, Tip-Adapter and
Tip-Adapter-F, and the zero-initialised residual linear map on joint-space tokens that DEAL trains.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from conceptclip.errors import ConfigError


class BottleneckAdapter(nn.Module):
    """A(f) = ReLU(ReLU(f W_1) W_2), W_1: D x D/r, W_2: D/r x D, no biases (CLIP-Adapter, Gao et al.,
    IJCV 2024, Eq. 2 with the second ReLU and the reduction r = 4 of the paper's code)."""

    def __init__(self, dim: int, reduction: int = 4) -> None:
        super().__init__()
        if reduction < 1 or dim // reduction < 1:
            raise ConfigError(f"adapter reduction={reduction}: expected a positive integer at most the width {dim}")
        self.fc1 = nn.Linear(dim, dim // reduction, bias=False)
        self.fc2 = nn.Linear(dim // reduction, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc2(F.relu(self.fc1(x))))


def residual_blend(original: torch.Tensor, adapted: torch.Tensor, alpha: float) -> torch.Tensor:
    """f* = alpha * A(f) + (1 - alpha) * f (CLIP-Adapter's residual ratio alpha, Eq. 4)."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"residual ratio alpha={alpha}: expected a number in [0, 1]")
    return alpha * adapted + (1.0 - alpha) * original


def cache_affinity(affinity: torch.Tensor, beta: float | torch.Tensor) -> torch.Tensor:
    """Tip-Adapter's activation phi(a) = exp(-beta * (1 - a)) of cosine affinities a = f F_train^T
    (Zhang et al., ECCV 2022, Sec. 3.1): 1 for an identical key, decaying with the cosine distance."""
    return torch.exp(-beta * (1.0 - affinity))


def cache_logits(features: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                 beta: float | torch.Tensor) -> torch.Tensor:
    """phi(f F_train^T) L_train: L2-normalised query features (B, D), cache keys (N, D) and one-hot
    values (N, C) -> cache logits (B, C). Keys are used as given (Tip-Adapter-F fine-tunes them)."""
    if keys.shape[0] == 0:
        return features.new_zeros(features.shape[0], values.shape[1])
    affinity = cache_affinity(features @ keys.t(), beta)
    if not values.requires_grad and _is_one_hot(values):
        # A L with one-hot L sums each class's columns of A: O(B N) adds instead of an O(B N C) matmul
        out = affinity.new_zeros(affinity.shape[0], values.shape[1])
        return out.index_add_(1, values.argmax(1), affinity)
    return affinity @ values


def _is_one_hot(values: torch.Tensor) -> bool:
    """Every row of `values` (N, C) is a one-hot vector (Tip-Adapter's cache values)."""
    return bool(((values == 0) | (values == 1)).all() and (values.sum(1) == 1).all())


class TokenAdapter(nn.Module):
    """f'(v) = v + W v + b on joint-space tokens (..., D); W, b start at zero (identity). DEAL's trained
    residual linear map on the global feature and every patch token."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.linear(x)
