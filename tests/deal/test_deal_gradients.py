"""DEAL's regularisers train the model: the heat maps are differentiable Grad-CAM maps, so R_disen and
R_local have non-zero gradients in every trained parameter (prompt context, image adapter), equal to
finite differences; with detached maps (the reference implementation) they have none."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from conceptclip.methods.deal import disentangle_loss, localize_loss, normalize_heatmaps
from deal_helpers import make_deal, token_batch


def trained(method) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in method.named_parameters() if p.requires_grad}


def test_trained_parameters_are_context_and_adapter(tiny_clip):
    method = make_deal(tiny_clip)
    assert sorted(trained(method)) == ["adapter.linear.bias", "adapter.linear.weight", "prompt.ctx"]
    assert not any(p.requires_grad for p in method.backbone.parameters())


def test_regularisers_have_nonzero_gradients_in_every_trained_parameter(tiny_clip):
    method = make_deal(tiny_clip)
    batch = token_batch(tiny_clip.embed_dim)
    maps = method.concept_maps(batch, batch["labels"], create_graph=True)
    r_disen, r_local = method.regularisers(maps)
    params = trained(method)
    for name, r in (("R_disen", r_disen), ("R_local", r_local)):
        grads = torch.autograd.grad(r, list(params.values()), retain_graph=True, allow_unused=True)
        for pname, g in zip(params, grads):
            assert g is not None, f"{name} does not reach {pname}"
            assert torch.isfinite(g).all()
            assert float(g.norm()) > 1e-4, f"{name} has a zero gradient in {pname}"


def test_detached_maps_as_in_the_reference_code_carry_no_gradient(tiny_clip):
    """With detached maps both terms are constants: the loss gradient would be the CE's alone."""
    method = make_deal(tiny_clip)
    batch = token_batch(tiny_clip.embed_dim)
    detached = method.concept_maps(batch, batch["labels"], create_graph=False)
    assert not detached.concepts.requires_grad and not detached.category.requires_grad
    r_disen, r_local = method.regularisers(detached)
    assert not r_disen.requires_grad and not r_local.requires_grad
    # ...while DEAL's own loss differs from the CE-only loss by exactly the regularisers' gradient
    params = list(trained(method).values())
    g_deal = torch.autograd.grad(method.loss(batch)["loss"], params)
    method.config.lambda_disen = method.config.lambda_local = 0.0
    g_ce = torch.autograd.grad(method.loss(batch)["loss"], params)
    maps = method.concept_maps(batch, batch["labels"], create_graph=True)
    g_r = torch.autograd.grad(sum(method.regularisers(maps)), params)
    for a, b, r in zip(g_deal, g_ce, g_r):
        assert float((a - b).norm()) > 1e-4
        torch.testing.assert_close(a - b, r, rtol=1e-4, atol=1e-6)


def test_regulariser_gradients_match_finite_differences(tiny_clip):
    method = make_deal(tiny_clip)
    batch = token_batch(tiny_clip.embed_dim, seed=3)
    params = list(trained(method).values())
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


def test_gradcam_maps_equal_the_closed_form_on_pooled_tokens(tiny_clip):
    """For y = s cos(g, t) with g the mean of the N adapted tokens A_ij, Grad-CAM is
    ReLU(sum_d alpha_d A_ij,d) with alpha = dy/dg / N and dy/dg = s (t^ - (g^.t^) g^) / |g|."""
    method = make_deal(tiny_clip)
    batch = token_batch(tiny_clip.embed_dim, seed=5)
    maps = method.concept_maps(batch, batch["labels"])
    with torch.no_grad():
        text = method.all_text_features()
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


def test_loss_is_ce_plus_weighted_regularisers(tiny_clip):
    method = make_deal(tiny_clip, {"lambda_disen": 0.5, "lambda_local": 2.0})
    batch = token_batch(tiny_clip.embed_dim)
    terms = method.loss(batch)
    maps = method.concept_maps(batch, batch["labels"])
    con = normalize_heatmaps(maps.concepts)
    cat = normalize_heatmaps(maps.category)
    rd, rl = disentangle_loss(con, maps.mask), localize_loss(con, cat, maps.mask)
    ce = F.cross_entropy(method.logits(batch), batch["labels"])
    torch.testing.assert_close(terms["r_disen"], rd.detach())
    torch.testing.assert_close(terms["r_local"], rl.detach())
    torch.testing.assert_close(terms["loss"].detach(), (ce + 0.5 * rd + 2.0 * rl).detach(), rtol=1e-5, atol=1e-6)
    assert -2.0 <= float(rd) < 0.0 and 0.0 < float(rl) <= 2.0
