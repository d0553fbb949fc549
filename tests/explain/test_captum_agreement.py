"""Grad-CAM against captum's `LayerGradCam` (a library the project did not write) on a tiny CNN and
a tiny ViT: raw maps, then bilinear upsampling and min-max normalisation.

Conventions: captum's default is `relu_attributions=False`; Grad-CAM's Eq. 2 (our default) applies
the ReLU, so the comparison passes `relu_attributions=True` (and compares the raw, un-ReLU'd maps
with `relu=False` against captum's default). captum hooks a module whose output is the (B, D, h, w)
patch grid; ours hooks the ViT block's token output (B, 1 + hw, D) and lays the patch tokens on
the grid with `vit_reshape` — the same numbers reached two ways.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

captum_attr = pytest.importorskip("captum.attr", reason="captum is in the `test` extra")

from conceptclip.explain import GradCAM, class_targets, normalize_maps, upsample_maps  # noqa: E402
from conceptclip.explain.cam import vit_reshape  # noqa: E402

TOL = 1e-7


class TinyCNN(nn.Module):
    def __init__(self, n_classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv2(torch.relu(self.conv1(x)))
        return self.fc(torch.relu(a).mean(dim=(2, 3)))


class ToGrid(nn.Module):
    """(B, hw, D) patch tokens -> (B, D, h, w): the module captum hooks."""

    def __init__(self, h: int, w: int) -> None:
        super().__init__()
        self.h, self.w = h, w

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], self.h, self.w)


class TinyViT(nn.Module):
    """Patch embedding, CLS token, two pre-norm encoder blocks, a head on the CLS token. Between
    the blocks the patch tokens pass through a grid (an identity in value) so captum can hook them."""

    def __init__(self, size: int = 16, patch: int = 4, dim: int = 12, n_classes: int = 3) -> None:
        super().__init__()
        self.g = size // patch
        self.embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(0.1 * torch.randn(1, 1 + self.g * self.g, dim))
        self.block1 = nn.TransformerEncoderLayer(dim, 2, 24, dropout=0.0, batch_first=True, norm_first=True)
        self.grid = ToGrid(self.g, self.g)
        self.block2 = nn.TransformerEncoderLayer(dim, 2, 24, dropout=0.0, batch_first=True, norm_first=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], dim=1) + self.pos
        t = self.block1(t)
        grid = self.grid(t[:, 1:])
        t = torch.cat([t[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)
        t = self.block2(t)
        return self.head(self.norm(t[:, 0]))


def _captum_maps(model: nn.Module, layer: nn.Module, x: torch.Tensor, n_classes: int, relu: bool) -> torch.Tensor:
    cam = captum_attr.LayerGradCam(model, layer)
    per_target = [cam.attribute(x, target=t, relu_attributions=relu)[:, 0] for t in range(n_classes)]
    return torch.stack(per_target, dim=1).detach()  # (B, T, h, w)


def _minmax(m: torch.Tensor) -> torch.Tensor:
    """Plain per-map min-max (constant maps -> 0), independent of conceptclip's helper."""
    flat = m.flatten(-2)
    lo, hi = flat.min(-1, keepdim=True).values, flat.max(-1, keepdim=True).values
    out = torch.where(hi > lo, (flat - lo) / (hi - lo).clamp_min(1e-30), torch.zeros_like(flat))
    return out.reshape(m.shape)


def _compare(ours: torch.Tensor, ref: torch.Tensor, size: int) -> dict[str, float]:
    assert ours.shape == ref.shape
    raw = float((ours - ref).abs().max())
    up_ours = normalize_maps(upsample_maps(ours, size))
    up_ref = _minmax(captum_attr.LayerAttribution.interpolate(ref, (size, size), interpolate_mode="bilinear"))
    final = float((up_ours - up_ref).abs().max())
    assert raw <= TOL and final <= TOL, (raw, final)
    return {"raw": raw, "upsampled + min-max": final}


@pytest.mark.parametrize("relu", [True, False])
def test_gradcam_matches_captum_on_a_cnn(relu):
    torch.manual_seed(0)
    net = TinyCNN().double().eval()
    x = torch.randn(3, 3, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ours = GradCAM(net, net.conv2, relu=relu)(x, class_targets(3))
    ref = _captum_maps(net, net.conv2, x, 3, relu)
    assert bool((ref != 0).any())  # a real comparison, not two zero maps
    diffs = _compare(ours, ref, 12)
    print(f"\n| GradCAM (CNN, relu={relu}) | captum LayerGradCam | raw {diffs['raw']:.1e}, "
          f"upsampled + min-max {diffs['upsampled + min-max']:.1e} |")


@pytest.mark.parametrize("relu", [True, False])
def test_gradcam_matches_captum_on_a_vit(relu):
    torch.manual_seed(0)
    vit = TinyViT().double().eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ours = GradCAM(vit, vit.block1, reshape=vit_reshape((4, 4)), relu=relu)(x, class_targets(3))
    ref = _captum_maps(vit, vit.grid, x, 3, relu)
    assert ours.shape == (2, 3, 4, 4) and bool((ref != 0).any())
    diffs = _compare(ours, ref, 16)
    print(f"\n| GradCAM (ViT, relu={relu}) | captum LayerGradCam | raw {diffs['raw']:.1e}, "
          f"upsampled + min-max {diffs['upsampled + min-max']:.1e} |")


def test_gradcam_float32_cnn_within_float_rounding():
    # the project runs float32 models: the two agree to float32 rounding of the same sums
    torch.manual_seed(1)
    net = TinyCNN().eval()
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(4))
    ours = GradCAM(net, net.conv2)(x, class_targets(3))
    ref = _captum_maps(net, net.conv2, x, 3, True)
    scale = float(ref.abs().max())
    assert float((ours - ref).abs().max()) <= 1e-6 * max(scale, 1.0)
