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
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from conceptclip.errors import ConfigError
from conceptclip.explain.similarity import similarity_maps
from conceptclip.knowledge.templates import ECOR_CATEGORY, ECOR_RATIONALE
from conceptclip.methods import register_method
from conceptclip.methods.base import Method, MethodConfig
from conceptclip.metrics.rationale import CLASS_LEVEL_NOTE
from conceptclip.prompts.rationales import (CONDITIONAL_SOFTMAX, Decision, SampleTruth, build_rationale_space,
                                            checked_template, conditional_log_softmax, load_bank_spec,
                                            marginal_decision, multi_positive_nll, positive_pairs, positive_sets,
                                            rationale_targets, sample_truth, top_k_vote)
from conceptclip.prompts.text_features import encode_prompts
from conceptclip.prompts.visual_prompts import build_visual_prompt

MODELS = ("ecor", "conditional", "independent", "inverse")
TRAIN_ON = ("model", "rationales", "categories")
FALSE_CONDITIONING = "There is {rationale} because this is a photo of a {classname}."  # AB4 (Sec. IV-D.4)


@dataclass
class RationaleConfig(MethodConfig):
    bank: str = ""  # required: a bank JSON file or a shared-bank name ("dror/cifar10", "ph2" for PH2 only)
    class_map: dict = field(default_factory=dict)  # {class: bank class} where names differ
    rationale_sets: str = "single"  # single: every rationale alone (the paper's data: one per image) | class
    pairs: str = "all"  # all: every (c, R) combination (Eq. 5) | bank: R among c's rationales (ours)
    max_rationales: int = 0  # per class, bank order (0 = all)
    rationale_field: str = "phrase"  # phrase | rationale (a concept's rationale text, e.g. DROR's ImageNet graphs)
    rationale_template: str = ECOR_RATIONALE.text  # Prompt_R (Sec. III-C.1)
    category_template: str = ECOR_CATEGORY.text  # Prompt_{c|R} (Sec. III-C.1)
    visual_prompt: str = "shallow"  # Eq. 6, Table I (deep: Eqs. 7-8 | pixel | none | auto: deep on a ViT)
    n_prompt_tokens: int = 3  # K of Eq. 6 (Table I: 3 on CIFAR, Food-101, Caltech-101)
    prompt_last_blocks: int = 0  # conv feature prompt: before the last N MBConv blocks (0: at the head conv)
    prompt_pad: int = 0  # pixel prompt frame width (0 = 30 px at 224 px)
    top_k: int = 5  # Sec. IV-A.2: "the top 5 selections"
    decision: str = "vote"  # vote (top-k max voting, Eq. 11) | marginal (ours)
    rationale_truth: str = "image"  # image: per-image annotations where given | class: the true class's bank list


class RationaleMethod(Method):
    """Candidate (category, rationale set) pairs scored through visual prompts and frozen prompt
    features; subclasses define the joint `log_joint` and the `loss`."""

    Config = RationaleConfig
    inputs = frozenset({"pixels"})
    # ours (the paper gives no optimiser): AdamW on the prompt only; lr chosen on PH2's validation pool
    train_defaults = {"optimizer": "adamw", "lr": 0.3, "weight_decay": 0.0, "batch_size": 32, "epochs": 20,
                      "warmup_epochs": 0}

    def __init__(self, backbone, classnames, config=None, *, bank=None, **kw) -> None:
        super().__init__(backbone, classnames, config, **kw)
        c = self.config
        for name, value, options in (("decision", c.decision, ("vote", "marginal")),
                                     ("rationale_truth", c.rationale_truth, ("image", "class"))):
            if value not in options:
                raise ConfigError(f"{type(c).__name__}.{name}={value!r}: expected one of {options}")
        if c.top_k < 1:
            raise ConfigError(f"{type(c).__name__}.top_k={c.top_k}: expected a positive integer")
        bank = bank if bank is not None else load_bank_spec(c.bank, self.context.get("knowledge_exclude"),
                                                            type(self).__name__.lower())
        self.bank_name = bank.name
        self.space = build_rationale_space(bank, self.classnames, class_map=c.class_map, sets=c.rationale_sets,
                                           pairs=c.pairs, max_per_class=c.max_rationales,
                                           field=c.rationale_field)
        self.visual = build_visual_prompt(backbone, c.visual_prompt, n_tokens=c.n_prompt_tokens,
                                          last_blocks=c.prompt_last_blocks, pad=c.prompt_pad or None)
        self.inputs = self.visual.inputs
        r_tmpl = checked_template("rationale_template", c.rationale_template, {"rationales"})
        c_tmpl = checked_template("category_template", c.category_template, {"classname", "rationale"})
        self.rationale_texts = self.space.rationale_prompts(r_tmpl)
        self.pair_texts, index = self.space.pair_prompts(c_tmpl)
        self.register_buffer("pair_class", index[:, 0].clone(), persistent=False)
        self.register_buffer("pair_set", index[:, 1].clone(), persistent=False)
        self.register_buffer("rationale_text", encode_prompts(backbone, self.rationale_texts), persistent=False)
        self.register_buffer("pair_text", encode_prompts(backbone, self.pair_texts), persistent=False)
        self.register_buffer("set_matrix", self.space.set_matrix, persistent=False)
        self.register_buffer("class_truth", self.space.class_truth, persistent=False)
        table = sample_truth(self.space, self.context.get("dataset")) if c.rationale_truth == "image" else None
        self.register_buffer("sample_truth", table.truth if table else None, persistent=False)
        self.register_buffer("sample_annotated", table.annotated if table else None, persistent=False)
        self.truth_source = table.source if table else (
            "class: the bank's rationales of the true class" if c.rationale_truth == "class" else
            "image where batches carry 'rationales', else class (no dataset with per-image rationale annotations "
            "was given)")

    # -- scores -------------------------------------------------------------------------
    def image_features(self, batch: dict[str, torch.Tensor], patches: bool = False):
        return self.visual.encode(batch, patches=patches)

    def _scale(self) -> torch.Tensor:
        return self.backbone.logit_scale.detach()

    def similarities(self, f: torch.Tensor) -> dict[str, torch.Tensor]:
        """Scaled cosine logits of the image features (B, D): rationale (B, S) and pair (B, P)."""
        x = F.normalize(f.to(self.pair_text.dtype), dim=-1)
        s = self._scale()
        return {"rationale_logits": s * x @ self.rationale_text.t(), "pair_logits": s * x @ self.pair_text.t()}

    def log_joint(self, sims: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def decide(self, log_joint: torch.Tensor) -> Decision:
        n = len(self.classnames)
        if self.config.decision == "marginal":
            return marginal_decision(log_joint, self.pair_class, n)
        return top_k_vote(log_joint, self.pair_class, n, self.config.top_k)

    def forward_all(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        sims = self.similarities(self.image_features(batch).global_)
        lj = self.log_joint(sims)
        return {**sims, "log_joint": lj, "decision": self.decide(lj)}

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Class logits whose argmax is the joint decision: log of the vote scores (votes + best/2),
        or the log marginal with decision="marginal"."""
        d = self.forward_all(batch)["decision"]
        return d.scores if self.config.decision == "marginal" else d.scores.clamp_min(1e-12).log()

    # -- truth --------------------------------------------------------------------------
    def rationale_targets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, V) true rationales (`prompts.rationales.rationale_targets`): the batch's "rationales",
        else the given dataset's annotations by "sample" row, else the true class's bank list."""
        table = None if self.sample_truth is None else SampleTruth(self.sample_truth, self.sample_annotated, "")
        return rationale_targets(batch, self.class_truth, table, self.config.rationale_truth == "image")

    def positive_sets(self, truth: torch.Tensor) -> torch.Tensor:
        return positive_sets(self.set_matrix, truth)

    # -- explanations -------------------------------------------------------------------
    @torch.no_grad()
    def predict_rationales(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The category (B,), the rationale set that supports it (its best pair's set, (B,)), that set
        as a multi-hot over the vocabulary (B, V), P(R | I) and the joint."""
        out = self.forward_all(batch)
        d: Decision = out["decision"]
        sets = self.pair_set[d.pair]
        return {"pred": d.pred, "rationale_set": sets, "rationales": self.set_matrix[sets].float(),
                "log_joint": out["log_joint"], "votes": d.votes,
                "rationale_probs": out["rationale_logits"].softmax(-1)}

    @torch.no_grad()
    def concept_scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """P(R | I) over the candidate rationale sets (B, S)."""
        return self.similarities(self.image_features(batch).global_)["rationale_logits"].softmax(-1)

    @torch.no_grad()
    def rationale_maps(self, batch: dict[str, torch.Tensor], sets: torch.Tensor | None = None) -> torch.Tensor:
        """Cosine similarity of every (prompted) patch token with each rationale prompt, (B, S, h, w);
        with `sets` (B,), the map of one set per image, (B, h, w)."""
        feats = self.image_features(batch, patches=True)
        if feats.patches is None:
            raise ConfigError("rationale_maps: this backbone returned no patch tokens")
        maps = similarity_maps(feats, self.rationale_text.to(feats.patches.dtype))
        if sets is None:
            return maps
        return maps[torch.arange(maps.shape[0], device=maps.device), sets.to(maps.device)]

    def explain(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        out = self.predict_rationales(batch)
        if "pixels" in batch or self.visual.kind != "none":
            try:
                out["rationale_map"] = self.rationale_maps(batch, out["rationale_set"])
            except ConfigError:
                pass
        out["rationale_phrases"] = [self.space.set_phrases(int(s)) for s in out["rationale_set"]]
        return out

    def describe(self) -> dict[str, Any]:
        out = {**super().describe(), "rationale_space": self.space.summary(), "visual_prompt_kind": self.visual.kind,
               "rationale_truth_source": self.truth_source}
        if self.sample_truth is None:  # unless batches carry "rationales": the grid has no rationale information
            out["rationale_grid_note"] = "unless batches carry per-image 'rationales': " + CLASS_LEVEL_NOTE
        return out

@dataclass
class EcorConfig(RationaleConfig):
    # ecor: P(R|I)·P(c|R,I) | conditional: P(c|R,I) alone (AB3) | independent: P(c|I)·P(R|I) (AB5)
    # | inverse: P(c|I)·P(R|c,I) (AB6)
    model: str = "ecor"
    train_on: str = "model"  # model: its own terms | rationales: Eq. 9 only (AB1) | categories: P(c|I) only (AB2)
    conditional_softmax: str = "all"  # all: Eq. 5 over every conditional prompt | grouped: within R (ours)
    class_template: str = "This is a photo of a {classname}."  # Prompt_c of AB2 / AB5 / AB6
    lam: float = 1.0  # weight of the conditional term (ours; 1 = the paper's plain sum, Eqs. 9-10)
    use_rationale_prior: bool = True  # ours (variant uniform_rationale_prior): P(R | I) := 1 / S
    condition_on_rationale: bool = True  # ours (variant class_prompt_conditional): P(c|R,I) := P(c|I)
    ablation: str = ""  # a Table IV name (ABLATIONS) or one of our VARIANTS; the preset wins


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
        config = self._with_preset(config)
        for name, options in (("model", MODELS), ("train_on", TRAIN_ON)):
            if getattr(config, name) not in options:
                raise ConfigError(f"EcorConfig.{name}={getattr(config, name)!r}: expected one of {options}")
        if config.conditional_softmax not in CONDITIONAL_SOFTMAX:
            raise ConfigError(f"EcorConfig.conditional_softmax={config.conditional_softmax!r}: expected one of "
                              f"{CONDITIONAL_SOFTMAX}")
        super().__init__(backbone, classnames, config, **kw)
        if self.uses_class_prompt:
            tmpl = checked_template("class_template", self.config.class_template, {"classname"})
            texts = [tmpl.fill(classname=c) for c in self.classnames]
            self.register_buffer("class_text", encode_prompts(backbone, texts), persistent=False)

    @classmethod
    def _with_preset(cls, config: Any) -> EcorConfig:
        from conceptclip.methods.base import build_config

        if config is None or isinstance(config, dict):
            config = build_config(EcorConfig, config)
        if config.ablation:
            if config.ablation not in PRESETS:
                raise ConfigError(f"EcorConfig.ablation={config.ablation!r}: expected '' or a Table IV ablation "
                                  f"{sorted(ABLATIONS)} or one of our variants {sorted(VARIANTS)}")
            config = dataclasses.replace(config, **PRESETS[config.ablation][0])
        return config

    @property
    def uses_class_prompt(self) -> bool:
        c = self.config
        return c.model in ("independent", "inverse") or c.train_on == "categories" or not c.condition_on_rationale

    def similarities(self, f: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().similarities(f)
        if self.uses_class_prompt:
            x = F.normalize(f.to(self.class_text.dtype), dim=-1)
            out["class_logits"] = self._scale() * x @ self.class_text.t()
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
