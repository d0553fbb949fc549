"""Datasets as validated lists of samples: image folders, CSV and JSON manifests.

A `Dataset` is metadata only (ids, paths, labels, captions, masks, attributes); pixels are read
on demand by `images.load_image`. Every loader checks its input and raises `DataError` naming
the file, row and field at fault.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from conceptclip.errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class Sample:
    """One image. `label` is a class index (single-label) and `labels` a tuple of class indices
    (multi-label); `attrs` holds free per-image annotations (e.g. dermoscopic criteria)."""

    id: str
    path: Path
    label: int | None = None
    labels: tuple[int, ...] | None = None
    caption: str | None = None
    mask: Path | None = None
    attrs: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass
class Dataset:
    """A named list of samples over `classnames`; `template` is the class prompt for zero-shot."""

    name: str
    classnames: list[str]
    samples: list[Sample]
    multilabel: bool = False
    template: str = "a photo of a {}."
    root: Path | None = None

    def __post_init__(self) -> None:
        ids = [s.id for s in self.samples]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
            raise DataError(f"dataset {self.name!r}: duplicate sample ids {dup}")
        self._index = {s.id: i for i, s in enumerate(self.samples)}

    def __len__(self) -> int:
        return len(self.samples)

    def by_id(self, sample_id: str) -> Sample:
        try:
            return self.samples[self._index[sample_id]]
        except KeyError:
            raise DataError(f"dataset {self.name!r} has no sample with id {sample_id!r}") from None

    def subset(self, ids: Sequence[str]) -> list[Sample]:
        return [self.by_id(i) for i in ids]

    def targets(self, ids: Sequence[str] | None = None) -> list:
        samples = self.samples if ids is None else self.subset(ids)
        return [s.labels if self.multilabel else s.label for s in samples]

    def fingerprint(self) -> str:
        """Hash of ids, file sizes and mtimes, labels and classnames: changes when any image does."""
        h = hashlib.sha256(json.dumps([self.name, self.classnames, self.multilabel]).encode())
        for s in sorted(self.samples, key=lambda s: s.id):
            try:
                st = s.path.stat()
                stamp = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                stamp = "missing"
            h.update(f"{s.id}|{s.path}|{stamp}|{s.label}|{s.labels}".encode())
        return h.hexdigest()[:16]


def resolve_path(root: Path, value: str, where: str, allow_outside_root: bool = False) -> Path:
    """Resolve a manifest path against `root`; refuse paths that escape it unless allowed."""
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: expected an image path, got {value!r}")
    try:  # resolve() follows symlinks, so a link pointing outside the root escapes it too
        path = (root / value).resolve()
        if not allow_outside_root and not path.is_relative_to(root.resolve()):
            raise DataError(f"{where}: path {value!r} escapes the dataset root {root} "
                            "(pass allow_outside_root=True to permit it)")
        if not path.is_file():
            raise DataError(f"{where}: image file not found: {path}")
    except (ValueError, OSError, RuntimeError) as exc:  # NUL bytes, names too long, symlink loops
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{where}: invalid image path {value[:80]!r} ({type(exc).__name__}: {exc})"[:400]) from None
    return path


def _class_index(classnames: list[str], value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(classnames):
            return value
    elif isinstance(value, str):
        if value in classnames:
            return classnames.index(value)
        if value.strip().isdigit() and int(value) < len(classnames):
            return int(value)
    raise DataError(f"{where}: unknown label {value!r}; expected one of {classnames} or an index < {len(classnames)}")


def from_folder(root: str | Path, name: str | None = None, template: str = "a photo of a {}.") -> Dataset:
    """`root/<class>/<image>`: one sub-folder per class, sorted class names."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: expected one sub-folder per class, found none")
    samples = []
    for ci, cname in enumerate(classes):
        for p in sorted((root / cname).iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                samples.append(Sample(id=f"{cname}/{p.stem}", path=p.resolve(), label=ci))
    if not samples:
        raise DataError(f"{root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the class folders")
    return Dataset(name or root.name, [c.replace("_", " ") for c in classes], samples, template=template, root=root)


def _rows_to_dataset(rows: Iterable[tuple[str, dict]], source: Path, root: Path, name: str,
                     classnames: list[str] | None, image_col: str, label_col: str, multilabel: bool,
                     template: str, allow_outside_root: bool, label_sep: str = ";") -> Dataset:
    rows = list(rows)
    if not rows:
        raise DataError(f"{source}: manifest has no rows")
    if classnames is None:
        seen: list[str] = []
        for _, row in rows:
            vals = row.get(label_col)
            vals = vals if isinstance(vals, list) else str(vals).split(label_sep) if multilabel else [vals]
            for v in vals:
                if v is not None and str(v).strip() and str(v) not in seen:
                    seen.append(str(v).strip())
        classnames = sorted(seen)
    samples = []
    for where, row in rows:
        if image_col not in row:
            raise DataError(f"{where}: missing field {image_col!r}")
        if label_col not in row or row[label_col] in (None, ""):
            raise DataError(f"{where}: missing field {label_col!r}")
        path = resolve_path(root, row[image_col], where, allow_outside_root)
        sid = str(row.get("id") or Path(row[image_col]).with_suffix("").as_posix())
        raw = row[label_col]
        if multilabel:
            vals = raw if isinstance(raw, list) else [v.strip() for v in str(raw).split(label_sep) if v.strip()]
            labels = tuple(sorted({_class_index(classnames, v, where) for v in vals}))
            samples.append(Sample(sid, path, labels=labels, caption=row.get("caption") or None))
        else:
            samples.append(Sample(sid, path, label=_class_index(classnames, raw, where), caption=row.get("caption") or None))
    return Dataset(name, list(classnames), samples, multilabel=multilabel, template=template, root=root)


def from_csv(path: str | Path, root: str | Path | None = None, *, image_col: str = "image", label_col: str = "label",
             classnames: list[str] | None = None, multilabel: bool = False, name: str | None = None,
             template: str = "a photo of a {}.", allow_outside_root: bool = False) -> Dataset:
    """CSV manifest with columns `image` (path relative to `root`, default the CSV's folder),
    `label` (class name or index; `;`-separated for multi-label), optional `id` and `caption`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or image_col not in reader.fieldnames:
                raise DataError(f"{path}: expected a header with column {image_col!r}, got {reader.fieldnames}")
            rows = [(f"{path}:row {i + 2}", dict(r)) for i, r in enumerate(reader)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable UTF-8 CSV ({exc})") from None
    return _rows_to_dataset(rows, path, Path(root) if root else path.parent, name or path.stem, classnames,
                            image_col, label_col, multilabel, template, allow_outside_root)


def from_json(path: str | Path, root: str | Path | None = None, *, allow_outside_root: bool = False) -> Dataset:
    """JSON manifest: {"name", "classnames", "multilabel"?, "template"?, "samples": [{"image", "label", ...}]}."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise DataError(f"{path}: not valid JSON (nested too deeply)") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("samples"), list):
        raise DataError(f"{path}: expected an object with a 'samples' list")
    classnames = doc.get("classnames")
    if classnames is not None and (not isinstance(classnames, list) or not all(isinstance(c, str) for c in classnames)):
        raise DataError(f"{path}: 'classnames' must be a list of strings")
    rows = []
    for i, r in enumerate(doc["samples"]):
        if not isinstance(r, dict):
            raise DataError(f"{path}: samples[{i}]: expected an object, got {type(r).__name__}")
        rows.append((f"{path}:samples[{i}]", r))
    return _rows_to_dataset(rows, path, Path(root) if root else path.parent, doc.get("name", path.stem), classnames,
                            "image", "label", bool(doc.get("multilabel", False)),
                            doc.get("template", "a photo of a {}."), allow_outside_root)


def load_dataset(spec: str | Path, **kwargs: Any) -> Dataset:
    """`ph2` (the embedded default), a class-folder directory, a .csv or a .json manifest."""
    spec_s = str(spec)
    if spec_s == "ph2":
        from conceptclip.data.ph2 import load_ph2

        return load_ph2(**kwargs)
    path = Path(spec_s)
    if path.is_dir():
        return from_folder(path, **kwargs)
    if path.suffix.lower() == ".csv":
        return from_csv(path, **kwargs)
    if path.suffix.lower() == ".json":
        return from_json(path, **kwargs)
    raise DataError(f"dataset {spec_s!r}: expected 'ph2', a folder of class sub-folders, a .csv or a .json manifest")
