"""KgCoOp: L = L_ce + lambda * mean_i ||w_i - w_i^clip||^2 with lambda = 8 (Yao et al., CVPR 2023, Eqs. 6-7)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from conceptclip.methods import create_method
from conceptclip.methods.kgcoop import kg_loss
from conceptclip.prompts import class_text_features


def test_kg_loss_hand_computed():
    learned = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    handcrafted = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    # class 0: (1 - 0.6)^2 + (0 - 0.8)^2 = 0.16 + 0.64 = 0.8; class 1: 0 -> mean 0.4
    assert abs(float(kg_loss(learned, handcrafted)) - 0.4) < 1e-7


def test_default_lambda_and_handcrafted_prompt(tiny_clip, classes):
    method = create_method("kgcoop", tiny_clip, classes, template="a photo of a {}.")
    assert method.config.lam == 8.0
    torch.testing.assert_close(method.handcrafted, class_text_features(tiny_clip, classes, ["a photo of a {}."]))


def test_context_initialised_as_the_handcrafted_prompt_has_zero_kg_term(tiny_clip, classes, batch):
    method = create_method("kgcoop", tiny_clip, classes, template="a photo of a {}.")
    terms = method.loss(batch)
    assert float(terms["kg"]) < 1e-10


def test_total_loss_is_ce_plus_eight_times_kg(tiny_clip, classes, batch):
    method = create_method("kgcoop", tiny_clip, classes, template="a photo of a {}.")
    with torch.no_grad():
        method.prompt.ctx.add_(torch.randn(method.prompt.ctx.shape, generator=torch.Generator().manual_seed(3)))
    terms = method.loss(batch)
    text = F.normalize(method.prompt(), dim=-1)
    kg = ((text - method.handcrafted) ** 2).sum(-1).mean()
    ce = F.cross_entropy(tiny_clip.logit_scale * F.normalize(batch["features"], dim=-1) @ text.t(), batch["labels"])
    assert float(kg.detach()) > 1e-3
    torch.testing.assert_close(terms["kg"], kg.detach())
    torch.testing.assert_close(terms["loss"], ce + 8.0 * kg, rtol=1e-5, atol=1e-6)
