"""Tip-Adapter and Tip-Adapter-F (Zhang et al., "Tip-Adapter: Training-free Adaption of CLIP for
Few-shot Classification", ECCV 2022).

Tip-Adapter adds a training-free key-value cache to zero-shot CLIP (Sec. 3.1): keys are the
L2-normalised few-shot image features F_train (NK x D), values their one-hot labels L_train
(NK x C). A test feature f scores

    A      = exp(-beta * (1 - f F_train^T))                      (affinities, Eq. 3)
    logits = alpha * A L_train + exp(s) f W_c^T                  (cache + zero-shot CLIP, Eq. 4)

with W_c the hand-crafted prompt classifier. The residual ratio alpha and sharpness beta are
searched on a grid (beta in [0.1, 7), 200 steps; alpha in [0.1, 3), 20 steps, as the reference
configs) on the VALIDATION part only; `fit_closed_form` never sees the test part. Ties in
validation accuracy (frequent with a few validation images per class: on PH2 with 3-12 validation
images, hundreds to thousands of the 4,000 settings tie) go to the lower validation cross-entropy,
then to the earlier grid point (ours; the reference code, utils.py `search_hp`, keeps the first
setting of best accuracy);
the results folder records how many settings tied (`ties_accuracy`, `ties_after_loss`).

Tip-Adapter-F (Sec. 3.2) makes the keys learnable (initialised from F_train) and fine-tunes them
with cross-entropy: AdamW, lr 0.001, batch 256, 20 epochs. In the reference order (GitHub
gaopengcuhk/Tip-Adapter, main.py `run_tip_adapter_F`) the keys are fine-tuned with the INITIAL
alpha, beta (cfg init_alpha / init_beta, not searched values), and only then are alpha, beta searched
on the validation part with the fine-tuned keys (`after_fit`, on the final -- or best -- epoch's
keys); the searched values are buffers of the learned state, so a reloaded run scores with them.
`pre_search=true` keeps the earlier order (a first search with the initial keys before fine-tuning,
whose values are used during fine-tuning, then the second search). The reference code picks the
fine-tuning epoch by TEST accuracy; here the engine tests the final epoch (or selects on
validation). The reference code
builds the keys from the mean of 10 augmented views of every training image; here they are the
plain features (with `augment_views`, the fine-tuning epochs read cached augmented views).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from conceptclip.errors import ConfigError
from conceptclip.methods import register_method
from conceptclip.methods.base import Method, MethodConfig, option
from conceptclip.prompts import class_text_features, normalize
from conceptclip.prompts.adapters import cache_logits
from conceptclip.prompts.logits import clip_logits


TIP_CONFIGS = "code: gaopengcuhk/Tip-Adapter configs"


@dataclass
class TipAdapterConfig(MethodConfig):
    init_alpha: float = option(1.0, "residual ratio alpha before (and, for Tip-Adapter-F, during) the search", "ours")
    init_beta: float = option(1.0, "sharpness beta before (and, for Tip-Adapter-F, during) the search", "ours")
    search: bool = option(True, "search alpha, beta on the validation part")
    beta_max: float = option(7.0, "beta grid [0.1, beta_max) (search_scale[0])", TIP_CONFIGS)
    alpha_max: float = option(3.0, "alpha grid [0.1, alpha_max) (search_scale[1])", TIP_CONFIGS)
    beta_steps: int = option(200, "beta grid points (search_step[0])", TIP_CONFIGS)
    alpha_steps: int = option(20, "alpha grid points (search_step[1])", TIP_CONFIGS)


def search_grid(top: float, steps: int) -> torch.Tensor:
    """The reference grid: [i * (top - 0.1) / steps + 0.1 for i in range(steps)]."""
    return torch.arange(steps, dtype=torch.float64) * (top - 0.1) / steps + 0.1


def search_alpha_beta(zs_logits: torch.Tensor, affinity: torch.Tensor, values: torch.Tensor, labels: torch.Tensor,
                      alphas: torch.Tensor, betas: torch.Tensor) -> dict[str, float]:
    """Grid search of (alpha, beta) maximising accuracy of zs_logits + alpha * exp(-beta (1 - affinity)) values
    on labelled (validation) data. Tie rule (deterministic; with a few validation images per class most of
    the grid ties on accuracy): the lower validation cross-entropy, then the earlier grid point (beta outer
    loop, alpha inner). Returns the choice and how many settings tied: `ties_accuracy` settings share the
    best accuracy, `ties_after_loss` of them also its cross-entropy (1: the loss decided), of `grid_size`."""
    keys: list[tuple] = []
    alphas, labels = alphas.double(), labels.long()
    zs, aff, vals = zs_logits.double(), affinity.double(), values.double()
    for j, beta in enumerate(betas.tolist()):
        cache = torch.exp(-beta * (1.0 - aff)) @ vals  # (V, C)
        logits = zs.unsqueeze(0) + alphas.view(-1, 1, 1) * cache.unsqueeze(0)  # (A, V, C)
        acc = (logits.argmax(-1) == labels.view(1, -1)).double().mean(-1).tolist()  # (A,)
        ce = (-logits.log_softmax(-1).gather(-1, labels.view(1, -1, 1).expand(len(alphas), -1, 1))).mean((1, 2)).tolist()
        keys += [(a, -c, -j, -i, float(alphas[i]), beta) for i, (a, c) in enumerate(zip(acc, ce))]
    best = max(keys)
    return {"alpha": best[4], "beta": best[5], "val_accuracy": best[0], "val_cross_entropy": -best[1],
            "ties_accuracy": sum(k[0] == best[0] for k in keys),
            "ties_after_loss": sum(k[0] == best[0] and k[1] == best[1] for k in keys), "grid_size": len(keys)}


@register_method("tip_adapter")
class TipAdapter(Method):
    Config = TipAdapterConfig
    learn_keys = False

    def __init__(self, backbone, classnames, config=None, **kw) -> None:
        super().__init__(backbone, classnames, config, **kw)
        if self.multilabel:
            raise ConfigError(f"{self.name} supports single-label datasets only")
        n, d = len(self.classnames), backbone.embed_dim
        self.register_buffer("classifier", class_text_features(backbone, self.classnames, [self.template]),
                             persistent=False)
        self._set_keys(torch.zeros(0, d))
        self.register_buffer("cache_values", torch.zeros(0, n))
        self.register_buffer("alpha", torch.tensor(float(self.config.init_alpha)))
        self.register_buffer("beta", torch.tensor(float(self.config.init_beta)))

    def _set_keys(self, keys: torch.Tensor) -> None:
        if self.learn_keys:
            self.cache_keys = nn.Parameter(keys.clone())
        else:
            if "cache_keys" in self._buffers:
                del self._buffers["cache_keys"]
            self.register_buffer("cache_keys", keys.clone())

    def zeroshot_logits(self, features: torch.Tensor) -> torch.Tensor:
        return clip_logits(features, self.classifier, self.backbone.logit_scale.detach())

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        f = normalize(batch["features"].float())
        return self.zeroshot_logits(f) + self.alpha * cache_logits(f, self.cache_keys, self.cache_values, self.beta)

    def fit_closed_form(self, train: dict[str, torch.Tensor], val: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Build the cache from `train`; search alpha, beta on `val` (the test part is never passed here)."""
        device = self.classifier.device
        keys = normalize(train["features"].float()).to(device)
        labels = train["labels"].long().to(device)
        self._set_keys(keys)
        self.cache_values = F.one_hot(labels, len(self.classnames)).float()
        chosen: dict[str, Any] = {"cache_size": int(keys.shape[0])}
        if self.learn_keys and not getattr(self.config, "pre_search", False):  # Tip-Adapter-F: fine-tune first
            self.alpha.fill_(float(self.config.init_alpha))
            self.beta.fill_(float(self.config.init_beta))
            return {**chosen, "alpha": self.config.init_alpha, "beta": self.config.init_beta,
                    "searched": "after fine-tuning"}
        found = self.search_hyperparameters(val)
        chosen.update(found if found is not None else {"alpha": self.config.init_alpha, "beta": self.config.init_beta})
        return chosen

    @torch.no_grad()
    def search_hyperparameters(self, val: dict[str, torch.Tensor]) -> dict[str, float] | None:
        """Grid-search alpha, beta on labelled `val` with the current cache keys (used as they are, like
        `logits`) and set them; None (nothing changed) when search is off or `val` has no labels."""
        c = self.config
        if not c.search or len(val.get("labels", [])) == 0:
            return None
        device = self.classifier.device
        fv = normalize(val["features"].float()).to(device)
        found = search_alpha_beta(self.zeroshot_logits(fv), fv @ self.cache_keys.detach().t(), self.cache_values,
                                  val["labels"].long().to(device), search_grid(c.alpha_max, c.alpha_steps),
                                  search_grid(c.beta_max, c.beta_steps))
        self.alpha.fill_(found["alpha"])
        self.beta.fill_(found["beta"])
        return found

    def load_learned_state(self, state: dict[str, torch.Tensor]) -> None:
        """Caches have the size of the training set: resize the empty ones before loading."""
        if "cache_keys" in state and state["cache_keys"].shape != self.cache_keys.shape:
            self._set_keys(torch.zeros_like(state["cache_keys"], device=self.classifier.device))
        if "cache_values" in state and state["cache_values"].shape != self.cache_values.shape:
            self.cache_values = torch.zeros_like(state["cache_values"], device=self.classifier.device)
        super().load_learned_state(state)


@dataclass
class TipAdapterFConfig(TipAdapterConfig):
    pre_search: bool = option(False, "true: also search alpha, beta before fine-tuning (not the reference order)",
                              "code: gaopengcuhk/Tip-Adapter main.py")


@register_method("tip_adapter_f")
class TipAdapterF(TipAdapter):
    """Tip-Adapter-F: the cache keys are fine-tuned (initialised from F_train) with the initial alpha, beta;
    values stay fixed; alpha, beta are searched on validation afterwards."""

    Config = TipAdapterFConfig
    learn_keys = True
    train_defaults = {"optimizer": "adamw", "lr": 0.001, "weight_decay": 0.01, "batch_size": 256, "epochs": 20,
                      "warmup_epochs": 0}

    def after_fit(self, train: dict[str, torch.Tensor], val: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Search alpha, beta on `val` (never `train`) with the fine-tuned keys (the reference order)."""
        return self.search_hyperparameters(val) or {}
