"""ProGrad: prompt-aligned gradient (Zhu et al., "Prompt-aligned Gradient for Prompt Tuning", ICCV 2023).

What the paper adds to CoOp (Sec. 3.2): the few-shot cross-entropy gradient G_d = grad L_ce is
only followed where it does not contradict the general knowledge of zero-shot CLIP, whose
direction is G_g = grad L_kl with L_kl = T^2 KL(p_zs || p) between the hand-crafted-prompt
prediction p_zs and the prompt's prediction p. The update direction is

    G_prograd = G_d                                        if G_d . G_g >= 0
              = G_d - lambda * (G_d . G_g / ||G_g||^2) G_g   otherwise          (Eq. 5)

i.e. the conflicting component of G_d is projected out (lambda = 1 removes it exactly).
`backward` does this on the concatenated gradient of all trainable parameters (the context);
with one parameter tensor this equals the per-tensor projection of the reference code.
Paper defaults: CoOp's (SGD lr 0.002, batch 32), context from "a photo of a", lambda = 1, T = 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from conceptclip.errors import ConfigError
from conceptclip.methods import register_method
from conceptclip.methods.base import option
from conceptclip.methods.coop import CoOp
from conceptclip.methods.coop_family import ContextMethod, PhraseContextConfig
from conceptclip.prompts import class_text_features
from conceptclip.prompts.logits import clip_logits, kl_distillation


@dataclass
class ProGradConfig(PhraseContextConfig):
    lam: float = option(1.0, "lambda of Eq. 5 (1: the conflicting component is removed exactly)")
    temperature: float = option(1.0, "T of L_kl = T^2 KL(p_zs || p)")


def kl_to_zeroshot(logits: torch.Tensor, zs_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """L_kl = T^2 * mean_batch KL(softmax(z_zs / T) || softmax(z / T))."""
    return kl_distillation(logits, zs_logits, temperature, "batchmean")


def project_gradient(g_d: torch.Tensor, g_g: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """Eq. 5 on flat gradients: keep G_d when it agrees with G_g, else remove lam x its G_g component."""
    dot = torch.dot(g_d, g_g)
    norm2 = torch.dot(g_g, g_g)
    if dot >= 0 or norm2 == 0:
        return g_d
    return g_d - lam * dot / norm2 * g_g


@register_method("prograd")
class ProGrad(ContextMethod):
    Config = ProGradConfig
    train_defaults = CoOp.train_defaults  # CoOp's schedule, as the paper

    def __init__(self, backbone, classnames, config=None, **kw) -> None:
        super().__init__(backbone, classnames, config, **kw)
        if self.multilabel:
            raise ConfigError("prograd's KL to the zero-shot softmax needs a single-label dataset")
        self.register_buffer("handcrafted", class_text_features(backbone, self.classnames, [self.template]),
                             persistent=False)

    def zeroshot_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return clip_logits(batch["features"], self.handcrafted, self.backbone.logit_scale.detach())

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.logits(batch)
        ce = self.classification_loss(logits, batch["labels"])
        kl = kl_to_zeroshot(logits, self.zeroshot_logits(batch), self.config.temperature)
        return {"loss": ce, "ce": ce.detach(), "kl": kl}  # "kl" keeps its graph for `backward`

    def backward(self, terms: dict[str, torch.Tensor], backward: Callable[[torch.Tensor], None]) -> None:
        params = self.trainable_parameters()
        g_g = torch.autograd.grad(terms["kl"], params, retain_graph=True, allow_unused=True)
        backward(terms["loss"])  # G_d through the engine (AMP/DDP aware); Eq. 5 is scale-invariant in G_d
        g_d = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat_g = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(g_g, params)])
        flat_d = torch.cat([g.reshape(-1) for g in g_d])
        new = project_gradient(flat_d, flat_g.to(flat_d.dtype), self.config.lam)
        start = 0
        for p in params:
            n = p.numel()
            p.grad = new[start:start + n].view_as(p).clone()
            start += n
