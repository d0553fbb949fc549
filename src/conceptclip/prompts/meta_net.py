"""CoCoOp's meta-net: a small image-conditioned token generator.

h_theta(x) = W_2 ReLU(W_1 x + b_1) + b_2, a Linear-ReLU-Linear bottleneck with hidden width
D / 16 (Zhou et al., "Conditional Prompt Learning for Vision-Language Models", CVPR 2022,
Sec. 3.2). Its output pi = h_theta(x) (one vector per image, of the text token width W) shifts
every learnable context token: v_m(x) = v_m + pi. Any method that conditions prompt tokens on the
image reuses it.
"""

from __future__ import annotations

import torch
from torch import nn

from conceptclip.errors import ConfigError


class MetaNet(nn.Module):
    """Linear(D, D // reduction) -> ReLU -> Linear(D // reduction, W): image feature (B, D) -> token shift (B, W)."""

    def __init__(self, in_dim: int, out_dim: int, reduction: int = 16) -> None:
        super().__init__()
        if reduction < 1:
            raise ConfigError(f"meta-net reduction={reduction}: expected a positive integer")
        hidden = max(1, in_dim // reduction)
        self.linear1 = nn.Linear(in_dim, hidden)
        self.relu = nn.ReLU(inplace=False)
        self.linear2 = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.relu(self.linear1(x)))


def conditioned_context(ctx: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """v_m(x) = v_m + pi(x): context (M, W) and per-image shifts (B, W) -> per-image contexts (B, M, W)."""
    if ctx.dim() != 2 or shift.dim() != 2 or ctx.shape[-1] != shift.shape[-1]:
        raise ConfigError(f"conditioned_context: expected ctx (M, W) and shift (B, W), got {tuple(ctx.shape)} and "
                          f"{tuple(shift.shape)}")
    return ctx.unsqueeze(0) + shift.unsqueeze(1)
