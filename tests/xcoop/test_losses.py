"""XCoOp's terms against hand-computed values: L_T (Eq. 4), L_P (Eq. 5, tau = 0.9), z^G / z^L and
L_IPA (Eqs. 6-8, lambda = 0.1), and the total (Eq. 9) as the method assembles it."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from conceptclip.methods.xcoop import global_logits, local_logits, prompt_alignment_loss, token_alignment_loss


def test_token_alignment_is_the_mean_squared_distance_over_aligned_tokens():
    context = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    targets = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 3.0]])
    # ||(1,0)||^2 = 1, ||(0,2)||^2 = 4, ||(1,-2)||^2 = 5 -> (1 + 4 + 5) / 3
    assert math.isclose(float(token_alignment_loss(context, targets)), 10 / 3, rel_tol=1e-6)
    assert float(token_alignment_loss(targets, targets)) == 0.0


def test_prompt_alignment_hand_computed_with_tau_0_9():
    soft = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    hard = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    # cosines: w0.h0 = 0.6, w0.h1 = 0, w1.h0 = 1.0, w1.h1 = 0.8
    row0 = -math.log(math.exp(0.6 / 0.9) / (math.exp(0.6 / 0.9) + math.exp(0.0)))  # log(1 + e^{-2/3}) = 0.414370
    row1 = -math.log(math.exp(0.8 / 0.9) / (math.exp(1.0 / 0.9) + math.exp(0.8 / 0.9)))  # log(1 + e^{2/9}) = 0.810418
    expected = (row0 + row1) / 2
    assert math.isclose(expected, 0.612394, abs_tol=1e-6)
    assert math.isclose(float(prompt_alignment_loss(soft, hard, 0.9)), expected, rel_tol=1e-6)
    # cosine-based: scaling the features changes nothing; identical orthogonal prompts give log(1 + e^{-1/tau})
    assert math.isclose(float(prompt_alignment_loss(3 * soft, 0.5 * hard, 0.9)), expected, rel_tol=1e-6)
    eye = torch.eye(2)
    assert math.isclose(float(prompt_alignment_loss(eye, eye, 0.9)), math.log(1 + math.exp(-1 / 0.9)), rel_tol=1e-6)


def test_global_and_local_logits_hand_computed():
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    patches = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # one image, two patches
    # cos(p1, w0) = 1, cos(p2, w0) = 0 -> mean 0.5, max 1; cos(p1, w1) = 0.6, cos(p2, w1) = 0.8 -> mean 0.7, max 0.8
    torch.testing.assert_close(local_logits(patches, text, 10.0, "mean"), torch.tensor([[5.0, 7.0]]))
    torch.testing.assert_close(local_logits(patches, text, 10.0, "max"), torch.tensor([[10.0, 8.0]]))
    # global feature (3, 4): cos with w0 = 0.6, with w1 = 0.36 + 0.64 = 1.0
    torch.testing.assert_close(global_logits(torch.tensor([[3.0, 4.0]]), text, 10.0), torch.tensor([[6.0, 10.0]]))


def test_total_loss_is_ipa_plus_token_plus_prompt_terms(make_xcoop, batch, tiny_clip):
    method = make_xcoop()
    terms = method.loss(batch)
    text = F.normalize(method.prompt(), dim=-1)
    s = tiny_clip.logit_scale
    ce = F.cross_entropy(s * F.normalize(batch["features"], dim=-1) @ text.t(), batch["labels"])
    sim = F.normalize(batch["patches"], dim=-1) @ text.t()
    local = F.cross_entropy(s * sim.mean(1), batch["labels"])
    lt = (method.prompt.ctx - method.token_targets).pow(2).sum(-1).mean()
    hard = F.normalize(tiny_clip.encode_texts(list(method.knowledge.clinical_prompts.values())), dim=-1)
    lp = F.cross_entropy(text @ hard.t() / 0.9, torch.arange(2))
    for name, value in (("ce", ce), ("local", local), ("token", lt), ("prompt", lp)):
        torch.testing.assert_close(terms[name], value.detach(), rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(terms["ipa"], (ce + 0.1 * local).detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["loss"], ce + 0.1 * local + lt + lp, rtol=1e-5, atol=1e-6)
    assert float(lt.detach()) > 0 and float(local.detach()) > 0


def test_switched_off_terms_are_reported_but_not_in_the_total_nor_the_gradient(make_xcoop, batch):
    full = make_xcoop()
    full_terms = full.loss(batch)
    for switch, name, weight in (("token_alignment", "token", 1.0), ("prompt_alignment", "prompt", 1.0),
                                 ("local_alignment", "local", 0.1)):
        method = make_xcoop(**{switch: False})
        method.prompt.ctx.data.copy_(full.prompt.ctx.data)
        terms = method.loss(batch)
        torch.testing.assert_close(terms[name], full_terms[name])  # still monitored
        torch.testing.assert_close(terms["loss"], full_terms["loss"] - weight * full_terms[name], rtol=1e-5, atol=1e-6)
        terms["loss"].backward()
        # its gradient is the gradient of the full total minus the switched-off term's
        ref = make_xcoop()
        ref.prompt.ctx.data.copy_(full.prompt.ctx.data)
        (ref.loss(batch)["loss"] - weight * _term(ref, batch, name)).backward()
        torch.testing.assert_close(method.prompt.ctx.grad, ref.prompt.ctx.grad, rtol=1e-4, atol=1e-6)
        assert float((method.prompt.ctx.grad - _grad_of_full(full, batch)).abs().max()) > 1e-6, name


def _grad_of_full(method, batch) -> torch.Tensor:
    method.prompt.ctx.grad = None
    method.loss(batch)["loss"].backward()
    return method.prompt.ctx.grad.clone()


def _term(method, batch, name: str) -> torch.Tensor:
    """The differentiable L_T, L_P or local CE of `method`, written out from the equations."""
    if name == "token":
        return (method.prompt.ctx - method.token_targets).pow(2).sum(-1).mean()
    text = F.normalize(method.prompt(), dim=-1)
    if name == "prompt":
        return F.cross_entropy(text @ method.hard_features.t() / 0.9, torch.arange(text.shape[0]))
    s = method.backbone.logit_scale.detach()
    return F.cross_entropy(s * (F.normalize(batch["patches"], dim=-1) @ text.t()).mean(1), batch["labels"])


def test_weights_and_pooling_options_enter_the_total(make_xcoop, batch):
    base = make_xcoop()
    terms = base.loss(batch)
    heavy = make_xcoop(weight_token=2.0, weight_prompt=0.5, lam=1.0)
    heavy.prompt.ctx.data.copy_(base.prompt.ctx.data)
    h = heavy.loss(batch)
    expected = terms["ce"] + 1.0 * terms["local"] + 2.0 * terms["token"] + 0.5 * terms["prompt"]
    torch.testing.assert_close(h["loss"].detach(), expected, rtol=1e-5, atol=1e-6)
    maxed = make_xcoop(local_pool="max")
    maxed.prompt.ctx.data.copy_(base.prompt.ctx.data)
    text = F.normalize(maxed.prompt(), dim=-1).detach()
    s = maxed.backbone.logit_scale
    want = F.cross_entropy(s * (F.normalize(batch["patches"], dim=-1) @ text.t()).amax(1), batch["labels"])
    torch.testing.assert_close(maxed.loss(batch)["local"], want, rtol=1e-5, atol=1e-6)
