"""LP++: logits x.(v_k + alpha_k t_k), fitted by block-coordinate MM steps with closed-form
Lipschitz step sizes (Huang et al., CVPR 2024)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from conceptclip.methods import create_method
from conceptclip.methods.lp_pp import lipschitz_alpha, lipschitz_v, lp_pp_logits
from conceptclip.prompts import normalize


def test_lipschitz_constants_hand_computed():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    # X^T X = diag(2, 1): lambda_max = 2 -> 2 / (2 * 3)
    assert abs(lipschitz_v(x) - 1 / 3) < 1e-12
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # x . t_0 = (1, 0, 1) -> 2; x . t_1 = (0.6, 0.8, 0.6) -> 0.36 + 0.64 + 0.36 = 1.36; max 2 -> 2 / 6
    assert abs(lipschitz_alpha(x, text) - 1 / 3) < 1e-12


def test_logits_hand_computed():
    x = torch.tensor([[1.0, 0.0]])
    v = torch.tensor([[0.5, 0.0], [0.0, 2.0]])
    t = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    alpha = torch.tensor([3.0, 0.25])
    # class 0: 0.5 + 3 * 0 = 0.5; class 1: 0 + 0.25 * 1 = 0.25
    assert torch.equal(lp_pp_logits(x, v, alpha, t), torch.tensor([[0.5, 0.25]]))


def test_initialisation_is_class_means_and_unit_alpha(tiny_clip, classes, batch):
    method = create_method("lp_pp", tiny_clip, classes, {"iterations": 0})
    method.fit_closed_form(batch, batch)
    x = normalize(batch["features"])
    for c in range(3):
        torch.testing.assert_close(method.prototypes[c], x[batch["labels"] == c].mean(0))
    assert torch.equal(method.alpha, torch.ones(3))


def test_mm_steps_never_increase_the_training_loss(tiny_clip, classes, batch):
    losses = []
    for it in range(0, 8):
        method = create_method("lp_pp", tiny_clip, classes, {"iterations": it})
        method.fit_closed_form(batch, batch)
        losses.append(float(F.cross_entropy(method.logits(batch), batch["labels"])))
    assert all(b <= a + 1e-6 for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < losses[0] - 1e-3


def test_no_trainable_parameters_and_text_blend_used(tiny_clip, classes, batch):
    method = create_method("lp_pp", tiny_clip, classes, {"iterations": 20})
    info = method.fit_closed_form(batch, batch)
    assert not method.trainable_parameters()
    assert info["train_ce_final"] <= info["train_ce_first"]
    x = normalize(batch["features"])
    expected = x @ method.prototypes.t() + method.alpha * (x @ method.text.t())
    torch.testing.assert_close(method.logits(batch), expected)
