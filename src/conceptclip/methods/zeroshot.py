"""Zero-shot CLIP (Radford et al., ICML 2021): cosine similarity to hand-written class prompts,
scaled by the backbone's logit scale; several templates are ensembled by averaging features."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from conceptclip.methods import register_method
from conceptclip.methods.base import Method, MethodConfig, option
from conceptclip.prompts import class_text_features
from conceptclip.prompts.logits import clip_logits


@dataclass
class ZeroShotConfig(MethodConfig):
    templates: list[str] = option(help="'{}' prompt templates whose features are averaged; empty: the dataset's "
                                       "template", source="ours", factory=list)


@register_method("zeroshot")
class ZeroShot(Method):
    Config = ZeroShotConfig

    def __init__(self, backbone, classnames, config=None, **kw) -> None:
        super().__init__(backbone, classnames, config, **kw)
        templates = self.config.templates or [self.template]
        # derived from the class names, so never saved: a base-to-novel head recomputes it for its classes
        self.register_buffer("text_features", class_text_features(backbone, self.classnames, templates), persistent=False)

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return clip_logits(batch["features"], self.text_features, self.backbone.logit_scale.detach())
