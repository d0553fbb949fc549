"""Class activation maps from gradients (Grad-CAM, Selvaraju et al., ICCV 2017), batched over
images and targets, on conv feature maps or ViT patch tokens.

For target t with score y^t and a layer's activation A (channels k, positions i, j):

    alpha_k^t = 1/Z sum_ij dy^t / dA_k,ij            (Eq. 1: global-average-pooled gradients)
    L^t       = ReLU(sum_k alpha_k^t A_k)             (Eq. 2)

One forward pass captures A; the T targets' gradients come from one vectorised backward
(`torch.autograd.grad(..., is_grads_batched=True)`), or a loop over targets, never over images.
With `create_graph=True` the maps stay differentiable (DEAL's regularisers back-propagate
through them into the prompts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from conceptclip.errors import ConfigError
from conceptclip.explain._grad import ActivationCapture, target_gradients
from conceptclip.explain.targets import Target, target_scores

Reshape = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class CAMResult:
    """maps (B, T, h, w); scores (B, T): the target scores the maps explain."""

    maps: torch.Tensor
    scores: torch.Tensor


def vit_reshape(grid: tuple[int, int] | None = None) -> Reshape:
    """ViT tokens (B, L, W) -> (B, W, h, w): keep the last h*w tokens (drops CLS and any visual
    prompt tokens, which come before the patches) and lay them on the grid; with no grid, a
    square grid of the L - 1 non-CLS tokens."""

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 3:
            raise ConfigError(f"ViT activation: expected tokens (B, L, W), got {tuple(tokens.shape)}")
        h, w = grid if grid is not None else (math.isqrt(tokens.shape[1] - 1),) * 2
        if h * w == 0 or h * w > tokens.shape[1] or (grid is None and h * w != tokens.shape[1] - 1):
            raise ConfigError(f"ViT activation with {tokens.shape[1]} tokens does not hold a {h}x{w} patch grid")
        patches = tokens[:, tokens.shape[1] - h * w:]
        return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)

    return reshape


class BaseCAM:
    """Gradient-weighted activation maps of one layer; subclasses define `cam_weights`.

    Args:
        forward: images (B, ...) -> model output that the targets read (logits tensor or `ModelOutput`).
        layer: the module whose activation is explained (its output, or its input with `use_input`).
        reshape: activation -> (B, C, h, w) (e.g. `vit_reshape(grid)` for tokens); None for conv maps.
        use_input: hook the layer's input instead of its output (e.g. the last ViT block's input).
        relu: apply Grad-CAM's ReLU (Eq. 2).
        batched_targets: one vectorised backward for all targets (else a loop over targets).
    """

    def __init__(self, forward: Callable[[torch.Tensor], Any], layer: nn.Module, *, reshape: Reshape | None = None,
                 use_input: bool = False, relu: bool = True, batched_targets: bool = True) -> None:
        self.forward = forward
        self.layer = layer
        self.reshape = reshape
        self.use_input = use_input
        self.relu = relu
        self.batched_targets = batched_targets

    def cam_weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """Weights (T, B, C, 1, 1) or (T, B, C, h, w) from activations (B, C, h, w) and gradients
        (T, B, C, h, w)."""
        raise NotImplementedError

    def _as_map(self, x: torch.Tensor) -> torch.Tensor:
        out = self.reshape(x) if self.reshape is not None else x
        if out.dim() != 4:
            raise ConfigError(f"activation of shape {tuple(out.shape)} is not a (B, C, h, w) map; "
                              "pass reshape= (e.g. vit_reshape(grid) for ViT tokens)")
        return out

    def compute(self, inputs: torch.Tensor, targets: Sequence[Target], *, create_graph: bool = False) -> CAMResult:
        """Maps (B, T, h, w) of every target on every image, from one forward pass."""
        with torch.enable_grad(), ActivationCapture(self.layer, self.use_input) as capture:
            output = self.forward(inputs)
        with torch.enable_grad():
            scores = target_scores(output, targets)
            act = capture.single()
            if not scores.requires_grad:
                raise ConfigError("the target scores do not depend on the hooked layer (no gradient path)")
            (grads,) = target_gradients(scores, [act], create_graph=create_graph, batched=self.batched_targets)
            a = self._as_map(act if create_graph else act.detach())
            g = self._as_map(grads.flatten(0, 1)).unflatten(0, grads.shape[:2])  # (T, B, C, h, w)
            cam = (self.cam_weights(a, g) * a.unsqueeze(0)).sum(dim=2)  # (T, B, h, w)
            if self.relu:
                cam = torch.relu(cam)
        maps = cam.transpose(0, 1)
        if not create_graph:
            maps, scores = maps.detach(), scores.detach()
        return CAMResult(maps=maps, scores=scores)

    def __call__(self, inputs: torch.Tensor, targets: Sequence[Target], *, create_graph: bool = False) -> torch.Tensor:
        """`compute(...).maps`: (B, T, h, w)."""
        return self.compute(inputs, targets, create_graph=create_graph).maps


class GradCAM(BaseCAM):
    """Grad-CAM: channel weights are the spatially averaged gradients (Eq. 1)."""

    def cam_weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return gradients.mean(dim=(-2, -1), keepdim=True)
