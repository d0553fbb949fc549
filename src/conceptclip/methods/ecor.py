"""ECOR: explain the category by rationales (the `ecor` row of the design).

An explainable recogniser predicts a category c *and* the rationales R that support it, from the
joint distribution factorised as

    P(c, R | I) = P(R | I) · P(c | R, I)                                           (Eq. 1)

- P(R | I): softmax over the candidate rationale sets R of the backbone's scaled cosine similarity
  of the image with the rationale prompt "There are {r1} and {r2} ... in the photo."     (Eq. 2)
- P(c | R, I): for each R, softmax over the categories paired with R of the similarity with the
  category-given-rationale prompt "This is a photo of a {c} because there is {r}."      (Eq. 3)
  (logits = logit_scale · cos(f(I), g(prompt)); the text encoder is frozen, so every prompt
  feature is computed once.)
- Training minimises the joint negative log-likelihood of the true category and rationales,
      L = -log P(R* | I) - λ log P(c* | R*, I)     (λ = 1: exactly -log P(c*, R* | I))     (Eq. 4)
  with several true rationales (an image shows several criteria) each term averages over them;
  only visual prompts learn (shallow or deep VPT, `prompts.visual_prompts`). The true rationales
  R* of an image: its annotated ones (batch "rationales", or, for a method built with an annotated
  `dataset=` such as PH2, looked up by the engine batches' "sample" rows), else its class's.
- Inference ranks every candidate pair (c, R) by P(c, R | I), keeps the top k and lets them vote:
  the category with most pairs among the top k wins (max voting), ties going to the category
  with the highest joint probability; the rationale explanation is that category's best R.   (Eq. 5)

The factorisation, prompts, top-k max voting and visual prompt tuning follow ECOR (Rasekh et al.,
"ECOR: Explainable CLIP for Object Recognition", 2024); the rationale banks and the doubly-right
grid RR/RW/WR/WW come from the DROR line of work (Mao et al., CVPR 2023; Li, Ma, Peng, NeurIPS 2024,
whose repository holds the rationale files). The DROR-style baseline is `methods/dror.py`.

All probability computations work on the list of P candidate pairs (class index `pair_class`,
set index `pair_set`), never a dense (C, S) grid, so large banks stay small in memory.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from conceptclip.errors import ConfigError
from conceptclip.knowledge.templates import ECOR_CATEGORY, ECOR_RATIONALE, PromptTemplate
from conceptclip.methods import register_method
from conceptclip.methods.base import Method, MethodConfig
from conceptclip.prompts.rationales import build_rationale_space, dataset_rationales
from conceptclip.prompts.text_features import encode_prompts
from conceptclip.prompts.visual_prompts import build_visual_prompt
from conceptclip.explain.similarity import similarity_maps

# ---------------------------------------------------------------------------------------------
# pure functions on logits (pair form)
# ---------------------------------------------------------------------------------------------


def grouped_log_softmax(logits: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """log softmax of (B, P) logits within groups: out[b, p] = z[b, p] - log sum_{q: g(q) = g(p)} exp z[b, q]."""
    g = group.to(logits.device)
    b = logits.shape[0]
    idx = g.unsqueeze(0).expand(b, -1)
    m = logits.new_full((b, n_groups), float("-inf")).scatter_reduce(1, idx, logits, "amax", include_self=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m)).detach()
    s = logits.new_zeros(b, n_groups).scatter_add(1, idx, (logits - m.gather(1, idx)).exp())
    lse = m + s.clamp_min(torch.finfo(logits.dtype).tiny).log()
    return logits - lse.gather(1, idx)


def grouped_logsumexp(values: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """(B, P) -> (B, n_groups): log sum_{p in group} exp values[b, p] (-inf for an empty group)."""
    g = group.to(values.device)
    b = values.shape[0]
    idx = g.unsqueeze(0).expand(b, -1)
    m = values.new_full((b, n_groups), float("-inf")).scatter_reduce(1, idx, values, "amax", include_self=True)
    safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = values.new_zeros(b, n_groups).scatter_add(1, idx, (values - safe.gather(1, idx)).exp())
    return torch.where(s > 0, safe + s.clamp_min(torch.finfo(values.dtype).tiny).log(), m)


def factorised_log_joint(rationale_logits: torch.Tensor, pair_logits: torch.Tensor, pair_set: torch.Tensor,
                         use_rationale_prior: bool = True) -> torch.Tensor:
    """log P(c, R | I) = log P(R | I) + log P(c | R, I) (Eq. 1) for every candidate pair, (B, P).

    rationale_logits (B, S): P(R | I) = softmax_R (Eq. 2); pair_logits (B, P): P(c | R, I) = softmax
    over the pairs sharing R (Eq. 3). Without the prior (ablation AB1) P(R | I) = 1 / S."""
    n_sets = rationale_logits.shape[1]
    log_c = grouped_log_softmax(pair_logits, pair_set, n_sets)
    if use_rationale_prior:
        log_r = rationale_logits.log_softmax(-1)
    else:
        log_r = rationale_logits.new_full(rationale_logits.shape, -torch.log(torch.tensor(float(n_sets))).item())
    return log_r[:, pair_set.to(rationale_logits.device)] + log_c


@dataclass
class Decision:
    """A joint decision: category (B,), its best pair (B,), votes (B, C) among the top k, the best
    joint log-probability per class (B, C) and the class scores (B, C) the category maximises."""

    pred: torch.Tensor
    pair: torch.Tensor
    votes: torch.Tensor
    best: torch.Tensor
    best_pair: torch.Tensor
    scores: torch.Tensor


def best_pair_per_class(log_joint: torch.Tensor, pair_class: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class, the highest joint log-probability (B, C) and its pair (lowest index on ties; -1 when
    the class has no pair)."""
    pc = pair_class.to(log_joint.device)
    b, p = log_joint.shape
    idx = pc.unsqueeze(0).expand(b, -1)
    best = log_joint.new_full((b, n_classes), float("-inf")).scatter_reduce(1, idx, log_joint, "amax", include_self=True)
    at_best = log_joint == best.gather(1, idx)
    cand = torch.where(at_best, torch.arange(p, device=log_joint.device).expand(b, -1), torch.full_like(idx, p))
    arg = torch.full((b, n_classes), p, dtype=torch.long, device=log_joint.device).scatter_reduce(
        1, idx, cand, "amin", include_self=True)
    return best, torch.where(arg == p, torch.full_like(arg, -1), arg)


def top_k_vote(log_joint: torch.Tensor, pair_class: torch.Tensor, n_classes: int, k: int) -> Decision:
    """Max voting over the top-k pairs (Eq. 5): votes_c = #{top-k pairs of class c} (ranked by joint
    probability, ties to the lower pair index); c* = argmax_c votes_c, ties broken by the highest
    joint probability max_R P(c, R | I). Class scores: votes_c + max_R P(c, R | I) / 2 (the half
    keeps the vote order: a probability never outweighs a vote)."""
    if k < 1:
        raise ConfigError(f"top_k={k}: expected a positive integer")
    b, p = log_joint.shape
    k = min(k, p)
    order = torch.sort(log_joint, dim=1, descending=True, stable=True).indices[:, :k]
    pc = pair_class.to(log_joint.device)
    votes = log_joint.new_zeros(b, n_classes).scatter_add(1, pc[order], log_joint.new_ones(b, k))
    best, best_pair = best_pair_per_class(log_joint, pc, n_classes)
    scores = votes + best.exp() / 2
    pred = scores.argmax(1)
    return Decision(pred, best_pair.gather(1, pred[:, None]).squeeze(1), votes, best, best_pair, scores)


def marginal_decision(log_joint: torch.Tensor, pair_class: torch.Tensor, n_classes: int) -> Decision:
    """c* = argmax_c sum_R P(c, R | I) (ablation AB4); scores are the marginal log-probabilities."""
    marg = grouped_logsumexp(log_joint, pair_class, n_classes)
    best, best_pair = best_pair_per_class(log_joint, pair_class, n_classes)
    pred = marg.argmax(1)
    return Decision(pred, best_pair.gather(1, pred[:, None]).squeeze(1), torch.zeros_like(marg), best, best_pair, marg)


def multi_positive_nll(log_probs: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Mean over rows with a positive of -(1/|pos|) sum_{j in pos} log p_j (cross-entropy against the
    uniform distribution over the positives; the usual CE for one positive)."""
    pos = positive.bool()
    has = pos.any(1)
    if not bool(has.any()):
        return log_probs.sum() * 0.0
    per = -torch.where(pos, log_probs, torch.zeros_like(log_probs)).sum(1) / pos.sum(1).clamp_min(1)
    return per[has].mean()


def positive_pairs(labels: torch.Tensor, positive_sets: torch.Tensor, pair_class: torch.Tensor,
                   pair_set: torch.Tensor) -> torch.Tensor:
    """(B, P): pairs (y, R) of the true class whose set is right for the image; when none is, every
    pair of the true class (the category term always trains)."""
    own = pair_class.to(labels.device).unsqueeze(0) == labels.unsqueeze(1)
    pos = own & positive_sets[:, pair_set.to(labels.device)]
    return torch.where(pos.any(1, keepdim=True), pos, own)


# ---------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------


@dataclass
class RationaleConfig(MethodConfig):
    bank: str = ""  # shared-bank name ("ph2", "dror/cifar10", ...) or a bank JSON file
    class_map: dict = field(default_factory=dict)  # {class: bank class} where names differ
    rationale_sets: str = "single"  # single: every rationale alone | class: each class's list as one set
    pairs: str = "bank"  # bank: (c, R) with R among c's rationales | all: every combination
    max_rationales: int = 0  # per class, bank order (0 = all)
    rationale_field: str = "phrase"  # phrase | rationale (a concept's rationale text, e.g. DROR's ImageNet graphs)
    rationale_template: str = ECOR_RATIONALE.text
    category_template: str = ECOR_CATEGORY.text
    visual_prompt: str = "auto"  # auto (deep on a ViT, shallow on conv) | deep | shallow | pixel | none
    n_prompt_tokens: int = 8  # VPT tokens per layer (ViT)
    prompt_last_blocks: int = 0  # conv feature prompt: before the last N MBConv blocks (0: at the head conv)
    prompt_pad: int = 0  # pixel prompt frame width (0 = 30 px at 224 px)
    top_k: int = 5
    decision: str = "vote"  # vote (top-k max voting) | marginal
    rationale_truth: str = "image"  # image: batch "rationales" when given | class: the true class's bank list


@dataclass
class EcorConfig(RationaleConfig):
    use_rationale_prior: bool = True  # False: AB1
    condition_on_rationale: bool = True  # False: AB2, P(c | I) from class_template
    class_template: str = "This is a photo of a {classname}."
    lam: float = 1.0  # λ of Eq. 4 (1: the joint NLL)
    ablation: str = ""  # "" or AB1 ... AB6 (below); the preset wins over the fields it sets


# The ablations, as switches over the factorised model (what each removes):
ABLATIONS: dict[str, tuple[dict[str, Any], str]] = {
    "AB1": ({"use_rationale_prior": False},
            "no P(R | I): uniform rationale prior, category term only (joint = P(c | R, I) / S)"),
    "AB2": ({"condition_on_rationale": False},
            "no rationale conditioning: P(c | R, I) replaced by P(c | I) from 'This is a photo of a {c}.'"),
    "AB3": ({"top_k": 1}, "no voting: the single most probable (c, R) pair decides"),
    "AB4": ({"decision": "marginal"}, "marginalisation instead of voting: c = argmax_c sum_R P(c, R | I)"),
    "AB5": ({"visual_prompt": "none"}, "no visual prompt tuning: the frozen backbone (zero-shot ECOR)"),
    "AB6": ({"rationale_truth": "class"},
            "class-level rationale supervision: every rationale of the true class counts as present"),
}

# ---------------------------------------------------------------------------------------------
# shared machinery of rationale methods (ECOR, DROR)
# ---------------------------------------------------------------------------------------------


def load_bank_spec(spec: str, exclude: Sequence[str] | None = None):
    """A `ConceptBank` from a bank JSON file or a shared-bank name (`exclude`: see `load_bank_any`)."""
    from conceptclip.prompts.ensembles import load_bank_any

    if not spec:
        raise ConfigError("bank: a rationale method needs a rationale bank, e.g. bank='ph2' (PH2 dermoscopic "
                          "criteria), bank='dror/cifar10' (DROR rationales) or a bank JSON file")
    return load_bank_any(spec, exclude=exclude)


def _template(name: str, text: str, slots: set[str]) -> PromptTemplate:
    t = PromptTemplate(name, text, joiner=" and ")
    try:
        have = t.slots
    except ValueError as exc:
        raise ConfigError(f"{name}={text!r}: not a format string ({exc})") from None
    if have != slots:
        raise ConfigError(f"{name}={text!r}: expected exactly the slot(s) {sorted(slots)}, got {sorted(have)}")
    return t


class RationaleMethod(Method):
    """Candidate (category, rationale set) pairs scored through visual prompts and frozen prompt
    features; subclasses define the joint `log_joint` and the `loss`."""

    Config = RationaleConfig
    inputs = frozenset({"pixels"})
    # our choice for few-shot runs (the papers tune VPT on ImageNet-scale data): AdamW on the prompt only
    train_defaults = {"optimizer": "adamw", "lr": 0.1, "weight_decay": 0.0, "batch_size": 32, "epochs": 20,
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
        bank = bank if bank is not None else load_bank_spec(c.bank, self.context.get("knowledge_exclude"))
        self.bank_name = bank.name
        self.space = build_rationale_space(bank, self.classnames, class_map=c.class_map, sets=c.rationale_sets,
                                           pairs=c.pairs, max_per_class=c.max_rationales,
                                           field=c.rationale_field)
        self.visual = build_visual_prompt(backbone, c.visual_prompt, n_tokens=c.n_prompt_tokens,
                                          last_blocks=c.prompt_last_blocks, pad=c.prompt_pad or None)
        self.inputs = self.visual.inputs
        r_tmpl = _template("rationale_template", c.rationale_template, {"rationales"})
        c_tmpl = _template("category_template", c.category_template, {"classname", "rationale"})
        self.rationale_texts = self.space.rationale_prompts(r_tmpl)
        self.pair_texts, index = self.space.pair_prompts(c_tmpl)
        self.register_buffer("pair_class", index[:, 0].clone(), persistent=False)
        self.register_buffer("pair_set", index[:, 1].clone(), persistent=False)
        self.register_buffer("rationale_text", encode_prompts(backbone, self.rationale_texts), persistent=False)
        self.register_buffer("pair_text", encode_prompts(backbone, self.pair_texts), persistent=False)
        self.register_buffer("set_matrix", self.space.set_matrix, persistent=False)
        self.register_buffer("class_truth", self.space.class_truth, persistent=False)
        self._build_sample_truth(self.context.get("dataset"))

    def _build_sample_truth(self, dataset: Any) -> None:
        """Per-image truth of the dataset the method was given (`dataset=`, as run_experiment passes):
        `sample_truth` (N_dataset, V) bool and `sample_annotated` (N_dataset,) bool, indexed by the
        batches' "sample" key; None when the dataset has no per-image rationale annotations or
        rationale_truth="class". `truth_source` says which truth the loss uses."""
        per = dataset_rationales(dataset) if dataset is not None and self.config.rationale_truth == "image" else None
        if per is None:
            self.register_buffer("sample_truth", None, persistent=False)
            self.register_buffer("sample_annotated", None, persistent=False)
            self.truth_source = ("class: the bank's rationales of the true class" if self.config.rationale_truth == "class"
                                 else "image where batches carry 'rationales', else class (no dataset with "
                                      "per-image rationale annotations was given)")
            return
        annotated = torch.tensor([p is not None for p in per], dtype=torch.bool)
        self.register_buffer("sample_truth", self.space.truth([p or () for p in per]).bool(), persistent=False)
        self.register_buffer("sample_annotated", annotated, persistent=False)
        self.truth_source = (f"image: dataset {getattr(dataset, 'name', '?')!r} annotations by batch 'sample' "
                             f"({int(annotated.sum())} of {len(per)} images annotated; the others and batches "
                             "without 'sample' use the class's rationales)")

    # -- image side ---------------------------------------------------------------------
    def image_features(self, batch: dict[str, torch.Tensor], patches: bool = False):
        return self.visual.encode(batch, patches=patches)

    def _scale(self) -> torch.Tensor:
        return self.backbone.logit_scale.detach()

    def similarities(self, f: torch.Tensor) -> dict[str, torch.Tensor]:
        """Scaled cosine logits of the image features (B, D): rationale (B, S) and pair (B, P)."""
        x = F.normalize(f.to(self.pair_text.dtype), dim=-1)
        s = self._scale()
        return {"rationale_logits": s * x @ self.rationale_text.t(), "pair_logits": s * x @ self.pair_text.t()}

    # -- the model ----------------------------------------------------------------------
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
        or the marginal log P(c | I) with decision="marginal"."""
        d = self.forward_all(batch)["decision"]
        if self.config.decision == "marginal":
            return d.scores
        return d.scores.clamp_min(1e-12).log()

    def rationale_targets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, V) true rationales, with rationale_truth="image": the batch's per-image "rationales"
        multi-hot when given; else, for a method given an annotated dataset, each image's own truth
        looked up by the batch's "sample" rows (engine batches); else (and for images without
        annotations, or rationale_truth="class") the bank's rationales of the true class."""
        class_level = self.class_truth[batch["labels"]]
        if self.config.rationale_truth != "image":
            return class_level
        if "rationales" in batch:
            t = batch["rationales"]
            if t.dim() != 2 or t.shape[1] != len(self.space.vocab):
                raise ConfigError(f"batch 'rationales': expected (B, {len(self.space.vocab)}) multi-hot over the "
                                  f"rationale vocabulary, got {tuple(t.shape)}")
            return t.bool()
        if self.sample_truth is None or "sample" not in batch:
            return class_level
        rows = batch["sample"].long()
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= self.sample_truth.shape[0]):
            raise ConfigError(f"batch 'sample': rows must index the method's dataset of {self.sample_truth.shape[0]} "
                              f"images, got values in [{int(rows.min())}, {int(rows.max())}]")
        own = self.sample_annotated[rows].unsqueeze(1)
        return torch.where(own, self.sample_truth[rows], class_level)

    def positive_sets(self, truth: torch.Tensor) -> torch.Tensor:
        wrong = (self.set_matrix.unsqueeze(0) & ~truth.bool().unsqueeze(1)).any(-1)
        return ~wrong

    # -- explanations -------------------------------------------------------------------
    @torch.no_grad()
    def predict_rationales(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The category (B,), the rationale set that supports it (its best pair's set, (B,)), that set
        as a multi-hot over the vocabulary (B, V), P(R | I) where the model has it, and the joint."""
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
        """Rationale localisation: cosine similarity of every (prompted) patch token with each
        rationale prompt (explain.similarity_maps), (B, S, h, w); with `sets` (B,), the map of one
        set per image, (B, h, w)."""
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
        return {**super().describe(), "rationale_space": self.space.summary(), "visual_prompt_kind": self.visual.kind,
                "rationale_truth_source": self.truth_source}


@register_method("ecor")
class ECOR(RationaleMethod):
    Config = EcorConfig

    def __init__(self, backbone, classnames, config=None, **kw) -> None:
        config = self._with_ablation(config)
        super().__init__(backbone, classnames, config, **kw)
        if not self.config.condition_on_rationale:
            tmpl = _template("class_template", self.config.class_template, {"classname"})
            texts = [tmpl.fill(classname=c) for c in self.classnames]
            self.register_buffer("class_text", encode_prompts(backbone, texts), persistent=False)

    @classmethod
    def _with_ablation(cls, config: Any) -> Any:
        from conceptclip.methods.base import build_config

        if config is None or isinstance(config, dict):
            config = build_config(EcorConfig, config)
        if config.ablation:
            if config.ablation not in ABLATIONS:
                raise ConfigError(f"EcorConfig.ablation={config.ablation!r}: expected one of {sorted(ABLATIONS)} or ''")
            config = dataclasses.replace(config, **ABLATIONS[config.ablation][0])
        return config

    def similarities(self, f: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().similarities(f)
        if not self.config.condition_on_rationale:  # AB2: P(c | R, I) := P(c | I) over R's classes
            x = F.normalize(f.to(self.class_text.dtype), dim=-1)
            out["pair_logits"] = (self._scale() * x @ self.class_text.t())[:, self.pair_class]
        return out

    def log_joint(self, sims: dict[str, torch.Tensor]) -> torch.Tensor:
        return factorised_log_joint(sims["rationale_logits"], sims["pair_logits"], self.pair_set,
                                    self.config.use_rationale_prior)

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Eq. 4: L_R = -log P(R* | I) and L_C = -log P(c* | R*, I), each averaged over the true sets."""
        sims = self.similarities(self.image_features(batch).global_)
        labels = batch["labels"]
        pos_sets = self.positive_sets(self.rationale_targets(batch))
        log_c = grouped_log_softmax(sims["pair_logits"], self.pair_set, len(self.space.sets))
        l_c = multi_positive_nll(log_c, positive_pairs(labels, pos_sets, self.pair_class, self.pair_set))
        terms = {"l_c": l_c.detach()}
        total = self.config.lam * l_c
        if self.config.use_rationale_prior:
            l_r = multi_positive_nll(sims["rationale_logits"].log_softmax(-1), pos_sets)
            total = total + l_r
            terms["l_r"] = l_r.detach()
        return {"loss": total, **terms}

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if self.config.ablation:
            out["ablation"] = {"name": self.config.ablation, "what": ABLATIONS[self.config.ablation][1]}
        return out
