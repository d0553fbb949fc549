"""RC-TPL: report-guided concept text-only prompt learning for chest X-ray.

Prompts are learned from radiology reports alone, with the text standing in for the image (text
and image share CLIP's embedding space). Each report gives

- a global feature r_i = E_T(report) and labels y_ic in {1, 0, ignored} from its
  (concept, location, polarity) triplets (positive -> 1, negative or absent -> 0, uncertain ->
  ignored), and
- a set of regions z_ij = E_T(u_ij): one knowledge-injected sentence per triplet ("There is
  effusion. <MedKLIP description> It is located in left pleural.") plus the report's sentences
  without a finding (`conceptclip.rctpl.corpus` builds them).

Two learnable prompts, each M = 12 context vectors initialised from N(0, 0.02^2), are shared by
all classes (so the learned prompts transfer to any class list at zero-shot time):

    report-level   t^R_c = E_T([V^R]_1 ... [V^R]_M [CLASS_c].)
    concept-level  t^C_c = E_T([V^C]_1 ... [V^C]_M [CLASS_c].)

Scores, in logit units with the frozen backbone scale lambda (cos = cosine similarity):

    (1) global  s^g_ic = lambda cos(r_i, t^R_c)
    (2) local   s^l_ic = lambda sum_j w_ijc cos(z_ij, t^C_c),
                w_ijc = softmax_j(cos(z_ij, t^C_c) / tau_c)             (`prompts.local.softmax_pool`)
    (3) ranking L_rank(s, y) = mean over (i, p, n) with y_ip = 1, y_in = 0 of max(0, m - s_ip + s_in)
    (4) loss    L = L_rank(s^g, y) + L_rank(s^l, y)

At inference the image's global feature replaces r_i and its patch tokens replace the regions:

    (5) s_c = alpha s^g_c + (1 - alpha) s^l_c       (alpha = 0.5; alpha = 1 without patch tokens)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from conceptclip.errors import ConfigError
from conceptclip.methods import register_method
from conceptclip.methods.base import Method, MethodConfig
from conceptclip.prompts import ContextPrompt, normalize
from conceptclip.prompts.local import softmax_pool


@dataclass
class RCTPLConfig(MethodConfig):
    n_ctx: int = 12  # M context tokens of each prompt
    init_std: float = 0.02  # N(0, 0.02^2) initialisation
    ctx_init: str = ""  # words initialising both prompts instead (a hand-written zero-shot baseline)
    margin: float = 1.0  # m of the ranking loss (3), in logit units
    tau_c: float = 0.1  # temperature of the local softmax-weighted aggregation (2)
    alpha: float = 0.5  # weight of the global branch at inference (5)
    local: bool = True  # train and use the concept-level (local) branch


def ranking_loss(scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None,
                 margin: float = 1.0) -> torch.Tensor:
    """Eq. (3): mean hinge max(0, m - s_ip + s_in) over every report i and every pair of a
    positive class p (label 1) and a negative class n (label 0); classes whose `mask` is False
    (uncertain) take no part. 0 (with a graph) when the batch holds no such pair.

    scores (B, C), labels (B, C) in {0, 1}, mask (B, C) bool or None."""
    if scores.dim() != 2 or labels.shape != scores.shape:
        raise ConfigError(f"ranking_loss: expected scores and labels of one shape (B, C), got "
                          f"{tuple(scores.shape)} and {tuple(labels.shape)}")
    known = torch.ones_like(labels, dtype=torch.bool) if mask is None else mask.to(torch.bool)
    if known.shape != scores.shape:
        raise ConfigError(f"ranking_loss: mask of shape {tuple(known.shape)} does not match scores {tuple(scores.shape)}")
    pos = (labels > 0.5) & known
    neg = (labels <= 0.5) & known
    pairs = pos.unsqueeze(2) & neg.unsqueeze(1)  # (B, P, N): [y_ip = 1 and y_in = 0]
    hinge = torch.relu(margin - scores.unsqueeze(2) + scores.unsqueeze(1))  # h[i, p, n]
    count = pairs.sum()
    return (hinge * pairs).sum() / count.clamp_min(1)


@register_method("rctpl")
class RCTPL(Method):
    Config = RCTPLConfig
    inputs = frozenset({"features", "patches"})
    # the paper's training set-up: AdamW, lr 2e-5, batch 64, 20 epochs
    train_defaults = {"optimizer": "adamw", "lr": 2e-5, "batch_size": 64, "epochs": 20, "warmup_epochs": 0,
                      "select_metric": "auc_macro"}

    def __init__(self, backbone, classnames, config=None, **kw) -> None:
        kw.setdefault("multilabel", True)
        super().__init__(backbone, classnames, config, **kw)
        c = self.config
        if not c.tau_c > 0:
            raise ConfigError(f"RCTPLConfig.tau_c={c.tau_c}: expected a positive temperature")
        if not 0.0 <= c.alpha <= 1.0:
            raise ConfigError(f"RCTPLConfig.alpha={c.alpha}: expected a weight in [0, 1]")
        if c.margin < 0:
            raise ConfigError(f"RCTPLConfig.margin={c.margin}: expected a non-negative margin")
        self.report_prompt = ContextPrompt.from_config(backbone, self.classnames, c)
        self.concept_prompt = ContextPrompt.from_config(backbone, self.classnames, c)
        if not c.local:
            self.concept_prompt.ctx.requires_grad_(False)

    # -- text side ---------------------------------------------------------------------
    def report_text_features(self) -> torch.Tensor:
        """t^R (C, D), normalised."""
        return normalize(self.report_prompt())

    def text_features(self) -> torch.Tensor:
        """t^C (C, D), normalised: the concept-level prompts that patch tokens are matched with
        (what image-prompt similarity maps show)."""
        return normalize(self.concept_prompt())

    # -- scores ------------------------------------------------------------------------
    def branch_scores(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(s^g, s^l) of Eqs. (1)-(2) in logit units, (B, C) each; s^l is None without regions
        or with the local branch switched off."""
        scale = self.backbone.logit_scale.detach()
        t_r = self.report_text_features()
        g = normalize(batch["features"].to(t_r.dtype))
        s_g = scale * g @ t_r.t()
        patches = batch.get("patches")
        if not self.config.local or patches is None:
            return s_g, None
        t_c = self.text_features()
        sims = normalize(patches.to(t_c.dtype)) @ t_c.t()  # (B, N, C) cosines
        s_l = scale * softmax_pool(sims, self.config.tau_c, batch.get("patch_mask"))
        return s_g, s_l

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        s_g, s_l = self.branch_scores(batch)
        if s_l is None:
            return s_g
        a = self.config.alpha
        return a * s_g + (1.0 - a) * s_l  # Eq. (5)

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        s_g, s_l = self.branch_scores(batch)
        labels, mask, m = batch["labels"], batch.get("label_mask"), self.config.margin
        if labels.dim() != 2:
            raise ConfigError("rctpl trains on multi-hot report labels (B, C); got class indices. "
                              "Train it with `conceptclip rctpl train` on reports")
        rank_g = ranking_loss(s_g, labels, mask, m)
        terms = {"rank_report": rank_g.detach()}
        total = rank_g
        if s_l is not None:
            rank_l = ranking_loss(s_l, labels, mask, m)
            terms["rank_concept"] = rank_l.detach()
            total = total + rank_l  # Eq. (4)
        return {"loss": total, **terms}
