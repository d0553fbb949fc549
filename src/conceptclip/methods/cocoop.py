"""CoCoOp: conditional context optimisation (Zhou et al., "Conditional Prompt Learning for
Vision-Language Models", CVPR 2022).

What the paper adds to CoOp (Sec. 3.2): a meta-net h_theta (Linear-ReLU-Linear, hidden D/16)
turns the image feature into one token shift pi = h_theta(x), and every context token becomes
image-conditioned, v_m(x) = v_m + pi (Eq. 2 context, t_i(x) = {v_1(x), ..., v_M(x), c_i});
p(y | x) = exp(sim(x, g(t_y(x))) / tau) / sum_i exp(sim(x, g(t_i(x))) / tau) (Eq. 3). The text
encoder therefore runs once per image and class. The meta-net reads the frozen, L2-normalised
image feature (as the reference code does), so cached features suffice.

Paper defaults: M = 4 context tokens initialised from "a photo of a", SGD lr 0.002, batch 1,
10 epochs at 16 shots. Batch 1 is slow; the default here is a small batch of 4 (an engine-level
choice: the loss is still per image).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from conceptclip.methods import register_method
from conceptclip.methods.base import option
from conceptclip.methods.coop import CoOp
from conceptclip.methods.coop_family import ContextMethod, PhraseContextConfig
from conceptclip.prompts import normalize
from conceptclip.prompts.meta_net import MetaNet, conditioned_context


@dataclass
class CoCoOpConfig(PhraseContextConfig):
    meta_reduction: int = option(16, "meta-net hidden width D / meta_reduction (Sec. 3.2: D / 16)")

    def validate(self) -> None:
        super().validate()
        self.expect(not self.class_specific, "class_specific", "false (the meta-net shifts one shared context)")


@register_method("cocoop")
class CoCoOp(ContextMethod):
    Config = CoCoOpConfig
    train_defaults = {**CoOp.train_defaults, "batch_size": 4, "epochs": 10}  # CoOp's, 10 epochs of batch 4

    def __init__(self, backbone, classnames, config=None, **kw) -> None:
        super().__init__(backbone, classnames, config, **kw)
        self.meta_net = MetaNet(backbone.embed_dim, self.prompt.ctx.shape[-1], self.config.meta_reduction)

    def text_features(self, image_features: torch.Tensor) -> torch.Tensor:
        """Image-conditioned class features (B, C, D), L2-normalised."""
        shift = self.meta_net(normalize(image_features))  # pi = h_theta(x), (B, W)
        ctx = conditioned_context(self.prompt.ctx, shift)  # v_m(x) = v_m + pi, (B, M, W)
        return normalize(self.prompt(ctx))

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        img = batch["features"].float()
        text = self.text_features(img)  # (B, C, D): one text per image, so not `clip_logits`' (C, D)
        return self.backbone.logit_scale.detach() * torch.einsum("bd,bcd->bc", normalize(img), text)  # Eq. 3
