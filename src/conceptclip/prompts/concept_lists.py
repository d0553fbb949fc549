"""Per-class concept lists for concept-level prompts (DEAL's "[CAT] with [C_k]", and any method that
prompts one concept at a time): resolved from a knowledge bank or given directly, with where each
class's concepts came from, and the padded index tables that let a batch pick each image's own
class's concepts.

Classes can have different numbers of concepts. Flattened, concept j of class c is row
`offsets[c] + j` of a (T, ...) tensor of all T concept prompts; `index` (C, Kmax) holds those rows
(padding repeats the class's first concept) and `mask` (C, Kmax) marks the real ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Collection, Mapping, Sequence

import torch

from conceptclip.errors import ConfigError
from conceptclip.knowledge.resolve import check_class_map, match_classes, resolve_bank


@dataclass
class ConceptLists:
    """`concepts[i]` are the concept phrases of class `classnames[i]`; `sources[c]` says where they came from."""

    classnames: list[str]
    concepts: list[list[str]]
    sources: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.classnames) != len(self.concepts):
            raise ConfigError(f"concept lists: {len(self.classnames)} classes but {len(self.concepts)} lists")
        for c, phrases in zip(self.classnames, self.concepts):
            if not phrases:
                raise ConfigError(f"concept lists: class {c!r} has no concepts")
            if any(not isinstance(p, str) or not p.strip() for p in phrases):
                raise ConfigError(f"concept lists: class {c!r} has an empty or non-text concept: {phrases!r}")

    @property
    def counts(self) -> list[int]:
        return [len(p) for p in self.concepts]

    @property
    def max_concepts(self) -> int:
        return max(self.counts)

    @property
    def flat(self) -> list[tuple[int, str]]:
        """(class index, phrase) of every concept, class by class."""
        return [(c, p) for c, phrases in enumerate(self.concepts) for p in phrases]

    def tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """index (C, Kmax) of flat concept rows (padding repeats the class's first row) and mask (C, Kmax)."""
        k = self.max_concepts
        index = torch.zeros(len(self.concepts), k, dtype=torch.long)
        mask = torch.zeros(len(self.concepts), k, dtype=torch.bool)
        start = 0
        for c, n in enumerate(self.counts):
            index[c] = start
            index[c, :n] = torch.arange(start, start + n)
            mask[c, :n] = True
            start += n
        return index, mask

    def summary(self) -> dict[str, Any]:
        return {"sources": dict(self.sources),
                "concepts": {c: list(p) for c, p in zip(self.classnames, self.concepts)}}


def resolve_concepts(classnames: Sequence[str], *, concepts: Mapping[str, Sequence[str]] | None = None,
                     bank: str = "", class_map: Mapping[str, str] | None = None,
                     top_k: int | None = None, bank_exclude: Collection[str] | None = None) -> ConceptLists:
    """Concept phrases per class, in bank order, at most `top_k` each.

    `concepts` ({class: phrases}, given directly) wins; otherwise `bank` is a shared-bank name
    (e.g. "deal/cub", "ph2") or a bank JSON file, its classes matched to the class names by
    `knowledge.resolve.match_name` or through `class_map` {class: bank class}. Every class must get
    at least one concept: a concept-level method has nothing to prompt otherwise. `bank_exclude`:
    image ids a bank counted from per-image annotations ("ph2") must not count (`load_bank_any`).
    """
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top_k={top_k}: expected a positive number of concepts per class")
    class_map = check_class_map(class_map, classnames)
    if concepts is not None:
        lists, sources = [], {}
        for c, hit in zip(classnames, match_classes(classnames, concepts, class_map)):
            phrases = list(concepts[hit]) if hit is not None else None
            if not phrases:
                raise ConfigError(f"concepts: no concept phrases given for class {c!r} (got classes {list(concepts)})")
            lists.append(phrases[:top_k])
            sources[c] = "given"
        return ConceptLists(list(classnames), lists, sources)
    if not bank:
        raise ConfigError("no concepts: set the bank (a shared-bank name such as 'deal/cub' or 'ph2', or a bank "
                          "JSON file) or pass concepts={class: [phrases]}")
    from conceptclip.knowledge.prompts import select_concepts

    resolved = resolve_bank(bank, classnames, class_map=class_map, exclude=bank_exclude)
    b = resolved.bank
    lists, sources = [], {}
    for c, hit in zip(classnames, resolved.targets):
        target = class_map.get(c, c)
        if hit is None:
            raise ConfigError(f"bank {b.name!r} has no class {target!r} (for class {c!r}); its classes: "
                              f"{', '.join(list(b.classes)[:20])}{' ...' if len(b.classes) > 20 else ''}; "
                              "map it with class_map")
        phrases = [x.phrase for x in select_concepts(b, hit, top_k)]
        if not phrases:
            raise ConfigError(f"bank {b.name!r}: class {target!r} has no positive concepts")
        lists.append(phrases)
        sources[c] = f"bank {b.name}: {hit}"
    return ConceptLists(list(classnames), lists, sources)
