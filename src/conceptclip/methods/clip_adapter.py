"""CLIP-Adapter (Gao et al., "CLIP-Adapter: Better Vision-Language Models with Feature Adapters", IJCV 2024).

What the paper adds to zero-shot CLIP: a small bottleneck MLP on the frozen image feature,
A_v(f) = ReLU(f^T W_1) W_2 (Eq. 2), blended back with a residual ratio alpha,

    f* = alpha * A_v(f) + (1 - alpha) * f,   alpha = 0.2      (Eq. 4)

and the zero-shot classifier W (hand-crafted prompt features) scoring f*:
p(y = i | x) = softmax_i(exp(s) cos(W_i, f*)) (Eq. 6). Only the adapter trains (the visual
adapter, the paper's best variant; no text adapter). The adapter reads the raw (unnormalised)
image feature as the reference code does; reduction 4 and the second ReLU follow that code.
Schedule: CoOp's (SGD, lr 0.002, batch 32, cosine after a warm-up epoch) for the paper's 200 epochs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from conceptclip.methods import register_method
from conceptclip.methods.base import Method, MethodConfig, option
from conceptclip.methods.coop import CoOp
from conceptclip.prompts import class_text_features
from conceptclip.prompts.adapters import BottleneckAdapter, residual_blend
from conceptclip.prompts.logits import clip_logits


@dataclass
class CLIPAdapterConfig(MethodConfig):
    alpha: float = option(0.2, "residual ratio alpha of Eq. 4")
    reduction: int = option(4, "bottleneck D -> D / reduction -> D", "code: gaopengcuhk/CLIP-Adapter clip_adapter.py")


@register_method("clip_adapter")
class CLIPAdapter(Method):
    Config = CLIPAdapterConfig
    train_defaults = {**CoOp.train_defaults, "epochs": 200}  # CoOp's schedule for the paper's 200 epochs

    def __init__(self, backbone, classnames, config=None, **kw) -> None:
        super().__init__(backbone, classnames, config, **kw)
        self.adapter = BottleneckAdapter(backbone.embed_dim, self.config.reduction)
        residual_blend(torch.zeros(1), torch.zeros(1), self.config.alpha)  # validates alpha
        self.register_buffer("classifier", class_text_features(backbone, self.classnames, [self.template]),
                             persistent=False)

    def adapted_features(self, features: torch.Tensor) -> torch.Tensor:
        f = features.float()
        return residual_blend(f, self.adapter(f), self.config.alpha)  # Eq. 4

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return clip_logits(self.adapted_features(batch["features"]), self.classifier,
                           self.backbone.logit_scale.detach())  # Eq. 6
