"""Splits are files: hold-out, few-shot (K shots x seed) and base-to-novel manifests.

Every run writes its split manifest to JSON before training and reads only that; the manifest's
sha256 goes into the results folder. Sampling is deterministic (numpy Generator seeded from the
split parameters, over ids sorted by name), so the same dataset and parameters give the same
file byte for byte. Validation is for model selection; the test part is read once, at the end.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from conceptclip.data.dataset import Dataset
from conceptclip.errors import DataError

SPLIT_VERSION = 1


@dataclass
class Split:
    """Named parts (`train`, `val`, `test`, and for base-to-novel `test_base`/`test_novel`) of one
    dataset; `classes` names the class subsets (`base`, `novel`) where they differ from all."""

    dataset: str
    fingerprint: str
    kind: str
    params: dict
    parts: dict[str, list[str]]
    classes: dict[str, list[str]] = field(default_factory=dict)
    version: int = SPLIT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    def tested_ids(self) -> list[str]:
        """Ids of every test part ("test", "test_base", "test_novel"), in part order."""
        return [i for name, ids in self.parts.items() if name.startswith("test") for i in ids]

    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def save(self, path: str | Path) -> Path:
        from conceptclip.io import write_text

        return write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path, dataset: Dataset | None = None) -> "Split":
        """Read and validate a split file (and, with `dataset`, that every id exists in it)."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: split file not found")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: not a valid split file ({exc})") from None
        except RecursionError:
            raise DataError(f"{path}: not a valid split file (JSON nested too deeply)") from None
        need = {"dataset", "fingerprint", "kind", "params", "parts"}
        if not isinstance(doc, dict) or not need <= set(doc):
            raise DataError(f"{path}: expected a split object with fields {sorted(need)}")
        parts = doc["parts"]
        if not isinstance(parts, dict) or not all(isinstance(v, list) and all(isinstance(i, str) for i in v)
                                                   for v in parts.values()):
            raise DataError(f"{path}: 'parts' must map part names to lists of sample ids")
        classes, version = doc.get("classes", {}), doc.get("version", SPLIT_VERSION)
        if not isinstance(classes, dict) or not all(isinstance(v, list) and all(isinstance(c, str) for c in v)
                                                    for v in classes.values()):
            raise DataError(f"{path}: 'classes' must map subset names to lists of class names")
        for key, typ, what in (("dataset", str, "a string"), ("fingerprint", str, "a string"),
                               ("kind", str, "a string"), ("params", dict, "an object")):
            if not isinstance(doc[key], typ):
                raise DataError(f"{path}: {key!r} must be {what}, got {type(doc[key]).__name__}")
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= SPLIT_VERSION:
            raise DataError(f"{path}: 'version' must be an integer from 1 to {SPLIT_VERSION}, got {version!r}")
        split = cls(**{k: doc[k] for k in ("dataset", "fingerprint", "kind", "params", "parts")},
                    classes=classes, version=version)
        if dataset is not None:
            for name, ids in parts.items():
                missing = [i for i in ids if i not in dataset._index]
                if missing:
                    raise DataError(f"{path}: part {name!r} names ids not in dataset {dataset.name!r}: {missing[:5]}")
        return split

    def check_disjoint(self) -> None:
        seen: dict[str, str] = {}
        for name in ("train", "val", "test", "align"):
            for i in self.parts.get(name, []):
                if i in seen:
                    raise DataError(f"split {self.kind}: id {i!r} is in both {seen[i]!r} and {name!r}")
                seen[i] = name


def _by_class(dataset: Dataset, ids: list[str]) -> dict[int, list[str]]:
    if dataset.multilabel:
        raise DataError(f"dataset {dataset.name!r} is multi-label: train on the whole pool (--shots 0, "
                        "holdout_split in Python); class-stratified few-shot sampling needs one label per image")
    groups: dict[int, list[str]] = {c: [] for c in range(len(dataset.classnames))}
    for i in sorted(ids):
        groups[dataset.by_id(i).label].append(i)
    return groups


def _rng(*keys: object) -> np.random.Generator:
    seed = int.from_bytes(hashlib.sha256(repr(keys).encode()).digest()[:8], "little")
    return np.random.default_rng(seed)


def holdout_split(dataset: Dataset, train: float = 0.5, val: float = 0.2, seed: int = 0, align: float = 0.0) -> Split:
    """Stratified train/val/test pools (fractions per class; test gets the rest).

    `align` > 0 first sets that fraction of every class aside as an "align" part (for aligning the
    `lite` heads on images no train, val or test part holds); train/val/test are then those
    fractions of the remaining images."""
    if not (0 < train < 1 and 0 <= val < 1 and train + val < 1):
        raise DataError(f"holdout fractions train={train}, val={val}: expected 0 < train, 0 <= val, train + val < 1")
    if not 0 <= align < 1:
        raise DataError(f"holdout fraction align={align}: expected 0 <= align < 1")
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    if align:
        parts["align"] = []
    groups = ({0: sorted(s.id for s in dataset.samples)} if dataset.multilabel
              else _by_class(dataset, [s.id for s in dataset.samples]))
    for c, ids in groups.items():
        if align:
            order = [ids[j] for j in _rng("holdout-align", dataset.name, seed, c).permutation(len(ids))]
            n_al = round(len(ids) * align)
            parts["align"] += order[:n_al]
            ids = sorted(order[n_al:])
        order = [ids[j] for j in _rng("holdout", dataset.name, seed, c).permutation(len(ids))]
        n_tr, n_va = round(len(ids) * train), round(len(ids) * val)
        parts["train"] += order[:n_tr]
        parts["val"] += order[n_tr:n_tr + n_va]
        parts["test"] += order[n_tr + n_va:]
    parts = {k: sorted(v) for k, v in parts.items()}
    params: dict = {"train": train, "val": val, "seed": seed}
    if align:
        params["align"] = align
    return Split(dataset.name, dataset.fingerprint(), "holdout", params, parts)


def fewshot_split(dataset: Dataset, pools: Split, shots: int, seed: int, classes: list[int] | None = None) -> Split:
    """K shots per class from the train pool, min(K, 4) per class from the val pool, test untouched."""
    if shots < 1:
        raise DataError(f"shots={shots}: expected a positive number of images per class")
    classes = list(range(len(dataset.classnames))) if classes is None else classes
    train_g, val_g = _by_class(dataset, pools.parts["train"]), _by_class(dataset, pools.parts["val"])
    n_val = min(shots, 4)
    parts: dict[str, list[str]] = {"train": [], "val": []}
    for c in classes:
        for part, group, k in (("train", train_g[c], shots), ("val", val_g[c], n_val)):
            if len(group) < k:
                raise DataError(f"class {dataset.classnames[c]!r} has {len(group)} images in the {part} pool of "
                                f"{dataset.name!r}, fewer than the {k} needed for {shots}-shot")
            pick = _rng("fewshot", dataset.name, part, shots, seed, c).choice(len(group), size=k, replace=False)
            parts[part] += [group[j] for j in sorted(pick)]
    parts = {k: sorted(v) for k, v in parts.items()}
    keep = set(classes)
    parts["test"] = sorted(i for i in pools.parts["test"] if dataset.multilabel or dataset.by_id(i).label in keep)
    return Split(dataset.name, dataset.fingerprint(), "fewshot", {"shots": shots, "seed": seed, "pools": pools.sha256()},
                 parts)


def base2novel_split(dataset: Dataset, pools: Split, shots: int, seed: int) -> Split:
    """Base = the first ceil(C/2) classes: few-shot train/val on base; test split into base and novel."""
    n = len(dataset.classnames)
    if n < 2:
        raise DataError(f"dataset {dataset.name!r} has {n} class; base-to-novel needs at least 2")
    n_base = math.ceil(n / 2)
    base = list(range(n_base))
    fs = fewshot_split(dataset, pools, shots, seed, classes=base)
    test = pools.parts["test"]
    parts = {"train": fs.parts["train"], "val": fs.parts["val"],
             "test_base": sorted(i for i in test if dataset.by_id(i).label < n_base),
             "test_novel": sorted(i for i in test if dataset.by_id(i).label >= n_base)}
    return Split(dataset.name, dataset.fingerprint(), "base2novel",
                 {"shots": shots, "seed": seed, "pools": pools.sha256()}, parts,
                 classes={"base": dataset.classnames[:n_base], "novel": dataset.classnames[n_base:]})


def write_split(split: Split, path: str | Path) -> Path:
    """Write the manifest (atomic); refuse to silently replace a different one at the same path."""
    path = Path(path)
    if path.exists():
        try:
            old = Split.load(path)
        except DataError:
            old = None
        if old is not None and old.sha256() != split.sha256():
            raise DataError(f"{path}: a different split manifest already exists here; remove it or choose another path")
    return split.save(path)


__all__ = ["Split", "holdout_split", "fewshot_split", "base2novel_split", "write_split"]
