"""LP++ (Huang, Shakeri, Dolz, Boudiaf, Bahig, Ben Ayed, "LP++: A Surprisingly Strong Linear Probe
for Few-Shot CLIP", CVPR 2024).

The linear probe with class weights that blend a visual prototype with the class's text embedding
through a learnable class-wise multiplier (the paper's model),

    l_k(x) = v_k . x + b_k + alpha_k (x . t_k),   p(y = k | x) = softmax_k l_k(x)

on L2-normalised features x and text embeddings t_k (the dataset's template), trained with
cross-entropy with data-derived step sizes. Where the paper is not available here the official
code decides (GitHub FereshteShakeri/FewShot-CLIP-Strong-Baseline, methods/linear_probe_p2.py,
`LinearProbe_P2.forward`, configs/base.yaml) -- the default `solver="official"`:

- init: v_k = SUM of class k's shot features (`compute_centroids`), a bias b (nn.Linear's default
  init, U(-1/sqrt(D), 1/sqrt(D))); one alpha per class, all equal to
      alpha_0 = 250 * mean_k [ mean_{i: y_i = k} x_i . t_k ]              (`calculate_init_alpha`)
- V, b: SGD with momentum 0.9, full batch, lr_w = 4 N / lambda_max(X^T X)        (`calculate_lr_w`)
- alpha: every 10 epochs alpha <- alpha - lr_a * grad, lr_a = N / (4 max_k sum_i (x_i . t_k)^2)
  (`calculate_lr_alpha`); alpha's gradient is never zeroed in the official code, so each step uses
  the gradient accumulated since the first epoch (`alpha_grad="accumulated"`; "epoch" uses the
  current epoch's gradient only)
- 300 epochs (base.yaml `train_epoch`); the model of the epoch with the best validation accuracy
  (ties: the later epoch) is kept (`select="val"`; "last" keeps the final epoch).

`solver="mm"` keeps this project's earlier reading: block-coordinate majorise-minimise steps with
1 / L_V, L_V = lambda_max(X^T X) / (2N), and 1 / L_a, L_a = max_k sum_n (x_n . t_k)^2 / (2N), from
class means, alpha = `init_alpha`, no bias, `iterations` sweeps. Full-batch, on cached features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from conceptclip.errors import ConfigError
from conceptclip.methods import register_method
from conceptclip.methods.base import Method, MethodConfig, option
from conceptclip.prompts import class_text_features, normalize


LPPP_CODE = "code: FereshteShakeri/FewShot-CLIP-Strong-Baseline methods/linear_probe_p2.py"
LPPP_CONFIG = "code: FereshteShakeri/FewShot-CLIP-Strong-Baseline configs/base.yaml"


@dataclass
class LPPPConfig(MethodConfig):
    solver: str = option("official", "official (linear_probe_p2.py) | mm (earlier reading)", LPPP_CODE)
    epochs: int = option(300, "official: full-batch epochs (base.yaml train_epoch)", LPPP_CONFIG)
    alpha_every: int = option(10, "official: alpha steps every this many epochs", LPPP_CODE)
    alpha_grad: str = option("accumulated", "official: accumulated since the start | epoch: this epoch's only",
                             LPPP_CODE)
    select: str = option("val", "official: best validation accuracy (ties: later epoch) | last", LPPP_CODE)
    momentum: float = option(0.9, "official: SGD momentum of V and b", LPPP_CODE)
    iterations: int = option(300, "mm: block-coordinate sweeps over the full batch", "ours")
    init_alpha: float = option(1.0, "mm: initial alpha", "ours")


def lipschitz_v(x: torch.Tensor) -> float:
    """mm: L_V = lambda_max(X^T X) / (2N) for mean cross-entropy over N rows of X (N, D)."""
    return float(torch.linalg.eigvalsh(x.t().double() @ x.double()).max()) / (2 * x.shape[0])


def lipschitz_alpha(x: torch.Tensor, text: torch.Tensor) -> float:
    """mm: L_alpha = max_k sum_n (x_n . t_k)^2 / (2N)."""
    return float((x.double() @ text.double().t()).pow(2).sum(0).max()) / (2 * x.shape[0])


def lr_w(x: torch.Tensor) -> float:
    """official: 4 N / lambda_max(X^T X)."""
    return 4 * x.shape[0] / float(torch.linalg.eigvalsh(x.t().double() @ x.double()).max())


def lr_alpha(x: torch.Tensor, text: torch.Tensor) -> float:
    """official: N / (4 max_k sum_i (x_i . t_k)^2)."""
    return x.shape[0] / (4 * float((x.double() @ text.double().t()).pow(2).sum(0).max()))


def init_alpha(x: torch.Tensor, labels: torch.Tensor, text: torch.Tensor) -> float:
    """official: 250 * mean over classes of the class-mean of x_i . t_{y_i} (classes without shots skipped)."""
    own = (x.double() * text.double()[labels]).sum(-1)  # x_i . t_{y_i}
    means = [own[labels == k].mean() for k in labels.unique()]
    return 250.0 * float(torch.stack(means).mean())


def lp_pp_logits(x: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor, text: torch.Tensor,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
    """l_nk = x_n . v_k + b_k + alpha_k x_n . t_k."""
    out = x @ v.t() + alpha * (x @ text.t())
    return out if bias is None else out + bias


@register_method("lp_pp")
class LPPP(Method):
    Config = LPPPConfig

    def __init__(self, backbone, classnames, config=None, **kw) -> None:
        super().__init__(backbone, classnames, config, **kw)
        c = self.config
        if self.multilabel:
            raise ConfigError("lp_pp supports single-label datasets only")
        for name, allowed in (("solver", ("official", "mm")), ("alpha_grad", ("accumulated", "epoch")),
                              ("select", ("val", "last"))):
            if getattr(c, name) not in allowed:
                raise ConfigError(f"lp_pp {name}={getattr(c, name)!r}: expected one of {list(allowed)}")
        for name in ("iterations", "epochs"):
            if getattr(c, name) < 0:
                raise ConfigError(f"lp_pp {name}={getattr(c, name)}: expected a non-negative integer")
        if c.alpha_every < 1:
            raise ConfigError(f"lp_pp alpha_every={c.alpha_every}: expected a positive integer")
        n, d = len(self.classnames), backbone.embed_dim
        self.register_buffer("text", class_text_features(backbone, self.classnames, [self.template]), persistent=False)
        self.register_buffer("prototypes", torch.zeros(n, d))
        self.register_buffer("bias", torch.zeros(n))
        self.register_buffer("alpha", torch.full((n,), float(c.init_alpha)))

    def fit_closed_form(self, train: dict[str, torch.Tensor], val: dict[str, torch.Tensor]) -> dict[str, Any]:
        x = normalize(train["features"].float()).to(self.text.device)
        y = train["labels"].long().to(self.text.device)
        if self.config.solver == "mm":
            return self._fit_mm(x, y)
        xv = normalize(val["features"].float()).to(self.text.device)
        yv = val["labels"].long().to(self.text.device)
        return self._fit_official(x, y, xv, yv)

    def _fit_official(self, x, y, xv, yv) -> dict[str, Any]:
        c = self.config
        n, d = len(self.classnames), x.shape[1]
        x, xv, text = x.double(), xv.double(), self.text.double()
        onehot = F.one_hot(y, n).double()
        w = (onehot.t() @ x).requires_grad_(True)  # per-class sums (compute_centroids)
        bound = 1.0 / math.sqrt(d)  # nn.Linear's default bias init
        b = torch.empty(n, dtype=torch.float64).uniform_(-bound, bound).to(x.device).requires_grad_(True)
        a0 = init_alpha(x, y, text)
        alpha = torch.full((n,), a0, dtype=torch.float64, device=x.device, requires_grad=True)
        step_w, step_a = lr_w(x), lr_alpha(x, text)
        opt = torch.optim.SGD([w, b], lr=step_w, momentum=c.momentum)
        best = (-1.0, None, None)
        first = final = None
        for epoch in range(c.epochs):
            loss = F.cross_entropy(lp_pp_logits(x, w, alpha, text, b), y)
            first = loss.item() if first is None else first
            opt.zero_grad()  # zeros V and b only: alpha's gradient accumulates (official)
            if c.alpha_grad == "epoch":
                alpha.grad = None
            loss.backward()
            opt.step()
            if (epoch + 1) % c.alpha_every == 0:
                with torch.no_grad():
                    alpha -= step_a * alpha.grad
            final = loss.item()
            with torch.no_grad():
                acc = float((lp_pp_logits(xv, w, alpha, text, b).argmax(-1) == yv).double().mean()) if len(yv) else 0.0
            if c.select == "last" or acc >= best[0]:
                best = (acc, epoch, (w.detach().clone(), b.detach().clone(), alpha.detach().clone()))
        if best[2] is None:  # zero epochs: the initialisation
            best = (float("nan"), None, (w.detach(), b.detach(), alpha.detach()))
        self.prototypes.copy_(best[2][0].float())
        self.bias.copy_(best[2][1].float())
        self.alpha.copy_(best[2][2].float())
        return {"solver": "official", "init_alpha": a0, "lr_w": step_w, "lr_alpha": step_a, "epochs": c.epochs,
                "selected_epoch": best[1], "val_accuracy": best[0], "train_ce_first": first, "train_ce_final": final}

    def _fit_mm(self, x, y) -> dict[str, Any]:
        n = len(self.classnames)
        onehot = F.one_hot(y, n).float()
        counts = onehot.sum(0)
        v = (onehot.t() @ x) / counts.clamp_min(1).unsqueeze(1)  # class means (absent classes: 0)
        alpha = torch.full((n,), float(self.config.init_alpha), device=x.device)
        text = self.text.float()
        lv, la = lipschitz_v(x), lipschitz_alpha(x, text)
        xt = x @ text.t()
        first = None
        for _ in range(self.config.iterations):
            p = lp_pp_logits(x, v, alpha, text).softmax(-1)
            v = v - ((p - onehot).t() @ x / x.shape[0]) / lv  # V block
            p = lp_pp_logits(x, v, alpha, text).softmax(-1)
            alpha = alpha - ((p - onehot) * xt).mean(0) / la  # alpha block
            if first is None:
                first = float(F.cross_entropy(lp_pp_logits(x, v, alpha, text), y))
        self.prototypes.copy_(v)
        self.bias.zero_()
        self.alpha.copy_(alpha)
        final = float(F.cross_entropy(lp_pp_logits(x, v, alpha, text), y))
        return {"solver": "mm", "L_V": lv, "L_alpha": la, "iterations": self.config.iterations,
                "train_ce_first": first, "train_ce_final": final}

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return lp_pp_logits(normalize(batch["features"].float()), self.prototypes, self.alpha, self.text.float(),
                            self.bias)
