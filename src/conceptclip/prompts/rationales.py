"""Rationale spaces: which (category, rationale set) pairs a doubly-right model scores, their prompts,
and the probability/decision mechanics shared by the rationale methods (ECOR, DROR).

A `RationaleSpace` is built from a concept bank (class -> rationale phrases, e.g. DROR's LLM
rationales or PH2's dermoscopic criteria per diagnosis):

- `vocab`: the V distinct rationale phrases (bank order, duplicates merged case-insensitively);
- `sets`: the S candidate rationale sets R, as tuples of vocabulary indices: every phrase alone
  (`sets="single"`, default) or each class's phrase list as one set (`sets="class"`);
- `pair_mask` (C, S): the candidate pairs (c, R): every combination (`pairs="all"`, default: ECOR's
  Eq. 5 takes "all permutations of categories and rationales") or those the bank links
  (`pairs="bank"`: R within the class's rationales; ours);
- `class_truth` (C, V): the bank's rationales of each class (class-level truth where no per-image
  annotation exists).

Per-image truth: `dataset_rationales(dataset)` reads each sample's annotated phrases (PH2's
dermoscopic criteria, or `attrs["rationales"]`) and `space.truth(...)` turns them into (N, V).

Prompts come from the knowledge templates: the rationale prompt "There are {r1} and {r2} in the
photo." (P(R | I)) and the category-given-rationale prompt "This is a photo of a {c} because there
is {r}." (P(c | R, I)), a set's phrases joined by " and ".

Shared mechanics (below the space): softmax within groups of pairs, top-k max voting, the
multi-positive cross-entropy, the positive pairs of an image, the bank loader (no default bank)
and template checks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Collection, Mapping, Sequence

import torch

from conceptclip.errors import ConfigError
from conceptclip.knowledge.prompts import display_name, rationale_prompt
from conceptclip.knowledge.resolve import check_class_map, dataset_image_annotations, load_bank_any, resolve_bank
from conceptclip.knowledge.schema import ConceptBank
from conceptclip.knowledge.templates import ECOR_CATEGORY, ECOR_RATIONALE, PromptTemplate

SET_KINDS = ("single", "class")
FIELDS = ("phrase", "rationale")
PAIR_KINDS = ("all", "bank")
CONDITIONAL_SOFTMAX = ("all", "grouped")
# a set's phrases read "r1 and r2" in both prompts
CATEGORY_TEMPLATE = replace(ECOR_CATEGORY, joiner=" and ")


def _phrase_key(text: str) -> str:
    """Rationale phrases are one vocabulary entry when equal after lower-casing, "_" -> " " and
    collapsing whitespace (class names are matched by `knowledge.resolve.match_name`)."""
    return " ".join(text.replace("_", " ").lower().split())


def clean_phrase(phrase: str) -> str:
    """A bank phrase as it goes into a sentence: trailing full stops dropped, first letter lower-cased
    unless the first word looks like an acronym ("Two wings" -> "two wings", "MRI" stays)."""
    p = " ".join(phrase.split()).rstrip(". ")
    first = p.split(" ", 1)[0]
    if first[:1].isupper() and not first[1:2].isupper():
        p = p[:1].lower() + p[1:]
    return p


@dataclass
class RationaleSpace:
    classnames: list[str]
    vocab: list[str]
    sets: list[tuple[int, ...]]
    pair_mask: torch.Tensor  # (C, S) bool
    class_truth: torch.Tensor  # (C, V) bool
    bank_name: str = ""
    bank_hash: str = ""

    @property
    def set_matrix(self) -> torch.Tensor:
        """(S, V) bool: rationale r belongs to set R."""
        m = torch.zeros(len(self.sets), len(self.vocab), dtype=torch.bool)
        for s, members in enumerate(self.sets):
            m[s, list(members)] = True
        return m

    def set_phrases(self, s: int) -> list[str]:
        return [self.vocab[v] for v in self.sets[s]]

    def rationale_prompts(self, template: PromptTemplate = ECOR_RATIONALE) -> list[str]:
        """One P(R | I) prompt per candidate set, e.g. "There are blue-whitish veil in the photo."."""
        return [rationale_prompt(self.set_phrases(s), template) for s in range(len(self.sets))]

    def pair_prompts(self, template: PromptTemplate = CATEGORY_TEMPLATE) -> tuple[list[str], torch.Tensor]:
        """P(c | R, I) prompts of the candidate pairs and their (P, 2) (class, set) indices, class-major."""
        index = self.pair_mask.nonzero()
        texts = [template.fill(classname=display_name(self.classnames[c]), rationale=self.set_phrases(s))
                 for c, s in index.tolist()]
        return texts, index

    def truth(self, per_image: Sequence[Sequence[str]]) -> torch.Tensor:
        """Multi-hot (N, V) of each image's annotated rationale phrases (matched case-insensitively;
        phrases outside the vocabulary cannot be predicted and are left out)."""
        pos = {_phrase_key(p): i for i, p in enumerate(self.vocab)}
        out = torch.zeros(len(per_image), len(self.vocab))
        for n, phrases in enumerate(per_image):
            for p in phrases:
                i = pos.get(_phrase_key(clean_phrase(p)))
                if i is not None:
                    out[n, i] = 1.0
        return out

    def positive_sets(self, truth: torch.Tensor) -> torch.Tensor:
        """(B, S) bool: candidate set R is right for the image, R ⊆ T_i (every rationale in it is true)."""
        return positive_sets(self.set_matrix, truth)

    def sets_to_multihot(self, set_index: torch.Tensor) -> torch.Tensor:
        """Predicted set indices (B,) -> rationale multi-hot (B, V)."""
        return self.set_matrix.to(set_index.device)[set_index].float()

    def summary(self) -> dict:
        return {"bank": self.bank_name, "bank_hash": self.bank_hash, "vocabulary": len(self.vocab),
                "sets": len(self.sets), "pairs": int(self.pair_mask.sum())}


def dataset_rationales(dataset: Any) -> list[list[str] | None] | None:
    """The annotated rationale phrases of every sample of `dataset`, in `dataset.samples` order (None
    for a sample without annotations), or None when no sample has any. Sources: a sample's
    `attrs["rationales"]` (a list of phrases, for datasets built in code); for a registered dataset with
    an "annotations" bank (`knowledge.resolve.dataset_image_annotations`; PH2: the dermoscopic criteria
    of its labels.csv, `knowledge.ph2_concepts_per_image`, the phrases of the `ph2` bank, as
    benchmarks/ecor_ph2.py uses)."""
    samples = list(getattr(dataset, "samples", None) or [])
    per: list[list[str] | None] = [list(s.attrs["rationales"]) if "rationales" in s.attrs else None for s in samples]
    annotated = dataset_image_annotations(dataset)  # a registered dataset's per-image annotations (PH2's criteria)
    if annotated is not None:
        per = [p if p is not None else annotated.get(s.id) for p, s in zip(per, samples)]
    return per if any(p is not None for p in per) else None


def match_bank_classes(bank: ConceptBank, classnames: Sequence[str],
                       class_map: Mapping[str, str] | None = None) -> list[str]:
    """The bank class of every class name (`knowledge.resolve.match_name`, or through `class_map`)."""
    class_map = check_class_map(class_map, classnames)
    resolved = resolve_bank(bank.name, classnames, class_map=class_map, bank=bank)
    if resolved.missing:
        raise ConfigError(f"rationale bank {bank.name!r} has no rationales for class(es) {resolved.missing} "
                          f"(bank classes: {', '.join(list(bank.classes)[:20])}{' ...' if len(bank.classes) > 20 else ''}); "
                          "map them with class_map")
    return [t for t in resolved.targets if t is not None]


def build_rationale_space(bank: ConceptBank, classnames: Sequence[str], *, class_map: Mapping[str, str] | None = None,
                          sets: str = "single", pairs: str = "all", max_per_class: int = 0,
                          field: str = "phrase") -> RationaleSpace:
    """The rationale space of `classnames` from `bank` (see the module docstring). `field="rationale"`
    reads each concept's rationale text where it has one (DROR's ImageNet graphs: "body is olive
    green"), else its phrase."""
    if field not in FIELDS:
        raise ConfigError(f"rationale_field={field!r}: expected one of {FIELDS}")
    if sets not in SET_KINDS:
        raise ConfigError(f"rationale_sets={sets!r}: expected one of {SET_KINDS}")
    if pairs not in PAIR_KINDS:
        raise ConfigError(f"pairs={pairs!r}: expected one of {PAIR_KINDS}")
    if max_per_class < 0:
        raise ConfigError(f"max_rationales={max_per_class}: expected 0 (all) or a positive integer")
    targets = match_bank_classes(bank, classnames, class_map)
    vocab: list[str] = []
    pos: dict[str, int] = {}
    per_class: list[list[int]] = []
    for c, target in zip(classnames, targets):
        concepts = bank.classes[target].concepts
        phrases = [clean_phrase(c.rationale if field == "rationale" and c.rationale else c.phrase) for c in concepts]
        phrases = [p for p in phrases if p]
        if max_per_class:
            phrases = phrases[:max_per_class]
        if not phrases:
            raise ConfigError(f"rationale bank {bank.name!r}: class {target!r} (for {c!r}) has no rationales")
        idx = []
        for p in phrases:
            k = _phrase_key(p)
            if k not in pos:
                pos[k] = len(vocab)
                vocab.append(p)
            if pos[k] not in idx:
                idx.append(pos[k])
        per_class.append(idx)
    n_c, n_v = len(classnames), len(vocab)
    class_truth = torch.zeros(n_c, n_v, dtype=torch.bool)
    for c, idx in enumerate(per_class):
        class_truth[c, idx] = True
    if sets == "single":
        set_list = [(v,) for v in range(n_v)]
    else:
        set_list = list(dict.fromkeys(tuple(idx) for idx in per_class))
    if pairs == "all":
        mask = torch.ones(n_c, len(set_list), dtype=torch.bool)
    else:
        mask = torch.tensor([[set(s) <= set(idx) for s in set_list] for idx in per_class], dtype=torch.bool)
    return RationaleSpace(list(classnames), vocab, set_list, mask, class_truth, bank.name, bank.content_hash)


# ---------------------------------------------------------------------------------------------
# probabilities, decisions and losses over the P candidate pairs (shared by ECOR and DROR): every
# function works on the pair list (class index `pair_class`, set index `pair_set`), never a dense
# (C, S) grid, so large banks stay small in memory
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
    """ECOR's inference (Eq. 11 and the text after it): the top k pairs by joint probability (ties to
    the lower pair index) vote, votes_c = #{top-k pairs of class c}, and c* = argmax_c votes_c ("max
    voting"). Ours where the paper is silent: vote ties go to the highest max_R P(c, R | I); class
    scores votes_c + max_R P(c, R | I) / 2 (the half keeps the vote order for a joint <= 1)."""
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
    """c* = argmax_c sum_R P(c, R | I) (our variant `decision="marginal"`); scores: the log marginals."""
    marg = grouped_logsumexp(log_joint, pair_class, n_classes)
    best, best_pair = best_pair_per_class(log_joint, pair_class, n_classes)
    pred = marg.argmax(1)
    return Decision(pred, best_pair.gather(1, pred[:, None]).squeeze(1), torch.zeros_like(marg), best, best_pair, marg)


def multi_positive_nll(log_probs: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Mean over rows with a positive of -(1/|pos|) sum_{j in pos} log p_j: ECOR's L_CLIP (Eq. 1) for
    one positive per image (the paper's data: one rationale per image); with several true rationales
    (PH2) the cross-entropy against the uniform distribution over them (ours)."""
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


def conditional_log_softmax(pair_logits: torch.Tensor, group: torch.Tensor, n_groups: int, over: str) -> torch.Tensor:
    """log of a conditional distribution over the candidate pairs (B, P): `over="all"` one softmax
    over every pair (ECOR's Eq. 5: "among all possible conditional prompts ... all permutations of
    categories and rationales"); `over="grouped"` a softmax within each group (pairs sharing R for
    P(c | R, I), sharing c for P(R | c, I); our reading, a normalised conditional)."""
    if over == "all":
        return pair_logits.log_softmax(-1)
    if over == "grouped":
        return grouped_log_softmax(pair_logits, group, n_groups)
    raise ConfigError(f"conditional_softmax={over!r}: expected one of {CONDITIONAL_SOFTMAX}")


def load_bank_spec(spec: str, exclude: Collection[str] | None = None, method: str = "a rationale method") -> ConceptBank:
    """A `ConceptBank` from a bank JSON file or a shared-bank name (`exclude`: see `load_bank_any`).
    No default bank: a bank belongs to its dataset's classes (PH2's criteria mean nothing for other
    classes), so an empty spec is a ConfigError naming the option."""
    if not spec:
        raise ConfigError(f"{method}: option 'bank' is required (there is no default bank): pass the rationale bank "
                          "of your classes, e.g. --set bank=my_bank.json (class -> rationale phrases, see "
                          "docs/own-data.md), or a shared bank whose classes match yours such as bank=dror/cifar10 "
                          "(bank=ph2 only for PH2's three diagnoses)")
    return load_bank_any(spec, exclude)


def checked_template(name: str, text: str, slots: set[str]) -> PromptTemplate:
    """A prompt template whose slots must be exactly `slots` (ConfigError naming the option otherwise)."""
    t = PromptTemplate(name, text, joiner=" and ")
    try:
        have = t.slots
    except ValueError as exc:
        raise ConfigError(f"{name}={text!r}: not a format string ({exc})") from None
    if have != slots:
        raise ConfigError(f"{name}={text!r}: expected exactly the slot(s) {sorted(slots)}, got {sorted(have)}")
    return t


def positive_sets(set_matrix: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """(B, S) bool: candidate set R is right for the image, R ⊆ T_i (every rationale in it is true)."""
    wrong = (set_matrix.to(truth.device).unsqueeze(0) & ~truth.bool().unsqueeze(1)).any(-1)
    return ~wrong


@dataclass
class SampleTruth:
    """Per-image rationale truth of a dataset: `truth` (N, V) bool, `annotated` (N,) bool, indexed by
    the engine batches' "sample" rows (the image's row in `dataset.samples`)."""

    truth: torch.Tensor
    annotated: torch.Tensor
    source: str


def sample_truth(space: RationaleSpace, dataset: Any) -> SampleTruth | None:
    """The per-image truth table of `dataset` in `space`'s vocabulary, or None when the dataset has no
    per-image rationale annotations (`dataset_rationales`)."""
    per = dataset_rationales(dataset) if dataset is not None else None
    if per is None:
        return None
    annotated = torch.tensor([p is not None for p in per], dtype=torch.bool)
    source = (f"image: dataset {getattr(dataset, 'name', '?')!r} annotations by batch 'sample' ({int(annotated.sum())} "
              f"of {len(per)} images annotated; the others and batches without 'sample' use the class's rationales)")
    return SampleTruth(space.truth([p or () for p in per]).bool(), annotated, source)


def rationale_targets(batch: Mapping[str, torch.Tensor], class_truth: torch.Tensor,
                      table: SampleTruth | None, per_image: bool = True) -> torch.Tensor:
    """(B, V) true rationales of a batch: with `per_image`, the batch's "rationales" multi-hot when
    given; else the `table` rows picked by the batch's "sample" key; else (and for unannotated
    images, or `per_image=False`) the true class's bank rationales `class_truth[labels]`."""
    class_level = class_truth[batch["labels"]]
    if not per_image:
        return class_level
    if "rationales" in batch:
        t = batch["rationales"]
        if t.dim() != 2 or t.shape[1] != class_truth.shape[1]:
            raise ConfigError(f"batch 'rationales': expected (B, {class_truth.shape[1]}) multi-hot over the "
                              f"rationale vocabulary, got {tuple(t.shape)}")
        return t.bool()
    if table is None or "sample" not in batch:
        return class_level
    rows = batch["sample"].long()
    n = table.truth.shape[0]
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= n):
        raise ConfigError(f"batch 'sample': rows must index the method's dataset of {n} images, got values in "
                          f"[{int(rows.min())}, {int(rows.max())}]")
    rows = rows.to(table.truth.device)
    return torch.where(table.annotated[rows].unsqueeze(1), table.truth[rows], class_level)
