"""Rationale spaces: which (category, rationale set) pairs a doubly-right model scores, and their prompts.

A `RationaleSpace` is built from a concept bank (class -> rationale phrases, e.g. DROR's LLM
rationales or PH2's dermoscopic criteria per diagnosis):

- `vocab`: the V distinct rationale phrases (bank order, duplicates merged case-insensitively);
- `sets`: the S candidate rationale sets R, as tuples of vocabulary indices: every phrase alone
  (`sets="single"`, default) or each class's phrase list as one set (`sets="class"`);
- `pair_mask` (C, S): the candidate pairs (c, R): those the bank links (`pairs="bank"`: R within
  the class's rationales) or every combination (`pairs="all"`);
- `class_truth` (C, V): the bank's rationales of each class (class-level truth where no per-image
  annotation exists).

Per-image truth: `dataset_rationales(dataset)` reads each sample's annotated phrases (PH2's
dermoscopic criteria, or `attrs["rationales"]`) and `space.truth(...)` turns them into (N, V).

Prompts come from the knowledge templates: the rationale prompt "There are {r1} and {r2} in the
photo." (P(R | I)) and the category-given-rationale prompt "This is a photo of a {c} because there
is {r}." (P(c | R, I)), a set's phrases joined by " and ".
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from conceptclip.errors import ConfigError
from conceptclip.knowledge.prompts import display_name, rationale_prompt
from conceptclip.knowledge.schema import ConceptBank
from conceptclip.knowledge.templates import ECOR_CATEGORY, ECOR_RATIONALE, PromptTemplate

SET_KINDS = ("single", "class")
FIELDS = ("phrase", "rationale")
PAIR_KINDS = ("bank", "all")
# a set's phrases read "r1 and r2" in both prompts
CATEGORY_TEMPLATE = replace(ECOR_CATEGORY, joiner=" and ")


def _key(text: str) -> str:
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
        pos = {_key(p): i for i, p in enumerate(self.vocab)}
        out = torch.zeros(len(per_image), len(self.vocab))
        for n, phrases in enumerate(per_image):
            for p in phrases:
                i = pos.get(_key(clean_phrase(p)))
                if i is not None:
                    out[n, i] = 1.0
        return out

    def positive_sets(self, truth: torch.Tensor) -> torch.Tensor:
        """(B, S) bool: candidate set R is right for the image, R ⊆ T_i (every rationale in it is true)."""
        m = self.set_matrix.to(truth.device)
        wrong = (m.unsqueeze(0) & ~truth.bool().unsqueeze(1)).any(-1)  # some member not in the truth
        return ~wrong

    def sets_to_multihot(self, set_index: torch.Tensor) -> torch.Tensor:
        """Predicted set indices (B,) -> rationale multi-hot (B, V)."""
        return self.set_matrix.to(set_index.device)[set_index].float()

    def summary(self) -> dict:
        return {"bank": self.bank_name, "bank_hash": self.bank_hash, "vocabulary": len(self.vocab),
                "sets": len(self.sets), "pairs": int(self.pair_mask.sum())}


def dataset_rationales(dataset: Any) -> list[list[str] | None] | None:
    """The annotated rationale phrases of every sample of `dataset`, in `dataset.samples` order (None
    for a sample without annotations), or None when no sample has any. Sources: a sample's
    `attrs["rationales"]` (a list of phrases, for datasets built in code); for PH2 (`load_ph2`), the
    dermoscopic criteria of its labels.csv (`knowledge.ph2_concepts_per_image`, the phrases of the
    `ph2` bank, as benchmarks/ecor_ph2.py uses)."""
    samples = list(getattr(dataset, "samples", None) or [])
    per: list[list[str] | None] = [list(s.attrs["rationales"]) if "rationales" in s.attrs else None for s in samples]
    root = getattr(dataset, "root", None)
    labels_csv = Path(root) / "labels.csv" if root is not None else None
    if getattr(dataset, "name", "") == "ph2" and labels_csv is not None and labels_csv.is_file():
        from conceptclip.knowledge.skin import ph2_concepts_per_image

        criteria = ph2_concepts_per_image(labels_csv)
        per = [p if p is not None else criteria.get(s.id) for p, s in zip(per, samples)]
    return per if any(p is not None for p in per) else None


def match_bank_classes(bank: ConceptBank, classnames: Sequence[str],
                       class_map: Mapping[str, str] | None = None) -> list[str]:
    """The bank class of every class name (case/underscore-insensitive, or through `class_map`)."""
    class_map = dict(class_map or {})
    unknown = sorted(set(class_map) - set(classnames))
    if unknown:
        raise ConfigError(f"class_map names classes {unknown} that are not among {list(classnames)}")
    by_key = {_key(c): c for c in bank.classes}
    out, missing = [], []
    for c in classnames:
        target = by_key.get(_key(class_map.get(c, c)))
        if target is None:
            missing.append(c)
        out.append(target)
    if missing:
        raise ConfigError(f"rationale bank {bank.name!r} has no rationales for class(es) {missing} "
                          f"(bank classes: {', '.join(list(bank.classes)[:20])}{' ...' if len(bank.classes) > 20 else ''}); "
                          "map them with class_map")
    return out


def build_rationale_space(bank: ConceptBank, classnames: Sequence[str], *, class_map: Mapping[str, str] | None = None,
                          sets: str = "single", pairs: str = "bank", max_per_class: int = 0,
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
            k = _key(p)
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
