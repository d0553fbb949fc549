"""Visual prompts with the text encoder frozen: the image side of prompt learning (VPT and friends).

Every prompt here is an `nn.Module` whose only parameters are the prompt itself, with one method
`encode(batch, patches=False) -> ImageFeatures`, and an `inputs` set saying which batch keys it
reads (so the engine knows whether cached features suffice):

- `ViTVisualPrompt`, shallow or deep VPT (Jia et al., "Visual Prompt Tuning", ECCV 2022, Sec. 3.2):
  P learned tokens inserted after CLS at the input of layer 1 (shallow, Eq. 4) or a fresh block of
  P tokens at the input of every layer (deep, Eq. 5-6); needs a ViT backbone exposing
  `vision_embeddings` / `vision_forward_tokens` (the `hf` backend). Initialised like VPT's code:
  uniform(-v, v), v = sqrt(6 / (3 * patch^2 + width)).
- `ConvFeaturePrompt`, a shallow prompt for the convolutional `lite` tower: a learned map (C, h, w)
  added to the feature map at the input of the tower's last `last_blocks` MBConv blocks (192 x 7 x 7
  at 224 px for one block). Because lite's projection head is linear and mean-pooled, a prompt *after* the tower
  would be a mere shift of the embedding; placed before the last block it passes through its
  expansion conv, batch norm, swish, depthwise conv and the head conv, so it acts per image. The
  frozen prefix (stem + earlier blocks) runs without gradients, or is read from the batch key
  `tower_prefix` when a caller cached it. The prompt is gamma ⊙ p, p in units of the scale |gamma|
  of the batch norm that produced the map (so one learning rate suits any split point), and p
  starts at zero: training starts from the frozen model. `last_blocks=0` puts it at the input of
  the head conv (320 x 7 x 7; 1x1 conv, batch norm and swish follow), the cheapest place.
- `PixelPadPrompt`, a pixel-space padding prompt (Bahng et al., "Exploring Visual Prompts for
  Adapting Large-Scale Models", 2022): a learned frame of width `pad` (30 px at 224) added to the
  normalised pixels; works on any backbone but back-propagates through the whole image tower.
- `NoVisualPrompt`: the frozen encoder (cached features when the batch has them).

`build_visual_prompt(backbone, kind)` picks one: "deep" needs a ViT and says so for a conv tower.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from conceptclip.backbones.base import Backbone, ImageFeatures
from conceptclip.errors import ConfigError

KINDS = ("auto", "deep", "shallow", "pixel", "none")


def vpt_init_bound(patch_size: int, width: int) -> float:
    """VPT's uniform initialisation bound v = sqrt(6 / (3 * patch^2 + width)) (Xavier over the patch
    embedding's fan-in 3 p^2 and the token width)."""
    return math.sqrt(6.0 / float(3 * patch_size * patch_size + width))


def _pixels(batch: dict[str, torch.Tensor], who: str) -> torch.Tensor:
    if "pixels" not in batch:
        raise ConfigError(f"{who} reads images: the batch has no 'pixels' (keys: {sorted(batch)})")
    return batch["pixels"]


class NoVisualPrompt(nn.Module):
    """The frozen image encoder: batch "features" (and "patches") when present, else pixels."""

    kind = "none"
    inputs = frozenset({"features"})

    def __init__(self, backbone: Backbone, patches: bool = False) -> None:
        super().__init__()
        self._backbone = [backbone]
        if patches:
            self.inputs = frozenset({"features", "patches"})

    def encode(self, batch: dict[str, torch.Tensor], patches: bool = False) -> ImageFeatures:
        if "features" in batch and (not patches or "patches" in batch):
            p = batch.get("patches") if patches else None
            grid = None
            if p is not None:
                side = int(round(math.sqrt(p.shape[1])))
                grid = (side, side) if side * side == p.shape[1] else None
            return ImageFeatures(batch["features"], p, grid)
        return self._backbone[0].encode_image(_pixels(batch, "the frozen encoder"), patches=patches)


class ViTVisualPrompt(nn.Module):
    """Shallow (`deep=False`) or deep VPT tokens for a ViT backbone (`hf`, `tiny-clip`)."""

    inputs = frozenset({"pixels"})

    def __init__(self, backbone: Backbone, n_tokens: int = 8, deep: bool = True) -> None:
        super().__init__()
        if not getattr(backbone, "is_vit", False) or not hasattr(backbone, "vision_forward_tokens"):
            raise ConfigError(f"visual_prompt={'deep' if deep else 'shallow'!r} as ViT prompt tokens needs a ViT "
                              f"backbone with vision_forward_tokens (the hf backend); {backbone.name!r} has none")
        if n_tokens < 1:
            raise ConfigError(f"n_prompt_tokens={n_tokens}: expected a positive integer")
        self._backbone = [backbone]
        self.kind = "deep" if deep else "shallow"
        n_layers = len(backbone.explain_layers()["image_attn"])
        with torch.no_grad():
            probe = backbone.vision_embeddings(torch.zeros(1, 3, backbone.image_size, backbone.image_size,
                                                           device=backbone.device))
        width = probe.shape[-1]
        bound = vpt_init_bound(int(getattr(backbone, "patch_size", 16)), width)
        depth = n_layers if deep else 1
        self.tokens = nn.Parameter(torch.empty(depth, n_tokens, width).uniform_(-bound, bound))

    def encode(self, batch: dict[str, torch.Tensor], patches: bool = False) -> ImageFeatures:
        bb = self._backbone[0]
        tokens = bb.vision_embeddings(_pixels(batch, f"{self.kind} VPT"))
        return bb.vision_forward_tokens(tokens, list(self.tokens.unbind(0)), patches=patches)


class ConvFeaturePrompt(nn.Module):
    """Shallow feature-space prompt for the `lite` EfficientNet tower (see the module docstring)."""

    kind = "shallow"
    inputs = frozenset({"pixels"})
    prefix_key = "tower_prefix"

    def __init__(self, backbone: Backbone, last_blocks: int = 0) -> None:
        super().__init__()
        tower = getattr(backbone, "image_tower", None)
        needed = ("_conv_stem", "_bn0", "_blocks", "_conv_head", "_bn1", "_swish")
        if tower is None or not all(hasattr(tower, a) for a in needed) or not hasattr(backbone, "project_feature_map"):
            raise ConfigError(f"a shallow feature-space prompt needs the lite (EfficientNet) tower; backbone "
                              f"{backbone.name!r} has none: use visual_prompt='pixel' for a pixel-space prompt")
        n = len(tower._blocks)
        if not 0 <= last_blocks <= n:
            raise ConfigError(f"prompt_last_blocks={last_blocks}: expected 0..{n} (MBConv blocks after the prompt; "
                              "0 = at the input of the head conv)")
        self._backbone = [backbone]
        self.split = n - last_blocks
        with torch.no_grad():
            probe = self.prefix(torch.zeros(1, 3, backbone.image_size, backbone.image_size, device=backbone.device))
        # the batch norm that produced the prompted map: its |gamma| is each channel's scale
        bn = tower._blocks[self.split - 1]._bn2 if self.split > 0 else tower._bn0
        self.register_buffer("channel_scale", bn.weight.detach().abs().clamp_min(1e-3).reshape(-1, 1, 1).clone(),
                             persistent=False)
        self.prompt = nn.Parameter(torch.zeros(probe.shape[1:]))  # (C, h, w), in units of channel_scale

    def _rate(self, idx: int) -> float:
        tower = self._backbone[0].image_tower
        rate = tower._global_params.drop_connect_rate or 0.0
        return rate * float(idx) / len(tower._blocks)

    @torch.no_grad()
    def prefix(self, pixels: torch.Tensor) -> torch.Tensor:
        """Frozen stem and blocks before the prompt: pixels -> (B, C, h, w) (no gradients)."""
        tower = self._backbone[0].image_tower
        x = tower._swish(tower._bn0(tower._conv_stem(pixels)))
        for idx, block in enumerate(tower._blocks[:self.split]):
            x = block(x, drop_connect_rate=self._rate(idx))
        return x

    def suffix(self, x: torch.Tensor) -> torch.Tensor:
        """The last blocks and the head conv: prompted map -> lite's 1280-channel feature map (through
        the backbone's `feature_map` hook point, so Grad-CAM still sees it)."""
        bb = self._backbone[0]
        tower = bb.image_tower
        for idx in range(self.split, len(tower._blocks)):
            x = tower._blocks[idx](x, drop_connect_rate=self._rate(idx))
        return bb.feature_map(tower._swish(tower._bn1(tower._conv_head(x))))

    def encode(self, batch: dict[str, torch.Tensor], patches: bool = False) -> ImageFeatures:
        x = batch[self.prefix_key] if self.prefix_key in batch else self.prefix(_pixels(batch, "the feature prompt"))
        if tuple(x.shape[1:]) != tuple(self.prompt.shape):
            raise ConfigError(f"{self.prefix_key}: expected maps (B, {', '.join(map(str, self.prompt.shape))}), "
                              f"got {tuple(x.shape)}")
        return self._backbone[0].project_feature_map(self.suffix(x + self.delta().to(x.dtype)), patches=patches)

    def delta(self) -> torch.Tensor:
        """The additive prompt map gamma ⊙ p (C, h, w)."""
        return self.channel_scale * self.prompt


class PixelPadPrompt(nn.Module):
    """Learned padding frame in pixel space (Bahng et al. 2022), added to the normalised pixels."""

    kind = "pixel"
    inputs = frozenset({"pixels"})

    def __init__(self, backbone: Backbone, pad: int | None = None) -> None:
        super().__init__()
        size = backbone.image_size
        pad = max(1, round(30 * size / 224)) if pad is None else pad
        if not 1 <= pad <= size // 2:
            raise ConfigError(f"prompt_pad={pad}: expected 1..{size // 2} pixels for {size}-pixel images")
        self._backbone = [backbone]
        mask = torch.ones(1, 1, size, size)
        mask[..., pad:size - pad, pad:size - pad] = 0
        self.register_buffer("mask", mask, persistent=False)
        self.prompt = nn.Parameter(torch.zeros(1, 3, size, size))

    def encode(self, batch: dict[str, torch.Tensor], patches: bool = False) -> ImageFeatures:
        x = _pixels(batch, "the pixel prompt")
        return self._backbone[0].encode_image(x + (self.prompt * self.mask).to(x.dtype), patches=patches)


def build_visual_prompt(backbone: Backbone, kind: str = "auto", *, n_tokens: int = 8, last_blocks: int = 0,
                        pad: int | None = None, patches: bool = False) -> Any:
    """A visual prompt module for `backbone`: "deep" / "shallow" VPT tokens on a ViT; on a conv
    tower "shallow" is `ConvFeaturePrompt` and "deep" is an error; "pixel" a padding prompt;
    "none" the frozen encoder; "auto" = deep on a ViT, shallow otherwise."""
    if kind not in KINDS:
        raise ConfigError(f"visual_prompt={kind!r}: expected one of {KINDS}")
    vit = bool(getattr(backbone, "is_vit", False))
    if kind == "auto":
        kind = "deep" if vit else "shallow"
    if kind == "none":
        return NoVisualPrompt(backbone, patches=patches)
    if kind == "pixel":
        return PixelPadPrompt(backbone, pad)
    if kind == "deep" and not vit:
        raise ConfigError(f"visual_prompt='deep' (deep VPT) needs a ViT image tower (the hf backend); backbone "
                          f"{backbone.name!r} is convolutional: use visual_prompt='shallow' (feature-space prompt) "
                          "or 'pixel'")
    if vit:
        return ViTVisualPrompt(backbone, n_tokens, deep=kind == "deep")
    return ConvFeaturePrompt(backbone, last_blocks)
