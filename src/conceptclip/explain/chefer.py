"""Gradient-weighted attention relevance for ViTs (Chefer, Gur & Wolf, "Generic Attention-model
Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers", ICCV 2021).

With A^l (heads, N, N) the attention probabilities of layer l and grad A^l = dy^t / dA^l:

    Abar^l = E_h[ (grad A^l ⊙ A^l)^+ ]        (Eq. 5: mean over heads of the positive part)
    R^0 = I,   R^l = R^{l-1} + Abar^l R^{l-1}  (Eq. 6: self-attention update, layers in order)

The explanation of target t is the CLS row of the final R over the patch tokens, on the patch
grid. Batched: one forward, the T targets' gradients from one vectorised backward.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import nn

from conceptclip.errors import ConfigError
from conceptclip.explain._grad import target_gradients
from conceptclip.explain.cam import CAMResult
from conceptclip.explain.targets import Target, target_scores


def relevance_rule(attentions: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor]) -> torch.Tensor:
    """Chefer's relevance R (..., N, N) from each layer's attention (..., heads, N, N) and its
    gradient (same shape; leading dims broadcast, e.g. gradients (T, B, ...) for T targets)."""
    if not attentions or len(attentions) != len(gradients):
        raise ConfigError(f"relevance: expected one gradient per attention map, got {len(attentions)} maps and "
                          f"{len(gradients)} gradients")
    r: torch.Tensor | None = None
    for a, g in zip(attentions, gradients):
        if a.shape[-1] != a.shape[-2] or g.shape[-3:] != a.shape[-3:]:
            raise ConfigError(f"relevance: attention {tuple(a.shape)} and gradient {tuple(g.shape)} must be "
                              "(..., heads, N, N)")
        abar = (g * a).clamp_min(0).mean(dim=-3)  # (..., N, N)
        if r is None:
            eye = torch.eye(a.shape[-1], dtype=abar.dtype, device=abar.device)
            r = eye.expand_as(abar)
        r = r + abar @ r
    assert r is not None
    return r


class AttentionCapture:
    """Context manager: record the attention probabilities (output[1]) of each attention module."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.modules = list(modules)
        self.maps: list[torch.Tensor] = []
        self._handles: list[Any] = []

    def _hook(self, _mod: nn.Module, _args: Any, out: Any) -> None:
        probs = out[1] if isinstance(out, tuple) and len(out) > 1 else None
        if not isinstance(probs, torch.Tensor):
            raise ConfigError("attention module returned no probabilities: load the ViT with "
                              "attn_implementation='eager'")
        self.maps.append(probs)

    def __enter__(self) -> "AttentionCapture":
        self.maps = []
        self._handles = [m.register_forward_hook(self._hook) for m in self.modules]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()


class AttentionRelevance:
    """Chefer relevance maps (B, T, h, w) of a ViT forward.

    Args:
        forward: pixels -> model output read by the targets.
        attention_modules: the ViT's attention modules in layer order (backbone.explain_layers()["image_attn"]).
        grid: the patch grid (h, w); None infers a square grid from the token count.
    """

    def __init__(self, forward: Callable[[torch.Tensor], Any], attention_modules: Sequence[nn.Module],
                 grid: tuple[int, int] | None = None, batched_targets: bool = True) -> None:
        if not attention_modules:
            raise ConfigError("AttentionRelevance needs the ViT's attention modules (explain_layers()['image_attn'])")
        self.forward = forward
        self.modules = list(attention_modules)
        self.grid = grid
        self.batched_targets = batched_targets

    def compute(self, pixels: torch.Tensor, targets: Sequence[Target], *, create_graph: bool = False) -> CAMResult:
        if not pixels.requires_grad:  # a frozen tower builds no graph unless its input asks for one
            pixels = pixels.detach().requires_grad_(True)
        with torch.enable_grad():
            with AttentionCapture(self.modules) as capture:
                output = self.forward(pixels)
            if len(capture.maps) != len(self.modules):
                raise ConfigError(f"captured {len(capture.maps)} attention maps for {len(self.modules)} layers")
            scores = target_scores(output, targets)
            grads = target_gradients(scores, capture.maps, create_graph=create_graph, batched=self.batched_targets)
            maps = [m if create_graph else m.detach() for m in capture.maps]
            r = relevance_rule(maps, grads)  # (T, B, N, N)
        n = r.shape[-1]
        h, w = self.grid if self.grid is not None else (math.isqrt(n - 1),) * 2
        if h * w > n - 1 or (self.grid is None and h * w != n - 1):
            raise ConfigError(f"{n} tokens do not hold a CLS token and a {h}x{w} patch grid")
        rel = r[..., 0, n - h * w:].reshape(*r.shape[:2], h, w).transpose(0, 1)  # (B, T, h, w)
        if not create_graph:
            rel, scores = rel.detach(), scores.detach()
        return CAMResult(maps=rel, scores=scores)

    def __call__(self, pixels: torch.Tensor, targets: Sequence[Target], *, create_graph: bool = False) -> torch.Tensor:
        return self.compute(pixels, targets, create_graph=create_graph).maps
