"""Linear probe (Radford et al., 2021; CoOp's protocol): L2-regularised logistic regression on
frozen, L2-normalised image features; the inverse regularisation C is chosen on the validation
part only (a grid search, as CLIP's and CoOp's linear probes do), then refit on train."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from conceptclip.errors import ConfigError
from conceptclip.methods import register_method
from conceptclip.methods.base import Method, MethodConfig
from conceptclip.prompts import normalize


@dataclass
class LinearProbeConfig(MethodConfig):
    c_grid: list[float] = field(default_factory=lambda: [float(c) for c in np.logspace(-3, 3, 13)])
    max_iter: int = 1000


@register_method("linear_probe")
class LinearProbe(Method):
    Config = LinearProbeConfig
    inputs = frozenset({"features"})

    def __init__(self, backbone, classnames, config=None, **kw) -> None:
        super().__init__(backbone, classnames, config, **kw)
        if self.multilabel:
            raise ConfigError("linear_probe supports single-label datasets only")
        n, d = len(self.classnames), backbone.embed_dim
        self.register_buffer("weight", torch.zeros(n, d))
        self.register_buffer("bias", torch.zeros(n))

    def _fit(self, x: np.ndarray, y: np.ndarray, c: float):
        from sklearn.linear_model import LogisticRegression

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return LogisticRegression(C=c, max_iter=self.config.max_iter).fit(x, y)

    def fit_closed_form(self, train, val):
        x = normalize(train["features"].float()).numpy()
        y = train["labels"].numpy()
        if len(np.unique(y)) < 2:
            raise ConfigError("linear_probe needs training images of at least two classes")
        xv, yv = normalize(val["features"].float()).numpy(), val["labels"].numpy()
        scores = [(float((self._fit(x, y, c).predict(xv) == yv).mean()), -i, c) for i, c in enumerate(self.config.c_grid)]
        best_acc, _, best_c = max(scores)  # ties -> the strongest regularisation (smallest C)
        clf = self._fit(x, y, best_c)
        w = np.zeros((len(self.classnames), x.shape[1]), dtype=np.float32)
        b = np.full(len(self.classnames), -1e4, dtype=np.float32)  # classes absent from train are never predicted
        coef = clf.coef_ if len(clf.classes_) > 2 else np.concatenate([-clf.coef_, clf.coef_]) / 2
        icpt = clf.intercept_ if len(clf.classes_) > 2 else np.concatenate([-clf.intercept_, clf.intercept_]) / 2
        for row, cls in enumerate(clf.classes_):
            w[cls], b[cls] = coef[row], icpt[row]
        self.weight.copy_(torch.from_numpy(w))
        self.bias.copy_(torch.from_numpy(b))
        return {"C": best_c, "val_accuracy": best_acc}

    def logits(self, batch):
        return normalize(batch["features"].float()) @ self.weight.t() + self.bias
