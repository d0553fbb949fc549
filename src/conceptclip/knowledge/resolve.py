"""One way from a method's knowledge options to per-class knowledge: which bank, for which classes,
without the tested images' annotations.

Every method that reads a concept, rationale or prompt bank (DEAL through `prompts.concept_lists`,
BiomedCoOp through `prompts.ensembles`, ECOR and DROR through `prompts.rationales`, XCoOp) goes
through here:

- `load_bank_any(spec, exclude)`: a bank JSON file or a shared-bank name (`loaders.load_shared_bank`);
  `exclude` is a run's `split.tested_ids()` (the engine passes it as the method context's
  `knowledge_exclude`): a bank counted from per-image annotations ("ph2") never counts those images.
- `default_bank(use, dataset=..., classnames=...)`: the bank the dataset registry
  (`data.registry`) names for a dataset, by its name or by its classes; "" when none.
- `match_name` / `match_classes`: the ONE class-name matcher (below).
- `resolve_bank(spec, classnames, class_map, exclude)`: the bank and the bank class of every class.
- `dataset_image_annotations(dataset)`: per-image annotated phrases of a registered dataset.

Class-name matching. A name matches the candidate equal to it; failing that, the one candidate
equal to it under `name_key` (lower case, letters and digits only: spaces, "_", "-" and punctuation
dropped), so "apple_pie", "Apple Pie" and "apple-pie" all match "apple pie", "black footed
albatross" matches "Black-footed Albatross", and "COVID_19" matches "covid19". When several
candidates share the key and none is equal, the name is ambiguous (ConfigError naming them). A
`class_map` {class: bank class} is applied first and its targets are matched the same way.

This replaces four matchers: DEAL's concept lists, BiomedCoOp's ensembles and ECOR/DROR's rationale
spaces matched after lower-casing, "_" -> " " and collapsing whitespace ("apple_pie" = "Apple pie",
but "apple-pie" != "apple pie"; on two bank classes with the same key the last one won); XCoOp matched
exactly (so a bank class "apple_pie" never matched a method's class "apple pie"); BiomedCoOp's
per-dataset settings matched dataset names by `name_key` already. Every match the old matchers made
on the shipped banks, PH2 and the test fixtures is the same match here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterable, Mapping, Sequence

from conceptclip.data.registry import DATASETS, dataset_entry
from conceptclip.errors import ConfigError
from conceptclip.knowledge.loaders import image_annotations, load_shared_bank
from conceptclip.knowledge.schema import ConceptBank, load_bank


def name_key(name: str) -> str:
    """The matching key of a name: lower case, letters and digits only ("Apple_Pie" -> "applepie")."""
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


class NameIndex:
    """Candidate names, indexed once for `get` (see the module docstring for the rule)."""

    def __init__(self, candidates: Iterable[str]) -> None:
        self.names = list(dict.fromkeys(candidates))
        self._exact = set(self.names)
        self._by_key: dict[str, list[str]] = {}
        for n in self.names:
            k = name_key(n)
            if k:
                self._by_key.setdefault(k, []).append(n)

    def get(self, name: str) -> str | None:
        """The candidate `name` matches, or None; ConfigError when it matches several."""
        if name in self._exact:
            return name
        hits = self._by_key.get(name_key(name), [])
        if len(hits) > 1:
            raise ConfigError(f"name {name!r} matches several of {hits} (case, spaces, '_' and '-' ignored); "
                              "give the exact one (e.g. through class_map)")
        return hits[0] if hits else None


def match_name(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate `name` matches (exactly, else by `name_key`), or None."""
    return NameIndex(candidates).get(name)


def check_class_map(class_map: Mapping[str, str] | None, known: Sequence[str]) -> dict[str, str]:
    """`class_map` as a dict; its keys must be among `known` (the dataset's classes)."""
    class_map = dict(class_map or {})
    unknown = sorted(set(class_map) - set(known))
    if unknown:
        raise ConfigError(f"class_map names classes {unknown} that are not among {list(known)}")
    return class_map


def match_classes(classnames: Sequence[str], candidates: Iterable[str],
                  class_map: Mapping[str, str] | None = None) -> list[str | None]:
    """The candidate (bank class) of every class name, through `class_map` first; None where none matches."""
    index = NameIndex(candidates)
    class_map = dict(class_map or {})
    return [index.get(class_map.get(c, c)) for c in classnames]


def is_bank_file(spec: str) -> bool:
    return spec.endswith(".json") or Path(spec).is_file()


def load_bank_any(spec: str, exclude: Collection[str] | None = None) -> ConceptBank:
    """A `ConceptBank` from a bank JSON file or a shared-bank name ("biomedcoop/BUSI", "ph2").

    `exclude`: image ids (a run's test images) that a bank counted from per-image annotations ("ph2")
    must not count, so test images never shape the concept lists; ids of other datasets exclude
    nothing, and banks that do not count images ignore it."""
    if is_bank_file(spec):
        return load_bank(spec)
    return load_shared_bank(spec, exclude=exclude)


def default_bank(use: str, *, dataset: str | None = None, classnames: Sequence[str] | None = None) -> str:
    """The bank the dataset registry names for `use` ("concepts", "annotations"): of the dataset called
    `dataset` when given, else of the registered dataset whose classes are `classnames` (the same set
    of names by `name_key`); "" when there is none."""
    if dataset is not None:
        entry = dataset_entry(dataset)
        return entry.banks.get(use, "") if entry is not None else ""
    keys = {name_key(c) for c in classnames or ()}
    for entry in DATASETS.values():
        if use in entry.banks and keys == {name_key(c) for c in entry.classes}:
            return entry.banks[use]
    return ""


@dataclass
class ResolvedBank:
    """A loaded bank and, per class name, the bank class it reads (None where the bank has none)."""

    spec: str
    bank: ConceptBank
    classnames: list[str]
    targets: list[str | None]

    def target(self, classname: str) -> str | None:
        return self.targets[self.classnames.index(classname)]

    @property
    def missing(self) -> list[str]:
        return [c for c, t in zip(self.classnames, self.targets) if t is None]


def resolve_bank(spec: str, classnames: Sequence[str], *, class_map: Mapping[str, str] | None = None,
                 exclude: Collection[str] | None = None, bank: ConceptBank | None = None) -> ResolvedBank:
    """Load `spec` (`load_bank_any`, without the `exclude` images; or take the given `bank`) and match every
    class name to a bank class (`match_classes`, through `class_map`)."""
    b = bank if bank is not None else load_bank_any(spec, exclude)
    return ResolvedBank(spec, b, list(classnames), match_classes(classnames, b.classes, class_map))


def dataset_image_annotations(dataset: Any) -> dict[str, list[str]] | None:
    """{image id: annotated phrases} of a registered dataset with an "annotations" bank, read from the
    dataset's own folder (`dataset.root`); None for other datasets or when the file is absent."""
    root = getattr(dataset, "root", None)
    bank = default_bank("annotations", dataset=getattr(dataset, "name", "") or "")
    if not bank or root is None:
        return None
    return image_annotations(bank, root)
