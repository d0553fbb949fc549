"""Explain any method's logits: pixels -> backbone.encode_image -> method.logits({"features", "patches"}),
with Grad-CAM on the backbone's explain layer or Chefer relevance on its attention maps."""

from __future__ import annotations

from typing import Any, Callable, Literal, Sequence

import torch

from conceptclip.backbones.base import Backbone
from conceptclip.errors import ConfigError
from conceptclip.explain.cam import CAMResult, GradCAM, vit_reshape
from conceptclip.explain.chefer import AttentionRelevance
from conceptclip.explain.similarity import similarity_maps
from conceptclip.explain.targets import ModelOutput, Target, class_targets, targets_for_images

ViTLayer = Literal["auto", "block_input", "block_output"]


def method_forward(method: Any, *, patches: bool | None = None) -> Callable[[torch.Tensor], ModelOutput]:
    """pixels (B, 3, S, S) -> ModelOutput(logits, features) of `method` on its own backbone.

    Methods that read pixels themselves ("pixels" in `method.inputs`, e.g. visual prompt tuning)
    get the pixels; the others get the backbone's global features and, when they read them or
    `patches=True`, the patch tokens."""
    inputs = getattr(method, "inputs", frozenset({"features"}))
    want_patches = ("patches" in inputs) if patches is None else patches

    def forward(pixels: torch.Tensor) -> ModelOutput:
        if "pixels" in inputs:
            return ModelOutput(logits=method.logits({"pixels": pixels}), features=None)
        feats = method.backbone.encode_image(pixels, patches=want_patches)
        batch = {"features": feats.global_}
        if feats.patches is not None:
            batch["patches"] = feats.patches
        return ModelOutput(logits=method.logits(batch), features=feats)

    return forward


def backbone_grid(backbone: Backbone) -> tuple[int, int] | None:
    """The ViT patch grid (S/p, S/p) where the backbone says its patch size, else None (inferred)."""
    p = getattr(backbone, "patch_size", None)
    return (backbone.image_size // p,) * 2 if isinstance(p, int) and p > 0 else None


def gradcam_for(backbone: Backbone, forward: Callable[[torch.Tensor], Any], *, vit_layer: ViTLayer = "auto",
                batched_targets: bool = True) -> GradCAM:
    """Grad-CAM on the backbone's explain layer ("image").

    Conv towers: the output of the last feature map. ViTs: by default the *input* of the last
    block (the penultimate block's tokens, as pytorch-grad-cam advises for ViTs): CLIP's global
    feature reads only the CLS token of the last block's output, so the patch tokens there get no
    gradient from a global-feature score. `vit_layer="block_output"` uses the last block's output
    (meaningful for scores that read the patch tokens)."""
    layers = backbone.explain_layers()
    if "image" not in layers:
        raise ConfigError(f"backbone {backbone.name!r} exposes no 'image' explain layer")
    if not backbone.is_vit:
        return GradCAM(forward, layers["image"], batched_targets=batched_targets)
    if vit_layer not in ("auto", "block_input", "block_output"):
        raise ConfigError(f"vit_layer={vit_layer!r}: expected 'auto', 'block_input' or 'block_output'")
    return GradCAM(forward, layers["image"], reshape=vit_reshape(backbone_grid(backbone)),
                   use_input=vit_layer != "block_output", batched_targets=batched_targets)


def relevance_for(backbone: Backbone, forward: Callable[[torch.Tensor], Any], *,
                  batched_targets: bool = True) -> AttentionRelevance:
    """Chefer relevance over the backbone's attention modules (ViT backbones only)."""
    attn = backbone.explain_layers().get("image_attn")
    if not backbone.is_vit or not attn:
        raise ConfigError(f"Chefer relevance needs a ViT backbone with attention maps; {backbone.name!r} has none "
                          "(use Grad-CAM)")
    return AttentionRelevance(forward, attn, grid=backbone_grid(backbone), batched_targets=batched_targets)


def default_image_batch(device: torch.device | str) -> int:
    """Images per forward pass of an explanation: small on CPU, where a frozen tower runs no faster
    per image in large batches (memory-bound: on 2 cores, 64 EfficientNet-Lite0 images took 0.7-0.8 s
    in chunks of 1-2, 1.0 s in chunks of 4, 1.8 s in chunks of 16 and 3.0 s at once), larger on
    accelerators."""
    return 2 if torch.device(device).type == "cpu" else 32


def explain_method(method: Any, pixels: torch.Tensor, targets: Sequence[Target] | None = None, *,
                   explainer: Literal["gradcam", "chefer"] = "gradcam", create_graph: bool = False,
                   vit_layer: ViTLayer = "auto", image_batch: int | None = None) -> CAMResult:
    """Maps (B, T, h, w) explaining `method`'s logits on `pixels` for `targets` (default: every
    class, in class order), with their scores (B, T).

    All T targets of `image_batch` images (default `default_image_batch(device)`) come from one
    forward and one vectorised backward; images never interact (eval mode), so the chunking changes
    nothing but speed and memory."""
    if explainer not in ("gradcam", "chefer"):
        raise ConfigError(f"explainer={explainer!r}: expected 'gradcam' or 'chefer'")
    if image_batch is not None and image_batch < 1:
        raise ConfigError(f"image_batch={image_batch!r}: expected a positive integer")
    backbone = method.backbone
    targets = list(targets) if targets is not None else class_targets(len(method.classnames))
    forward = method_forward(method)
    pixels = pixels.to(backbone.device)
    if explainer == "chefer":
        cam = relevance_for(backbone, forward)
    else:
        cam = gradcam_for(backbone, forward, vit_layer=vit_layer)
    step, n = image_batch or default_image_batch(backbone.device), pixels.shape[0]
    if step >= n:
        return cam.compute(pixels, targets, create_graph=create_graph)
    results = [cam.compute(pixels[s:s + step], targets_for_images(targets, s, min(s + step, n), n),
                           create_graph=create_graph) for s in range(0, n, step)]
    if len(results) == 1:
        return results[0]
    return CAMResult(maps=torch.cat([r.maps for r in results]), scores=torch.cat([r.scores for r in results]))


def method_text_features(method: Any) -> torch.Tensor:
    """The class text features (C, D) a prompt method scores images against. A method whose class
    prompts depend on the image (CoCoOp's `text_features(image_features)`) has none: ConfigError."""
    import inspect

    name = getattr(method, "name", type(method).__name__)
    tf = getattr(method, "text_features", None)
    if callable(tf):
        required = [p for p in inspect.signature(tf).parameters.values()
                    if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if required:
            raise ConfigError(f"method {name!r} conditions its class prompts on each image "
                              f"(text_features({', '.join(p.name for p in required)})): no image-independent "
                              "class text features to draw similarity maps from")
        tf = tf()
    if not isinstance(tf, torch.Tensor) or tf.dim() != 2:
        raise ConfigError(f"method {name!r} exposes no class text features (text_features)")
    return tf


def method_similarity_maps(method: Any, pixels: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
    """Image–prompt similarity maps (B, C, h, w): patch tokens vs the method's class prompt
    features (or the given `text_features`, e.g. concept prompts (K, D) -> (B, K, h, w))."""
    backbone = method.backbone
    with torch.no_grad():
        text = method_text_features(method) if text_features is None else text_features
        feats = backbone.encode_image(pixels.to(backbone.device), patches=True)
        return similarity_maps(feats, text.to(feats.patches))
