"""BiomedCoOp (Koleilat, Asgariandehkordi, Rivaz, Xiao, "BiomedCoOp: Learning to Prompt for
Biomedical Vision-Language Models", CVPR 2025).

CoOp's learnable context (M = 4 tokens from "a photo of a") guided by per-class LLM prompt
ensembles {t_cj} (50 descriptions per class in the paper's banks, loaded through the knowledge
layer). What the paper adds, as read here:

- SCCM, semantic consistency by contextual mapping (Sec. 3.2): pull each learned class feature
  w_c towards its ensemble mean tbar_c = normalise(mean_j t_cj) with an L1 penalty,
      L_SCCM = (1 / (C D)) sum_c || w_c - tbar_c ||_1
- KDSP, knowledge distillation with selective prompting (Sec. 3.3): distil the zero-shot
  prediction of the ensemble into the learned prompts, after a statistics-based pruning of
  outlier prompts. Per image x and class c, with s_cj = cos(f(x), t_cj) and mu_c, sigma_c their
  mean and (population) std over the class's prompts, prompt j is kept when
  |s_cj - mu_c| <= tau * sigma_c; the teacher logit is z_c = exp(s) mean_{kept j} s_cj, and
      L_KDSP = T^2 KL(softmax(z / T) || softmax(l / T))
  with l the learned prompts' logits.
- Total: L = L_CE + lambda_1 L_SCCM + lambda_2 L_KDSP. Inference uses the learned prompts only.

Defaults: n_ctx 4, ctx_init "a photo of a", SGD lr 0.0025, batch 4 (the paper's). The loss
weights and tau are this implementation's choices (the official configuration was not
available offline): lambda_1 = 25 makes the per-element L1 term comparable to the CE at the
start, lambda_2 = 1, tau = 1.5, T = 1. Classes missing from the bank get a template ensemble
(`prompts.ensembles.FALLBACK_TEMPLATES`); `describe()` records where every class's prompts came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from conceptclip.errors import ConfigError
from conceptclip.methods import register_method
from conceptclip.methods.base import Method, MethodConfig
from conceptclip.prompts import ContextPrompt, normalize
from conceptclip.prompts.ensembles import encode_ensembles, ensemble_mean, resolve_ensembles


@dataclass
class BiomedCoOpConfig(MethodConfig):
    n_ctx: int = 4
    ctx_init: str = "a photo of a"
    bank: str = ""  # shared-bank name (e.g. "biomedcoop/BUSI") or a bank JSON file; "" = templates only
    class_map: dict[str, str] = field(default_factory=dict)  # dataset class -> bank class
    lambda_sccm: float = 25.0
    lambda_kdsp: float = 1.0
    tau: float = 1.5  # z-score threshold of the prompt selection
    temperature: float = 1.0
    init_std: float = 0.02


def sccm_loss(learned: torch.Tensor, ensemble_mean_features: torch.Tensor) -> torch.Tensor:
    """L_SCCM: mean absolute difference between normalised learned (C, D) and ensemble-mean (C, D) features."""
    return F.l1_loss(learned, ensemble_mean_features)


def selective_teacher_logits(image: torch.Tensor, feats: torch.Tensor, mask: torch.Tensor, tau: float,
                             scale: torch.Tensor | float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher logits (B, C) from the prompts that are not outliers for each image, and the keep mask (B, C, P).

    image (B, D) and feats (C, P, D) L2-normalised; mask (C, P) marks real prompts. Keep prompt j of
    class c for image b when |s - mu| <= tau * sigma (population std over the class's real prompts)."""
    s = torch.einsum("bd,cpd->bcp", image, feats)  # (B, C, P)
    m = mask.unsqueeze(0).to(s.dtype)
    n = m.sum(-1, keepdim=True).clamp_min(1.0)
    mu = (s * m).sum(-1, keepdim=True) / n
    sigma = (((s - mu) ** 2) * m).sum(-1, keepdim=True).div(n).sqrt()
    keep = ((s - mu).abs() <= tau * sigma + 1e-12) & mask.unsqueeze(0)
    k = keep.to(s.dtype)
    return scale * (s * k).sum(-1) / k.sum(-1).clamp_min(1.0), keep


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """T^2 * mean_batch KL(softmax(teacher / T) || softmax(student / T))."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), reduction="batchmean",
                    log_target=True) * t * t


@register_method("biomedcoop")
class BiomedCoOp(Method):
    Config = BiomedCoOpConfig
    inputs = frozenset({"features"})
    train_defaults = {"optimizer": "sgd", "lr": 0.0025, "batch_size": 4, "epochs": 50, "warmup_epochs": 1,
                      "warmup_lr": 1e-5}

    def __init__(self, backbone, classnames, config=None, *, ensembles: dict[str, list[str]] | None = None,
                 **kw) -> None:
        super().__init__(backbone, classnames, config, **kw)
        c = self.config
        if self.multilabel:
            raise ConfigError("biomedcoop's distillation needs a single-label dataset")
        if c.tau < 0:
            raise ConfigError(f"biomedcoop tau={c.tau}: expected a non-negative number")
        self.prompt = ContextPrompt.from_config(backbone, self.classnames, c)
        if ensembles is not None:  # given directly (class -> prompts), e.g. by a user
            missing = [n for n in self.classnames if not ensembles.get(n)]
            if missing:
                raise ConfigError(f"biomedcoop ensembles: no prompts for classes {missing}")
            from conceptclip.prompts.ensembles import Ensembles

            self.ensembles = Ensembles(list(self.classnames), [list(ensembles[n]) for n in self.classnames],
                                       {n: "given" for n in self.classnames})
        else:
            dataset = self.context.get("dataset")  # base-to-novel: the map may name the other half's classes
            known = [n.replace("_", " ") for n in dataset.classnames] if dataset is not None else None
            self.ensembles = resolve_ensembles(self.classnames, c.bank, c.class_map, all_classes=known)
        self._encoded: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # lazily, for training

    def encoded_ensembles(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(features (C, P, D), mask (C, P), ensemble means (C, D)), encoded once on first use."""
        device = self.prompt.ctx.device
        if self._encoded is None or self._encoded[0].device != device:
            feats, mask = encode_ensembles(self.backbone, self.ensembles.prompts)
            feats, mask = feats.to(device), mask.to(device)
            self._encoded = (feats, mask, ensemble_mean(feats, mask))
        return self._encoded

    def text_features(self) -> torch.Tensor:
        return normalize(self.prompt())

    def _logits(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.backbone.logit_scale.detach() * image @ text.t()

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        text = self.text_features()
        return self._logits(text, normalize(batch["features"].to(text.dtype)))

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        c = self.config
        feats, mask, means = self.encoded_ensembles()
        text = self.text_features()
        image = normalize(batch["features"].to(text.dtype))
        logits = self._logits(text, image)
        ce = self.classification_loss(logits, batch["labels"])
        sccm = sccm_loss(text, means.to(text.dtype))
        with torch.no_grad():
            teacher, keep = selective_teacher_logits(image, feats.to(text.dtype), mask, c.tau,
                                                     self.backbone.logit_scale.detach())
        kdsp = distillation_loss(logits, teacher, c.temperature)
        total = ce + c.lambda_sccm * sccm + c.lambda_kdsp * kdsp
        kept = keep.sum(-1).float() / mask.sum(-1).clamp_min(1).float().unsqueeze(0)
        return {"loss": total, "ce": ce.detach(), "sccm": sccm.detach(), "kdsp": kdsp.detach(),
                "kept_fraction": kept.mean().detach()}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "ensembles": self.ensembles.summary()}
