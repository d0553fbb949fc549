"""DEAL's regularisers train the model: the heat maps are differentiable Grad-CAM maps, so R_disen and
R_local have non-zero gradients in the trained parameters they depend on, equal to finite
differences; with detached maps (as the reference implementation computes them) they have none. By
default (maps w.r.t. the raw category name and concept phrases, as the paper) the explained texts
come from the frozen text tower, so the terms reach the image adapter only; with
explain_prompts="template" they also reach the prompt context. Gradients flow only into trainable
parameters."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from deal_helpers import CONCEPTS, make_deal, token_batch

TEMPLATE = {"explain_prompts": "template"}
REACHED = {"raw": ["adapter.linear.bias", "adapter.linear.weight"],
           "template": ["adapter.linear.bias", "adapter.linear.weight", "prompt.ctx"]}


def trained(method) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in method.named_parameters() if p.requires_grad}


def raw_text(backbone) -> torch.Tensor:
    """The raw class names then the raw concept phrases, encoded and normalised here."""
    texts = list(CONCEPTS) + [x for phrases in CONCEPTS.values() for x in phrases]
    with torch.no_grad():
        return F.normalize(backbone.encode_texts(texts).float(), dim=-1)


def test_trained_parameters_are_context_and_adapter(tiny_clip):
    method = make_deal(tiny_clip)
    assert sorted(trained(method)) == ["adapter.linear.bias", "adapter.linear.weight", "prompt.ctx"]
    assert not any(p.requires_grad for p in method.backbone.parameters())
    assert not method.raw_text.requires_grad
    method.loss(token_batch(tiny_clip.embed_dim))["loss"].backward()
    assert all(p.grad is None for p in method.backbone.parameters())  # only trainable parameters get gradients


@pytest.mark.parametrize("mode", ["raw", "template"])
def test_regularisers_have_gradients_in_the_parameters_they_depend_on(tiny_clip, mode):
    method = make_deal(tiny_clip, {"explain_prompts": mode})
    batch = token_batch(tiny_clip.embed_dim)
    maps = method.concept_maps(batch, batch["labels"], create_graph=True)
    r_disen, r_local = method.regularisers(maps)
    params = trained(method)
    for name, r in (("R_disen", r_disen), ("R_local", r_local)):
        grads = torch.autograd.grad(r, list(params.values()), retain_graph=True, allow_unused=True)
        reached = sorted(p for p, g in zip(params, grads) if g is not None and float(g.norm()) > 1e-4)
        assert reached == REACHED[mode], f"{name} reaches {reached}"
        assert all(torch.isfinite(g).all() for g in grads if g is not None)


def test_detached_maps_as_in_the_reference_code_carry_no_gradient(tiny_clip):
    """With detached maps both terms are constants: the loss gradient would be L_contr's alone."""
    method = make_deal(tiny_clip)
    batch = token_batch(tiny_clip.embed_dim)
    detached = method.concept_maps(batch, batch["labels"], create_graph=False)
    assert not detached.concepts.requires_grad and not detached.category.requires_grad
    r_disen, r_local = method.regularisers(detached)
    assert not r_disen.requires_grad and not r_local.requires_grad
    # ...while DEAL's own loss differs from the L_contr-only loss by exactly the regularisers' gradient
    params = [trained(method)[n] for n in REACHED["raw"]]
    g_deal = torch.autograd.grad(method.loss(batch)["loss"], params)
    method.config.lambda_disen = method.config.lambda_local = 0.0
    g_contr = torch.autograd.grad(method.loss(batch)["loss"], params)
    maps = method.concept_maps(batch, batch["labels"], create_graph=True)
    g_r = torch.autograd.grad(sum(method.regularisers(maps)), params)
    for a, b, r in zip(g_deal, g_contr, g_r):
        assert float((a - b).norm()) > 1e-4
        torch.testing.assert_close(a - b, r, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["raw", "template"])
def test_regulariser_gradients_match_finite_differences(tiny_clip, mode):
    method = make_deal(tiny_clip, {"explain_prompts": mode})
    batch = token_batch(tiny_clip.embed_dim, seed=3)
    params = [trained(method)[n] for n in REACHED[mode]]
    gen = torch.Generator().manual_seed(7)
    direction = [F.normalize(torch.randn(p.numel(), generator=gen), dim=0).reshape(p.shape) for p in params]

    def value() -> torch.Tensor:
        maps = method.concept_maps(batch, batch["labels"], create_graph=True)
        r_disen, r_local = method.regularisers(maps)
        return r_disen + r_local

    grads = torch.autograd.grad(value(), params)
    analytic = sum(float((g * d).sum()) for g, d in zip(grads, direction))
    eps = 1e-3
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.add_(eps * d)
    plus = float(value().detach())
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.sub_(2 * eps * d)
    minus = float(value().detach())
    numeric = (plus - minus) / (2 * eps)
    assert abs(analytic) > 1e-3
    assert abs(numeric - analytic) <= 1e-2 * abs(analytic)


@pytest.mark.parametrize("mode", ["raw", "template"])
def test_gradcam_maps_equal_the_closed_form_on_pooled_tokens(tiny_clip, mode):
    """For y = s cos(g, t) with g the mean of the N adapted tokens A_ij, Grad-CAM is
    ReLU(sum_d alpha_d A_ij,d) with alpha = dy/dg / N and dy/dg = s (t^ - (g^.t^) g^) / |g|; t is the
    raw class name / concept phrase by default, the category / concept prompt with "template"."""
    method = make_deal(tiny_clip, {"explain_prompts": mode})
    batch = token_batch(tiny_clip.embed_dim, seed=5)
    maps = method.concept_maps(batch, batch["labels"])
    with torch.no_grad():
        text = raw_text(tiny_clip) if mode == "raw" else method.all_text_features()
        a = method.adapter(batch["patches"])  # (B, N, D)
        g = a.mean(1)
        gh = F.normalize(g, dim=-1)
        s = tiny_clip.logit_scale
        b, n, _ = a.shape
        for i in range(b):
            y = int(batch["labels"][i])
            rows = [y] + [method.n_classes + int(r) for r in method.concept_index[y]]
            for j, row in enumerate(rows):
                t = text[row]
                dydg = s * (t - (gh[i] @ t) * gh[i]) / g[i].norm()
                cam = torch.relu(a[i] @ dydg / n).reshape(4, 4)
                got = maps.category[i] if j == 0 else maps.concepts[i, j - 1]
                torch.testing.assert_close(got, cam, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("lambdas", [None, (0.5, 2.0), (0.5, 0.0), (0.0, 0.5)])
def test_loss_is_eq5_written_out(tiny_clip, lambdas):
    """Risk = L_contr (Eq. 2) + lambda R_disen (Eq. 3) + gamma R_local (Eq. 4), every term by loops;
    with no options lambda = gamma = 1 (the paper gives no values: ours, docs/deal.md)."""
    lam, gamma = lambdas or (1.0, 1.0)
    method = make_deal(tiny_clip, {"lambda_disen": lam, "lambda_local": gamma} if lambdas else {})
    batch = token_batch(tiny_clip.embed_dim)
    terms = method.loss(batch)
    maps = method.concept_maps(batch, batch["labels"])
    with torch.no_grad():
        scores = method.logits(batch).double()
    labels = batch["labels"].tolist()
    n = len(labels)
    contr = sum(-math.log(math.exp(scores[i, labels[i]]) / sum(math.exp(scores[i, labels[m]]) for m in range(n)))
                for i in range(n)) / n

    def dist(p: list[float]) -> list[float]:
        pos = [max(v, 0.0) for v in p]
        return [v / (sum(pos) + 1e-8) for v in pos]

    r_disen = r_local = 0.0
    for i in range(n):
        k_real = len(CONCEPTS[method.classnames[labels[i]]])
        h = [dist(maps.concepts[i, k].flatten().tolist()) for k in range(k_real)]
        cat = dist(maps.category[i].flatten().tolist())
        for k in range(k_real):
            for j in range(k_real):
                if j != k:
                    r_disen -= sum(abs(x - z) for x, z in zip(h[k], h[j])) / n
        r_local += sum(abs(sum(h[k][p] for k in range(k_real)) / k_real - cat[p]) for p in range(len(cat))) / n
    assert float(terms["contr"]) == pytest.approx(contr, rel=1e-5)
    assert float(terms["r_disen"]) == pytest.approx(r_disen, rel=1e-5)
    assert float(terms["r_local"]) == pytest.approx(r_local, rel=1e-5)
    assert float(terms["loss"].detach()) == pytest.approx(contr + lam * r_disen + gamma * r_local, rel=1e-5)
