"""ProGrad: the CE gradient is projected off the KL-to-zero-shot gradient when they conflict
(Zhu et al., ICCV 2023, Eq. 5), through `Method.backward`."""

from __future__ import annotations

import math

import torch

from conceptclip.methods import create_method
from conceptclip.methods.prograd import kl_to_zeroshot, project_gradient


def test_projection_hand_computed():
    g_d, g_g = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    # dot = -1 < 0, ||g_g||^2 = 2: g_d - (-1 / 2) g_g = [0.5, 0.5], orthogonal to g_g
    out = project_gradient(g_d, g_g)
    assert torch.allclose(out, torch.tensor([0.5, 0.5]))
    assert abs(float(out @ g_g)) < 1e-7
    # lambda = 0.5 removes half of the conflicting component: [1, 0] - 0.5 * (-0.5) * [-1, 1] = [0.75, 0.25]
    assert torch.allclose(project_gradient(g_d, g_g, lam=0.5), torch.tensor([0.75, 0.25]))


def test_agreeing_or_zero_general_gradient_is_kept():
    g_d = torch.tensor([1.0, 2.0])
    assert torch.equal(project_gradient(g_d, torch.tensor([1.0, 0.0])), g_d)
    assert torch.equal(project_gradient(g_d, torch.zeros(2)), g_d)


def test_kl_to_zeroshot_hand_computed():
    logits = torch.tensor([[0.0, 0.0]])
    zs = torch.tensor([[math.log(3.0), 0.0]])  # p_zs = (0.75, 0.25), p = (0.5, 0.5)
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert abs(float(kl_to_zeroshot(logits, zs)) - expected) < 1e-6
    # T = 2: p_zs = softmax(ln(3) / 2, 0) = (sqrt3, 1) / (sqrt3 + 1); times T^2 = 4
    q = math.sqrt(3) / (math.sqrt(3) + 1)
    expected_t2 = 4 * (q * math.log(q / 0.5) + (1 - q) * math.log((1 - q) / 0.5))
    assert abs(float(kl_to_zeroshot(logits, zs, temperature=2.0)) - expected_t2) < 1e-6


def _grads(method, batch):
    params = method.trainable_parameters()
    terms = method.loss(batch)
    g_d = torch.autograd.grad(terms["loss"], params, retain_graph=True)[0].reshape(-1)
    g_g = torch.autograd.grad(terms["kl"], params)[0].reshape(-1)
    return g_d, g_g


def test_backward_writes_the_projected_gradient(tiny_clip, classes, batch):
    conflicts = 0
    for seed in range(6):
        method = create_method("prograd", tiny_clip, classes)
        with torch.no_grad():
            method.prompt.ctx.add_(0.5 * torch.randn(method.prompt.ctx.shape, generator=torch.Generator().manual_seed(seed)))
        g_d, g_g = _grads(method, batch)
        method.zero_grad(set_to_none=True)
        method.backward(method.loss(batch), lambda t: t.backward())
        got = method.prompt.ctx.grad.reshape(-1)
        torch.testing.assert_close(got, project_gradient(g_d, g_g), rtol=1e-4, atol=1e-6)
        if float(g_d @ g_g) < 0:
            conflicts += 1
            assert abs(float(got @ g_g)) < 1e-4 * float(got.norm() * g_g.norm()) + 1e-9
            assert not torch.allclose(got, g_d)
        else:
            torch.testing.assert_close(got, g_d, rtol=1e-5, atol=1e-7)
    assert conflicts > 0, "no seed produced a conflicting gradient; the projection branch went untested"
