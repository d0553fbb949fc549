"""What an explanation explains: small target callables (as in pytorch-grad-cam).

A target maps a model output to one score per image, (B,). The output is whatever the explained
forward returns: a logits tensor (B, C), or a `ModelOutput` holding logits and image features.
Several targets explained together give maps (B, T, h, w), one per target. A target that holds
per-image data implements `for_images(start, stop, n)`, returning itself restricted to images
[start, stop) of n, so that explanations can run images in chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import torch
import torch.nn.functional as F

from conceptclip.backbones.base import ImageFeatures
from conceptclip.errors import ConfigError


@dataclass
class ModelOutput:
    """Output of an explained method forward: `logits` (B, C) and the image `features` they came from."""

    logits: torch.Tensor | None
    features: ImageFeatures | None = None


class Target(Protocol):
    def __call__(self, output: Any) -> torch.Tensor:  # (B,)
        ...


def logits_of(output: Any) -> torch.Tensor:
    """The (B, C) logits of an output (a tensor, or an object with `.logits`)."""
    logits = output if isinstance(output, torch.Tensor) else getattr(output, "logits", None)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(output).__name__
        raise ConfigError(f"target: expected model output logits of shape (B, C), got {got}")
    return logits


def global_features_of(output: Any) -> torch.Tensor:
    """The (B, D) global image features of an output (a tensor, `ImageFeatures`, or `.features`)."""
    if isinstance(output, torch.Tensor):
        feats = output
    elif isinstance(output, ImageFeatures):
        feats = output.global_
    else:
        f = getattr(output, "features", None)
        feats = f.global_ if isinstance(f, ImageFeatures) else f
    if not isinstance(feats, torch.Tensor) or feats.dim() != 2:
        raise ConfigError("ConceptTarget: the explained forward returned no (B, D) global image features")
    return feats


class ClassTarget:
    """Logit of class `index`: one int for every image, or one class per image ((B,) ints)."""

    def __init__(self, index: int | Sequence[int] | torch.Tensor) -> None:
        if isinstance(index, bool) or not isinstance(index, (int, Sequence, torch.Tensor)):
            raise ConfigError(f"ClassTarget: expected a class index or one index per image, got {index!r}")
        self.index = index

    def __call__(self, output: Any) -> torch.Tensor:
        logits = logits_of(output)
        c = logits.shape[1]
        if isinstance(self.index, int):
            if not 0 <= self.index < c:
                raise ConfigError(f"ClassTarget: class index {self.index} out of range for {c} classes")
            return logits[:, self.index]
        idx = torch.as_tensor(self.index, device=logits.device).long()
        if idx.shape != (logits.shape[0],):
            raise ConfigError(f"ClassTarget: expected {logits.shape[0]} per-image indices, got shape {tuple(idx.shape)}")
        if bool(((idx < 0) | (idx >= c)).any()):
            raise ConfigError(f"ClassTarget: per-image class indices must lie in [0, {c}), got {idx.tolist()}")
        return logits.gather(1, idx[:, None])[:, 0]

    def for_images(self, start: int, stop: int, n: int) -> "ClassTarget":
        """This target on images [start, stop) of n (explanations run images in chunks)."""
        if isinstance(self.index, int):
            return self
        idx = torch.as_tensor(self.index).long()
        if idx.shape != (n,):
            raise ConfigError(f"ClassTarget: expected {n} per-image indices, got shape {tuple(idx.shape)}")
        return ClassTarget(idx[start:stop])

    def __repr__(self) -> str:
        return f"ClassTarget({self.index!r})"


class PredictedClassTarget:
    """Logit of each image's predicted (argmax) class."""

    def __call__(self, output: Any) -> torch.Tensor:
        logits = logits_of(output)
        return logits.gather(1, logits.detach().argmax(1, keepdim=True))[:, 0]


class ConceptTarget:
    """Cosine similarity of the global image feature with a concept's text feature (D,),
    times `scale` (1 by default; CLIP's logit scale gives logit units)."""

    def __init__(self, text_feature: torch.Tensor, scale: float = 1.0) -> None:
        t = torch.as_tensor(text_feature)
        if t.dim() != 1 or t.numel() == 0:
            raise ConfigError(f"ConceptTarget: expected one text feature of shape (D,), got {tuple(t.shape)}")
        self.text_feature = t
        self.scale = float(scale)

    def __call__(self, output: Any) -> torch.Tensor:
        feats = global_features_of(output)
        if feats.shape[1] != self.text_feature.shape[0]:
            raise ConfigError(f"ConceptTarget: text feature has width {self.text_feature.shape[0]}, "
                              f"image features {feats.shape[1]}")
        t = F.normalize(self.text_feature.to(feats), dim=0)
        return self.scale * (F.normalize(feats, dim=-1) @ t)


def class_targets(n_classes: int) -> list[ClassTarget]:
    """One `ClassTarget` per class, in class order."""
    return [ClassTarget(i) for i in range(n_classes)]


def concept_targets(text_features: torch.Tensor, scale: float = 1.0) -> list[ConceptTarget]:
    """One `ConceptTarget` per row of `text_features` (K, D)."""
    if text_features.dim() != 2:
        raise ConfigError(f"concept_targets: expected text features (K, D), got {tuple(text_features.shape)}")
    return [ConceptTarget(t, scale) for t in text_features]


def targets_for_images(targets: Sequence[Target], start: int, stop: int, n: int) -> list[Target]:
    """`targets` restricted to images [start, stop) of n (targets without per-image data as they are)."""
    return [t.for_images(start, stop, n) if hasattr(t, "for_images") else t for t in targets]


def target_scores(output: Any, targets: Sequence[Target]) -> torch.Tensor:
    """Scores (B, T) of every target on one output."""
    if not targets:
        raise ConfigError("targets: expected at least one target")
    scores = [t(output) for t in targets]
    b = scores[0].shape[0] if scores[0].dim() == 1 else -1
    for i, s in enumerate(scores):
        if not isinstance(s, torch.Tensor) or s.dim() != 1 or s.shape[0] != b:
            raise ConfigError(f"target {i} ({targets[i]!r}) returned shape {tuple(s.shape)}, expected ({b},) "
                              "(one score per image)")
    return torch.stack(scores, dim=1)
