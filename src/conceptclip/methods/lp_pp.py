"""LP++ (Huang, Shakeri, Dolz, Boudiaf, Bahig, Ben Ayed, "LP++: A Surprisingly Strong Linear Probe
for Few-Shot CLIP", CVPR 2024).

What the paper adds to the linear probe: class weights that blend a learnable visual prototype
with the class's text embedding through a learnable class-wise multiplier,

    l_k(x) = f(x)^T (v_k + alpha_k t_k),   p(y = k | x) = softmax_k l_k(x)

trained with cross-entropy by block-coordinate majorise-minimise (MM) gradient steps whose step
sizes come in closed form from the data (no learning rate, no validation search):

    V     <- V     - (1 / L_V) grad_V CE,       L_V     = lambda_max(X^T X) / (2N)
    alpha <- alpha - (1 / L_a) grad_alpha CE,   L_a     = max_k sum_n (x_n^T t_k)^2 / (2N)

L_V and L_a are Lipschitz constants of the two blocks' gradients from Boehning's bound on the
softmax cross-entropy Hessian (diag(p) - p p^T <= I / 2), so each step minimises a quadratic
majoriser and never increases the loss. Initialisation: v_k = mean of class k's L2-normalised
few-shot features (the paper's data-driven prototype init) and alpha_k = 1 (deviation: the
paper derives alpha's initial value from the data as well). Full-batch, on cached features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from conceptclip.errors import ConfigError
from conceptclip.methods import register_method
from conceptclip.methods.base import Method, MethodConfig
from conceptclip.prompts import class_text_features, normalize


@dataclass
class LPPPConfig(MethodConfig):
    iterations: int = 300  # MM block-coordinate sweeps over the full batch
    init_alpha: float = 1.0


def lipschitz_v(x: torch.Tensor) -> float:
    """L_V = lambda_max(X^T X) / (2N) for mean cross-entropy over N rows of X (N, D)."""
    return float(torch.linalg.eigvalsh(x.t().double() @ x.double()).max()) / (2 * x.shape[0])


def lipschitz_alpha(x: torch.Tensor, text: torch.Tensor) -> float:
    """L_alpha = max_k sum_n (x_n . t_k)^2 / (2N)."""
    return float((x.double() @ text.double().t()).pow(2).sum(0).max()) / (2 * x.shape[0])


def lp_pp_logits(x: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """l_nk = x_n . v_k + alpha_k x_n . t_k."""
    return x @ v.t() + alpha * (x @ text.t())


@register_method("lp_pp")
class LPPP(Method):
    Config = LPPPConfig
    inputs = frozenset({"features"})

    def __init__(self, backbone, classnames, config=None, **kw) -> None:
        super().__init__(backbone, classnames, config, **kw)
        if self.multilabel:
            raise ConfigError("lp_pp supports single-label datasets only")
        if self.config.iterations < 0:
            raise ConfigError(f"lp_pp iterations={self.config.iterations}: expected a non-negative integer")
        n, d = len(self.classnames), backbone.embed_dim
        self.register_buffer("text", class_text_features(backbone, self.classnames, [self.template]), persistent=False)
        self.register_buffer("prototypes", torch.zeros(n, d))
        self.register_buffer("alpha", torch.full((n,), float(self.config.init_alpha)))

    def fit_closed_form(self, train: dict[str, torch.Tensor], val: dict[str, torch.Tensor]) -> dict[str, Any]:
        x = normalize(train["features"].float()).to(self.text.device)
        y = train["labels"].long().to(self.text.device)
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
        self.alpha.copy_(alpha)
        final = float(F.cross_entropy(lp_pp_logits(x, v, alpha, text), y))
        return {"L_V": lv, "L_alpha": la, "iterations": self.config.iterations, "train_ce_first": first,
                "train_ce_final": final}

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return lp_pp_logits(normalize(batch["features"].float()), self.prototypes, self.alpha, self.text.float())
