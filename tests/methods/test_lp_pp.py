"""LP++ (Huang et al., CVPR 2024): logits x.v_k + b_k + alpha_k x.t_k. Default: the official code
(FereshteShakeri/FewShot-CLIP-Strong-Baseline, methods/linear_probe_p2.py) -- per-class sums, bias,
alpha_0 = 250 x mean class-mean x.t, SGD momentum 0.9 at 4N / lambda_max, alpha every 10 epochs with
N / (4 max_k sum (x.t_k)^2) and its never-zeroed gradient, best validation epoch. The earlier MM
reading is `solver="mm"`. Expected values are computed here from those formulas, not the module's."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conceptclip.errors import ConfigError
from conceptclip.methods import create_method
from conceptclip.methods.lp_pp import init_alpha, lipschitz_alpha, lipschitz_v, lp_pp_logits, lr_alpha, lr_w
from conceptclip.prompts import normalize


def feature_batch(backbone, n: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"features": torch.randn(n, backbone.embed_dim, generator=gen), "labels": torch.arange(n) % 3}


def _dot(a, b) -> float:
    return sum(x * y for x, y in zip(a, b))


def test_official_init_alpha_and_step_sizes_by_hand():
    x = [[0.6, 0.8], [1.0, 0.0], [0.0, 1.0], [0.8, 0.6], [0.28, 0.96]]
    y = [0, 0, 1, 1, 1]
    t = [[1.0, 0.0], [0.6, 0.8]]
    n = len(x)
    class_means = []
    for k in range(2):
        own = [_dot(xi, t[k]) for xi, yi in zip(x, y) if yi == k]
        class_means.append(sum(own) / len(own))
    alpha0 = 250 * sum(class_means) / 2
    step_a = n / (4 * max(sum(_dot(xi, t[k]) ** 2 for xi in x) for k in range(2)))
    a = sum(xi[0] ** 2 for xi in x)
    d = sum(xi[1] ** 2 for xi in x)
    b = sum(xi[0] * xi[1] for xi in x)
    lam_max = (a + d) / 2 + math.sqrt(((a - d) / 2) ** 2 + b * b)  # of the 2 x 2 X^T X
    step_w = 4 * n / lam_max
    X, Y, T = torch.tensor(x, dtype=torch.float64), torch.tensor(y), torch.tensor(t, dtype=torch.float64)
    assert abs(init_alpha(X, Y, T) - alpha0) < 1e-9
    assert abs(lr_alpha(X, T) - step_a) < 1e-12
    assert abs(lr_w(X) - step_w) < 1e-9
    # three classes with unequal counts: the mean over classes of each class's own mean
    x3 = [[0.6, 0.8], [1.0, 0.0], [0.0, 1.0], [0.8, 0.6], [0.28, 0.96], [0.96, 0.28]]
    y3 = [0, 1, 1, 1, 2, 2]
    t3 = [[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]
    own = [sum(_dot(xi, t3[k]) for xi, yi in zip(x3, y3) if yi == k) / y3.count(k) for k in range(3)]
    got = init_alpha(torch.tensor(x3, dtype=torch.float64), torch.tensor(y3), torch.tensor(t3, dtype=torch.float64))
    assert abs(got - 250 * sum(own) / 3) < 1e-9


def _official_reference(x, y, xv, yv, t, bias, epochs, every=10, momentum=0.9, accumulate=True, last=False):
    """The official loop with explicit gradients: SGD with momentum on (W, b), alpha every `every` epochs."""
    n, c = x.shape[0], t.shape[0]
    onehot = F.one_hot(y, c).double()
    w = onehot.t() @ x
    b = bias.clone()
    own = (x * t[y]).sum(-1)
    alpha = torch.full((c,), 250.0 * float(torch.stack([own[y == k].mean() for k in range(c)]).mean()),
                       dtype=torch.float64)
    step_w = 4 * n / float(torch.linalg.eigvalsh(x.t() @ x).max())
    step_a = n / (4 * float(((x @ t.t()) ** 2).sum(0).max()))
    buf_w = buf_b = None
    grad_a = torch.zeros(c, dtype=torch.float64)
    best = (-1.0, None, None)
    for epoch in range(epochs):
        logits = x @ w.t() + b + alpha * (x @ t.t())
        r = (logits.softmax(-1) - onehot) / n  # d mean-CE / d logits
        g_w, g_b, g_a = r.t() @ x, r.sum(0), (r * (x @ t.t())).sum(0)
        grad_a = grad_a + g_a if accumulate else g_a
        buf_w = g_w if buf_w is None else momentum * buf_w + g_w
        buf_b = g_b if buf_b is None else momentum * buf_b + g_b
        w, b = w - step_w * buf_w, b - step_w * buf_b
        if (epoch + 1) % every == 0:
            alpha = alpha - step_a * grad_a
        acc = float(((xv @ w.t() + b + alpha * (xv @ t.t())).argmax(-1) == yv).double().mean())
        if last or acc >= best[0]:
            best = (acc, epoch, (w, b, alpha))
    return best


@pytest.mark.parametrize("accumulate,last", [(True, False), (False, False), (True, True), (False, True)])
def test_official_training_reproduced_by_hand(tiny_clip, classes, accumulate, last):
    train, val = feature_batch(tiny_clip, 12, seed=0), feature_batch(tiny_clip, 3, seed=5)  # 3 val images: ties
    opts = {"epochs": 35, "alpha_grad": "accumulated" if accumulate else "epoch", "select": "last" if last else "val"}
    method = create_method("lp_pp", tiny_clip, classes, opts)
    torch.manual_seed(11)
    info = method.fit_closed_form(train, val)
    torch.manual_seed(11)
    d = tiny_clip.embed_dim
    bias = torch.empty(3, dtype=torch.float64).uniform_(-1 / math.sqrt(d), 1 / math.sqrt(d))
    x, xv = normalize(train["features"]).double(), normalize(val["features"]).double()
    acc, epoch, (w, b, alpha) = _official_reference(x, train["labels"], xv, val["labels"], method.text.double(), bias,
                                                    35, accumulate=accumulate, last=last)
    assert info["selected_epoch"] == epoch and abs(info["val_accuracy"] - acc) < 1e-12
    torch.testing.assert_close(method.prototypes, w.float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(method.bias, b.float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(method.alpha, alpha.float(), rtol=1e-4, atol=1e-4)


def test_validation_ties_go_to_the_later_epoch(tiny_clip, classes):
    """One validation image (a training image, fitted early): accuracy 1 ties across epochs; `>=` keeps the latest."""
    train = feature_batch(tiny_clip, 12, seed=0)
    val = {"features": train["features"][:1], "labels": train["labels"][:1]}
    method = create_method("lp_pp", tiny_clip, classes, {"epochs": 25})
    torch.manual_seed(3)
    info = method.fit_closed_form(train, val)
    torch.manual_seed(3)
    d = tiny_clip.embed_dim
    bias = torch.empty(3, dtype=torch.float64).uniform_(-1 / math.sqrt(d), 1 / math.sqrt(d))
    x, xv = normalize(train["features"]).double(), normalize(val["features"]).double()
    acc, epoch, _ = _official_reference(x, train["labels"], xv, val["labels"], method.text.double(), bias, 25)
    assert info["selected_epoch"] == epoch and epoch > 0


def test_alpha_steps_use_the_accumulated_gradient(tiny_clip, classes):
    """From the 20th epoch on, the two alpha rules differ (the second step sums 20 epochs' gradients)."""
    train = feature_batch(tiny_clip, 12, seed=0)
    runs = {}
    for rule in ("accumulated", "epoch"):
        method = create_method("lp_pp", tiny_clip, classes, {"epochs": 20, "alpha_grad": rule, "select": "last"})
        torch.manual_seed(0)
        method.fit_closed_form(train, train)
        runs[rule] = method.alpha.clone()
    assert (runs["accumulated"] - runs["epoch"]).abs().max() > 1e-6


def test_official_initialisation_sums_and_alpha0(tiny_clip, classes, batch):
    method = create_method("lp_pp", tiny_clip, classes, {"epochs": 0})
    info = method.fit_closed_form(batch, batch)
    x = normalize(batch["features"])
    t = method.text
    for c in range(3):
        torch.testing.assert_close(method.prototypes[c], x[batch["labels"] == c].sum(0))
    means = [sum(_dot(x[i].tolist(), t[c].tolist()) for i in range(12) if int(batch["labels"][i]) == c) / 4
             for c in range(3)]
    assert abs(info["init_alpha"] - 250 * sum(means) / 3) < 1e-6
    torch.testing.assert_close(method.alpha, torch.full((3,), 250 * sum(means) / 3))
    assert float(method.bias.abs().max()) <= 1 / math.sqrt(tiny_clip.embed_dim)


def test_defaults_and_bad_options(tiny_clip, classes):
    method = create_method("lp_pp", tiny_clip, classes)
    c = method.config
    assert (c.solver, c.epochs, c.alpha_every, c.alpha_grad, c.select, c.momentum, c.iterations, c.init_alpha) == \
        ("official", 300, 10, "accumulated", "val", 0.9, 300, 1.0)
    assert not any(k.startswith("text") for k in method.learned_state())  # recomputed from the class names
    assert create_method("lp_pp", tiny_clip, classes, {"alpha_every": 1}).config.alpha_every == 1
    for opts, match in (({"solver": "lbfgs"}, "solver="), ({"alpha_grad": "sum"}, "alpha_grad="),
                        ({"select": "test"}, "select="), ({"alpha_every": 0}, "alpha_every="), ({"epochs": -1}, "epochs=")):
        with pytest.raises(ConfigError, match=match):
            create_method("lp_pp", tiny_clip, classes, opts)


def test_lipschitz_constants_hand_computed():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    # X^T X = diag(2, 1): lambda_max = 2 -> 2 / (2 * 3)
    assert abs(lipschitz_v(x) - 1 / 3) < 1e-12
    x2 = torch.tensor([[0.6, 0.8], [0.8, 0.6], [0.0, 1.0]], dtype=torch.float64)
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    # x . t_0 = (0.6, 0.8, 0) -> 1.0; x . t_1 = (1.0, 0.96, 0.8) -> 1 + 0.9216 + 0.64 = 2.5616 -> 2.5616 / 6
    assert abs(lipschitz_alpha(x2, text) - 2.5616 / 6) < 1e-12


@pytest.mark.parametrize("n", [12, 3])
def test_mm_sweeps_by_hand(tiny_clip, classes, n):
    """Two block sweeps written out: V <- V - grad_V / L_V, then alpha <- alpha - grad_alpha / L_alpha."""
    train = feature_batch(tiny_clip, n, seed=0)
    method = create_method("lp_pp", tiny_clip, classes, {"solver": "mm", "iterations": 2, "init_alpha": 0.5})
    method.fit_closed_form(train, train)
    x, y, t = normalize(train["features"]).double(), train["labels"], method.text.double()
    n = x.shape[0]
    onehot = F.one_hot(y, 3).double()
    v = torch.stack([x[y == k].mean(0) for k in range(3)])
    alpha = torch.full((3,), 0.5, dtype=torch.float64)
    lv = float(torch.linalg.eigvalsh(x.t() @ x).max()) / (2 * n)
    la = float(((x @ t.t()) ** 2).sum(0).max()) / (2 * n)
    for _ in range(2):
        p = (x @ v.t() + alpha * (x @ t.t())).softmax(-1)
        v = v - ((p - onehot).t() @ x / n) / lv
        p = (x @ v.t() + alpha * (x @ t.t())).softmax(-1)
        alpha = alpha - ((p - onehot) * (x @ t.t())).sum(0) / n / la
    torch.testing.assert_close(method.prototypes.double(), v, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(method.alpha.double(), alpha, rtol=1e-4, atol=1e-6)
    assert float(method.bias.abs().max()) == 0.0


def test_logits_hand_computed():
    x = torch.tensor([[1.0, 0.0]])
    v = torch.tensor([[0.5, 0.0], [0.0, 2.0]])
    t = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    alpha = torch.tensor([3.0, 0.25])
    # class 0: 0.5 + 3 * 0 = 0.5; class 1: 0 + 0.25 * 1 = 0.25
    assert torch.equal(lp_pp_logits(x, v, alpha, t), torch.tensor([[0.5, 0.25]]))


def test_mm_initialisation_is_class_means_and_unit_alpha(tiny_clip, classes, batch):
    method = create_method("lp_pp", tiny_clip, classes, {"solver": "mm", "iterations": 0})
    method.fit_closed_form(batch, batch)
    x = normalize(batch["features"])
    for c in range(3):
        torch.testing.assert_close(method.prototypes[c], x[batch["labels"] == c].mean(0))
    assert torch.equal(method.alpha, torch.ones(3))


def test_mm_steps_never_increase_the_training_loss(tiny_clip, classes, batch):
    losses = []
    for it in range(0, 8):
        method = create_method("lp_pp", tiny_clip, classes, {"solver": "mm", "iterations": it})
        method.fit_closed_form(batch, batch)
        losses.append(float(F.cross_entropy(method.logits(batch), batch["labels"])))
    assert all(b <= a + 1e-6 for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < losses[0] - 1e-3


@pytest.mark.parametrize("solver", ["official", "mm"])
def test_no_trainable_parameters_and_text_blend_used(tiny_clip, classes, batch, solver):
    method = create_method("lp_pp", tiny_clip, classes, {"solver": solver, "iterations": 20, "epochs": 20})
    info = method.fit_closed_form(batch, batch)
    assert not method.trainable_parameters()
    assert info["train_ce_final"] <= info["train_ce_first"]
    x = normalize(batch["features"])
    expected = x @ method.prototypes.t() + method.bias + method.alpha * (x @ method.text.t())
    torch.testing.assert_close(method.logits(batch), expected)
