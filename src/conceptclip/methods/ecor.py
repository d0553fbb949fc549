"""ECOR: Explainable CLIP for Object Recognition (Rasekh, Kazemi Ranjbar, Heidari, Nejdl, 2024).

Equation numbers are the paper's. An explainable recogniser scores the category c *and* the
rationales R from the joint P(c, R | I) = P(R | I) · P(c | R, I) (Sec. III-A):

- Eq. 4: P(R | I) = softmax over all rationale prompts "There are {r1} and ... in the photo." of the
  scaled cosine logit_scale · cos(f(I), g(prompt)) (text encoder frozen: prompt features once).
- Eq. 5: P(c | R, I) = softmax over *all* conditional prompts "This is a photo of a {c} because
  there is {r}.", all permutations of categories and rationales (`pairs="all"`,
  `conditional_softmax="all"`; our variants: `pairs="bank"`, `conditional_softmax="grouped"`).
- Eq. 6: shallow visual prompts, K = 3 tokens (Table I; `visual_prompt="deep"` is Eq. 7-8).
- Eqs. 9-10: L = L_CLIP(images, their rationale prompts) + L_CLIP(images, conditional prompts),
  i.e. E[-log P(R | I)] + E[-log P(c | R, I)]; only the visual prompt learns.
- Eq. 11: rank the pairs by P(R | I) · P(c | R, I), keep the top k (5 in Sec. IV-A.2), max voting.

Table IV ablations (`ablation="AB1"` ... "AB6", presets over `model`, `train_on`, the templates):
AB1 just rationales, AB2 just categories (CLIP), AB3 just conditioning (DROR), AB4 false
conditioning, AB5 independence, AB6 inverse ECOR. Our own variants keep descriptive names
(`VARIANTS`). Shared mechanics (pairs, voting, losses, bank) are in `prompts.rationales`; the DROR
baseline is `methods/dror.py`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from conceptclip.methods import register_method
from conceptclip.methods.base import option
from conceptclip.methods.rationale_family import RationaleConfig, RationaleMethod
from conceptclip.prompts.logits import clip_logits
from conceptclip.prompts.rationales import (CONDITIONAL_SOFTMAX, checked_template, conditional_log_softmax,
                                            multi_positive_nll, positive_pairs)
from conceptclip.prompts.text_features import encode_prompts

MODELS = ("ecor", "conditional", "independent", "inverse")
TRAIN_ON = ("model", "rationales", "categories")
FALSE_CONDITIONING = "There is {rationale} because this is a photo of a {classname}."  # AB4 (Sec. IV-D.4)


@dataclass
class EcorConfig(RationaleConfig):
    model: str = option("ecor", "ecor: P(R|I) P(c|R,I) | conditional: P(c|R,I) alone (AB3) | independent: "
                                "P(c|I) P(R|I) (AB5) | inverse: P(c|I) P(R|c,I) (AB6)")
    train_on: str = option("model", "model: its own terms | rationales: Eq. 9 only (AB1) | categories: P(c|I) (AB2)")
    conditional_softmax: str = option("all", "all: Eq. 5 over every conditional prompt | grouped: within R (ours)")
    class_template: str = option("This is a photo of a {classname}.", "Prompt_c of AB2 / AB5 / AB6 (Sec. IV-D)")
    lam: float = option(1.0, "weight of the conditional term (1: the paper's plain sum, Eqs. 9-10; others ours)")
    use_rationale_prior: bool = option(True, "false: our variant uniform_rationale_prior, P(R | I) := 1 / S")
    condition_on_rationale: bool = option(True, "false: our variant class_prompt_conditional, P(c|R,I) := P(c|I)")
    ablation: str = option("", "a Table IV name (ABLATIONS) or one of our VARIANTS; the preset wins")

    def validate(self) -> None:
        super().validate()
        self.expect_choice("model", MODELS)
        self.expect_choice("train_on", TRAIN_ON)
        self.expect_choice("conditional_softmax", CONDITIONAL_SOFTMAX)
        self.expect(self.ablation in ("", *PRESETS), "ablation", f"'' or a Table IV ablation {sorted(ABLATIONS)} or "
                    f"one of our variants {sorted(VARIANTS)}")


# Table IV of the paper: (the switches, what it is).
ABLATIONS: dict[str, tuple[dict[str, Any], str]] = {
    "AB1": ({"train_on": "rationales"},
            "Just Rationales: trained on Prompt_R only (Eq. 9); inference as ECOR (ours: the paper gives none)"),
    "AB2": ({"model": "independent", "train_on": "categories"},
            "Just Categories / CLIP: trained on 'This is a photo of a {c}.' only; rationales from the untrained "
            "P(R | I), joint P(c | I) P(R | I) (ours: the paper gives no AB2 rationale rule)"),
    "AB3": ({"model": "conditional"},
            "Just Conditioning / DROR: trained and inferred with Prompt_{c|R} only, joint = Eq. 5"),
    "AB4": ({"category_template": FALSE_CONDITIONING},
            "False Conditioning: Prompt_{c|R} = 'There is {r} because this is a photo of a {c}.'"),
    "AB5": ({"model": "independent"},
            "Independence: P(c | I) P(R | I), Prompt_c = 'This is a photo of a {c}.', trained on both"),
    "AB6": ({"model": "inverse"},
            "Inverse ECOR: P(c | I) P(R | c, I); P(R | c, I) on the conditional prompts (ours: the paper gives "
            "no AB6 prompt), trained on both"),
}
# Our own experiments (this project's former AB1-AB6), by what they change.
VARIANTS: dict[str, tuple[dict[str, Any], str]] = {
    "uniform_rationale_prior": ({"use_rationale_prior": False},
                                "no P(R | I): uniform prior 1 / S, no rationale term (joint = P(c | R, I) / S)"),
    "class_prompt_conditional": ({"condition_on_rationale": False},
                                 "P(c | R, I) replaced by P(c | I) from class_template"),
    "top1": ({"top_k": 1}, "no voting: the single most probable (c, R) pair decides"),
    "marginal": ({"decision": "marginal"}, "marginalisation instead of voting: c = argmax_c sum_R P(c, R | I)"),
    "frozen": ({"visual_prompt": "none"}, "no visual prompt tuning: the frozen backbone (zero-shot ECOR)"),
    "class_truth": ({"rationale_truth": "class"},
                    "class-level rationale supervision: every rationale of the true class counts as present"),
}
PRESETS = {**ABLATIONS, **VARIANTS}


@register_method("ecor")
class ECOR(RationaleMethod):
    Config = EcorConfig

    def __init__(self, backbone, classnames, config=None, **kw) -> None:
        super().__init__(backbone, classnames, self._with_preset(config), **kw)
        if self.uses_class_prompt:
            tmpl = checked_template("class_template", self.config.class_template, {"classname"})
            texts = [tmpl.fill(classname=c) for c in self.classnames]
            self.register_buffer("class_text", encode_prompts(backbone, texts), persistent=False)

    @classmethod
    def _with_preset(cls, config: Any) -> EcorConfig:
        from conceptclip.methods.base import build_config

        if config is None or isinstance(config, dict):
            config = build_config(EcorConfig, config)
        if config.ablation:  # validated: a known preset
            config = dataclasses.replace(config, **PRESETS[config.ablation][0])
        return config

    @property
    def uses_class_prompt(self) -> bool:
        c = self.config
        return c.model in ("independent", "inverse") or c.train_on == "categories" or not c.condition_on_rationale

    def similarities(self, f: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().similarities(f)
        if self.uses_class_prompt:
            out["class_logits"] = clip_logits(f, self.class_text, self._scale())
            if not self.config.condition_on_rationale:  # variant: P(c | R, I) := P(c | I) over R's classes
                out["pair_logits"] = out["class_logits"][:, self.pair_class]
        return out

    # -- the probability model ------------------------------------------------------------
    def _log_p_r(self, sims: dict[str, torch.Tensor]) -> torch.Tensor:
        """log P(R | I), Eq. 4 (B, S); the variant uniform_rationale_prior: log 1 / S."""
        r = sims["rationale_logits"]
        if self.config.use_rationale_prior:
            return r.log_softmax(-1)
        return torch.full_like(r, -float(torch.tensor(float(r.shape[1])).log()))

    def _log_c_given_r(self, sims: dict[str, torch.Tensor]) -> torch.Tensor:
        """log P(c | R, I) per pair, Eq. 5 (B, P)."""
        return conditional_log_softmax(sims["pair_logits"], self.pair_set, len(self.space.sets),
                                       self.config.conditional_softmax)

    def _log_r_given_c(self, sims: dict[str, torch.Tensor]) -> torch.Tensor:
        """log P(R | c, I) per pair (AB6), on the same conditional prompts (B, P)."""
        return conditional_log_softmax(sims["pair_logits"], self.pair_class, len(self.classnames),
                                       self.config.conditional_softmax)

    def log_joint(self, sims: dict[str, torch.Tensor]) -> torch.Tensor:
        """log P(c, R | I) of every candidate pair (B, P) under `model` (ECOR: Eq. 11's product)."""
        m = self.config.model
        if m == "conditional":
            return self._log_c_given_r(sims)
        if m == "ecor":
            return self._log_p_r(sims)[:, self.pair_set] + self._log_c_given_r(sims)
        log_c = sims["class_logits"].log_softmax(-1)[:, self.pair_class]
        if m == "independent":
            return log_c + self._log_p_r(sims)[:, self.pair_set]
        return log_c + self._log_r_given_c(sims)

    def loss_terms(self) -> tuple[str, ...]:
        """The cross-entropy terms trained: l_r = -log P(R* | I) (Eq. 9), l_c = -log P(c* | R*, I)
        (Eq. 10), l_class = -log P(c* | I), l_rc = -log P(R* | c*, I)."""
        c = self.config
        if c.train_on == "rationales":
            return ("l_r",)
        if c.train_on == "categories":
            return ("l_class",)
        terms = {"ecor": ("l_r", "l_c"), "conditional": ("l_c",), "independent": ("l_r", "l_class"),
                 "inverse": ("l_class", "l_rc")}[c.model]
        return tuple(t for t in terms if t != "l_r" or c.use_rationale_prior)

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Eqs. 9-10 (and the ablations' terms), each a mean over the images of the true sets' mean."""
        sims = self.similarities(self.image_features(batch).global_)
        labels = batch["labels"]
        pos_sets = self.positive_sets(self.rationale_targets(batch))
        terms: dict[str, torch.Tensor] = {}
        for name in self.loss_terms():
            if name == "l_r":
                terms[name] = multi_positive_nll(sims["rationale_logits"].log_softmax(-1), pos_sets)
            elif name == "l_class":
                terms[name] = F.cross_entropy(sims["class_logits"], labels)
            else:
                log_p = self._log_c_given_r(sims) if name == "l_c" else self._log_r_given_c(sims)
                terms[name] = multi_positive_nll(log_p, positive_pairs(labels, pos_sets, self.pair_class,
                                                                       self.pair_set))
        total = sum(self.config.lam * v if k == "l_c" else v for k, v in terms.items())
        return {"loss": total, **{k: v.detach() for k, v in terms.items()}}

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if self.config.ablation:
            out["ablation"] = {"name": self.config.ablation, "what": PRESETS[self.config.ablation][1]}
        return out
