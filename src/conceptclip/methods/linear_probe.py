"""Linear probe (Radford et al., 2021; CoOp's protocol): L2-regularised logistic regression on
frozen, L2-normalised image features; the inverse regularisation C is chosen on the validation
part only (a grid search, as CLIP's and CoOp's linear probes do), then refit on train.

Solver: scikit-learn's L-BFGS with the papers' budget (max_iter 1000) but a tight gradient
tolerance (ours, `tol` = 1e-10 instead of scikit-learn's 1e-4, in float64); where L-BFGS still stops
short of the criterion below (its relative-decrease test), Newton-CG refits to it (ours). scikit-learn minimises
mean cross-entropy + ||W||^2 / (2 C N); at small C the whole gradient is below 1e-4 from the first
step, so the default tolerance stops after one or two iterations far from the optimum (on real CLIP
features of PH2 that changed ~11 % of test predictions). Every fit is checked (ours): it counts as
converged when max|gradient| at the solution is at most `converged_rtol` times max|gradient| at
W = 0; a final fit that is not converged raises a warning, and the results folder records it.

Tie rule (ours; few validation images tie often): the highest validation accuracy, then the lower
validation cross-entropy, then the smaller C; how many grid points tied is recorded.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from conceptclip.errors import ConfigError
from conceptclip.methods import register_method
from conceptclip.methods.base import Method, MethodConfig, option
from conceptclip.prompts import normalize


class LinearProbeConvergenceWarning(UserWarning):
    """The L-BFGS fit of the selected C did not reach the convergence criterion."""


@dataclass
class LinearProbeConfig(MethodConfig):
    c_grid: list[float] = option(help="inverse regularisation C searched on the validation part", source="ours",
                                 factory=lambda: [float(c) for c in np.logspace(-3, 3, 13)])
    max_iter: int = option(1000, "L-BFGS iterations (the papers' budget)")
    tol: float = option(1e-10, "L-BFGS gradient tolerance (scikit-learn's default 1e-4 stops early at small C)", "ours")
    converged_rtol: float = option(1e-6, "converged: max|grad| <= converged_rtol * max|grad at W=0|", "ours")


def objective_gradient(coef: np.ndarray, intercept: np.ndarray, x: np.ndarray, y: np.ndarray, c: float,
                       n_classes: int) -> float:
    """max|gradient| of scikit-learn's objective mean CE + ||W||^2 / (2 C N) (intercept not penalised) at
    (coef, intercept): multinomial for coef (K, D), binary logistic for coef (1, D)."""
    n = x.shape[0]
    z = x @ coef.T + intercept
    if coef.shape[0] == 1:  # binary: y in {0, 1} = the second of the two classes present
        r = 1.0 / (1.0 + np.exp(-z[:, 0])) - y
        g_w, g_b = (r @ x) / n + coef[0] / (c * n), np.array([r.mean()])
    else:
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        r = p - np.eye(n_classes)[y]
        g_w, g_b = r.T @ x / n + coef / (c * n), r.mean(axis=0)
    return float(max(np.abs(g_w).max(), np.abs(g_b).max()))


@register_method("linear_probe")
class LinearProbe(Method):
    Config = LinearProbeConfig

    def __init__(self, backbone, classnames, config=None, **kw) -> None:
        super().__init__(backbone, classnames, config, **kw)
        if self.multilabel:
            raise ConfigError("linear_probe supports single-label datasets only")
        c = self.config
        if not c.c_grid or any(not isinstance(v, (int, float)) or not v > 0 for v in c.c_grid):
            raise ConfigError(f"linear_probe c_grid={c.c_grid!r}: expected a non-empty list of positive numbers")
        if c.max_iter < 1 or not c.tol > 0 or not c.converged_rtol > 0:
            raise ConfigError(f"linear_probe max_iter={c.max_iter}, tol={c.tol}, converged_rtol={c.converged_rtol}: "
                              "expected positive values")
        n, d = len(self.classnames), backbone.embed_dim
        self.register_buffer("weight", torch.zeros(n, d))
        self.register_buffer("bias", torch.zeros(n))

    def _fit(self, x: np.ndarray, y: np.ndarray, c: float) -> tuple[Any, bool, float]:
        """(classifier, converged, max|grad| relative to W = 0) of one L-BFGS fit."""
        from sklearn.linear_model import LogisticRegression

        cfg = self.config
        k = len(np.unique(y))
        yy = np.searchsorted(np.unique(y), y)
        shape = (1 if k == 2 else k, x.shape[1])
        g0 = objective_gradient(np.zeros(shape), np.zeros(shape[0]), x, yy, c, k)

        def run(**kw):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # judged by the gradient, not by the solver's message
                clf = LogisticRegression(C=c, max_iter=cfg.max_iter, **kw).fit(x, y)
            g = objective_gradient(clf.coef_, clf.intercept_, x, yy, c, k)
            return clf, (g / g0 if g0 > 0 else 0.0)

        clf, rel = run(tol=cfg.tol)
        if rel > cfg.converged_rtol:  # L-BFGS stopped short (its relative-decrease test): Newton-CG to the criterion
            clf2, rel2 = run(solver="newton-cg", tol=0.1 * cfg.converged_rtol * g0)
            if rel2 < rel:
                clf, rel = clf2, rel2
        return clf, rel <= cfg.converged_rtol, rel

    def fit_closed_form(self, train, val):
        x = normalize(train["features"].double()).numpy()
        y = train["labels"].numpy()
        if len(np.unique(y)) < 2:
            raise ConfigError("linear_probe needs training images of at least two classes")
        xv, yv = normalize(val["features"].double()).numpy(), val["labels"].numpy()
        fits, keys = [], []
        for i, c in enumerate(self.config.c_grid):
            clf, converged, rel = self._fit(x, y, float(c))
            proba = np.zeros((len(yv), len(self.classnames)))
            proba[:, clf.classes_] = clf.predict_proba(xv)
            acc = float((proba.argmax(1) == yv).mean())
            ce = float(-np.log(np.clip(proba[np.arange(len(yv)), yv], 1e-12, None)).mean())
            fits.append((clf, converged, rel))
            keys.append((acc, -ce, -i))
        best = max(keys)
        i = -best[2]
        clf, converged, rel = fits[i]
        best_c = float(self.config.c_grid[i])
        if not converged:
            warnings.warn(f"linear_probe: L-BFGS did not converge for the chosen C={best_c:g} (max|gradient| is "
                          f"{rel:.1e} of its start after {int(np.max(clf.n_iter_))} iterations, max_iter="
                          f"{self.config.max_iter}); raise max_iter", LinearProbeConvergenceWarning, stacklevel=2)
        w = np.zeros((len(self.classnames), x.shape[1]), dtype=np.float32)
        b = np.full(len(self.classnames), -1e4, dtype=np.float32)  # classes absent from train are never predicted
        coef = clf.coef_ if len(clf.classes_) > 2 else np.concatenate([-clf.coef_, clf.coef_]) / 2
        icpt = clf.intercept_ if len(clf.classes_) > 2 else np.concatenate([-clf.intercept_, clf.intercept_]) / 2
        for row, cls in enumerate(clf.classes_):
            w[cls], b[cls] = coef[row], icpt[row]
        self.weight.copy_(torch.from_numpy(w))
        self.bias.copy_(torch.from_numpy(b))
        return {"C": best_c, "val_accuracy": best[0], "val_cross_entropy": -best[1],
                "ties_accuracy": sum(k[0] == best[0] for k in keys),
                "ties_after_loss": sum(k[0] == best[0] and k[1] == best[1] for k in keys),
                "grid_size": len(keys), "converged": bool(converged), "relative_gradient": rel,
                "n_iter": int(np.max(clf.n_iter_)), "grid_not_converged": sum(not f[1] for f in fits)}

    def logits(self, batch):
        return normalize(batch["features"].float()) @ self.weight.t() + self.bias
