"""Built-in datasets by name, with the knowledge banks that belong to them, and `load_dataset`.

A `DatasetEntry` says how to load a named dataset and which shared bank (a name of
`knowledge.loaders.load_shared_bank`) serves it for each use:

- `"concepts"`: the default concept bank of the concept-prompt methods on this dataset (DEAL's
  concept lists when the run's dataset has this name, XCoOp's clinical concepts when a method's
  classes are this dataset's classes); methods given no bank on other datasets refuse to guess;
- `"annotations"`: the bank counted from this dataset's per-image annotations, whose phrases are
  the images' rationale truth (ECOR/DROR) and whose counts must leave out a run's test images
  (`knowledge.resolve.load_bank_any(..., exclude=split.tested_ids())`).

Everything else (folders, CSV/JSON manifests) is named by its path. `register_dataset` adds an
entry; the knowledge layer reads the table through `knowledge.resolve`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from conceptclip.data.dataset import Dataset, from_csv, from_folder, from_json, read_class_list
from conceptclip.data.ph2 import PH2_CLASSES, load_ph2
from conceptclip.errors import DataError

BANK_USES = ("concepts", "annotations")


@dataclass(frozen=True)
class DatasetEntry:
    """A named dataset: its loader (keyword options as `load_dataset`'s), its classes in label order
    and its banks per use (`BANK_USES`)."""

    name: str
    load: Callable[..., Dataset]
    classes: tuple[str, ...]
    banks: Mapping[str, str] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.banks) - set(BANK_USES))
        if unknown:
            raise DataError(f"dataset {self.name!r}: bank uses {unknown}: expected among {BANK_USES}")


DATASETS: dict[str, DatasetEntry] = {}


def register_dataset(entry: DatasetEntry) -> DatasetEntry:
    """Add (or replace) a named dataset."""
    DATASETS[entry.name] = entry
    return entry


def dataset_entry(name: str | None) -> DatasetEntry | None:
    """The entry registered under exactly `name` (a dataset's `name`, e.g. "ph2"), or None."""
    return DATASETS.get(name) if name else None


register_dataset(DatasetEntry(
    "ph2", load_ph2, tuple(PH2_CLASSES), {"concepts": "ph2", "annotations": "ph2"},
    "PH2 dermoscopy, 200 images, 3 diagnoses, per-image dermoscopic criteria (../shared/data/ph2)"))


def load_dataset(spec: str | Path, *, classes: str | Path | list[str] | None = None, **kwargs: Any) -> Dataset:
    """A registered name (`ph2`, the embedded default), a class-folder directory, a .csv or a .json manifest.

    `classes`: the class list in index order (a list, comma-separated names or a file with one
    per line, see `read_class_list`); for a CSV/JSON manifest it fixes the classes and their order,
    for a folder or a registered name it must equal the dataset's own classes."""
    spec_s = str(spec)
    names = None if classes is None else list(classes) if isinstance(classes, list) else read_class_list(classes)
    path = Path(spec_s)
    entry = dataset_entry(spec_s)
    if entry is None and not path.is_dir() and path.suffix.lower() in (".csv", ".json"):
        loader = from_csv if path.suffix.lower() == ".csv" else from_json
        return loader(path, classnames=names, **kwargs)
    if entry is not None:
        ds = entry.load(**kwargs)
    elif path.is_dir():
        ds = from_folder(path, **kwargs)
    else:
        known = ", ".join(repr(n) for n in DATASETS)
        raise DataError(f"dataset {spec_s!r}: expected {known}, a folder of class sub-folders, a .csv or a .json manifest")
    if names is not None and names != ds.classnames:
        raise DataError(f"--classes {names}: dataset {spec_s!r} has the classes {ds.classnames} (from its "
                        "folders); a class list reorders only CSV/JSON manifests")
    return ds
