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
        value = value.strip()
        if value in classnames:
            return classnames.index(value)
        if value.isdigit() and int(value) < len(classnames):
            return int(value)
    raise DataError(f"{where}: unknown label {value!r}; expected one of {classnames} or an index < {len(classnames)}")


MIN_LABEL_ROWS = 2
"""Labels seen in fewer rows than this are refused as probable typos when the class list is
inferred from the labels (an explicit class list vouches for every class it names)."""


def read_class_list(value: str | Path, where: str = "--classes") -> list[str]:
    """A class list from `value`: a text file (one class per line, index order; blank lines and
    lines starting with `#` ignored) when `value` names an existing file, else comma-separated
    names (`circle,square,triangle`)."""
    text = str(value)
    path = Path(text)
    try:
        is_file = path.is_file()
    except (OSError, ValueError):
        is_file = False
    if is_file:
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: class list not readable as UTF-8 text ({exc})") from None
        names = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
        where = str(path)
    else:
        names = [n.strip() for n in text.split(",")]
        if any(not n for n in names):
            raise DataError(f"{where} {text!r}: expected comma-separated class names (or a file, one per line), "
                            "found an empty name")
    if not names:
        raise DataError(f"{where}: the class list is empty")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{where}: class names repeated: {dup}")
    return names


def sidecar_classes(manifest: Path) -> Path:
    """The class-list file that travels with a manifest: `shapes.csv` -> `shapes.classes.txt`."""
    return manifest.with_name(manifest.stem + ".classes.txt")


def _split_labels(raw: Any, multilabel: bool, sep: str) -> list[Any]:
    if isinstance(raw, list):
        return raw
    if multilabel:
        return [v.strip() for v in str(raw).split(sep) if v.strip()]
    return [raw]


def _infer_classes(rows: list[tuple[str, dict]], source: Path, label_col: str, multilabel: bool,
                   sep: str) -> tuple[list[str], dict[str, list[str]]]:
    """Sorted class names from the labels and, per name, the rows that use it; refuses labels that
    read as class indices (there are no names for them to index) and names differing only in case."""
    rows_of: dict[str, list[str]] = {}
    for where, row in rows:
        for v in _split_labels(row.get(label_col), multilabel, sep):
            if v is None or isinstance(v, (dict, list, bool, float)) or not str(v).strip():
                continue
            name = str(v).strip()
            if isinstance(v, int) or name.isdigit():
                raise DataError(f"{where}: label {name!r} is a class index, but {source.name} gives no class "
                                f"names to index; list them in {sidecar_classes(source).name} (one per line) "
                                "or pass --classes NAME,NAME,...")
            rows_of.setdefault(name, []).append(where)
    by_fold: dict[str, str] = {}
    for name in rows_of:  # in order of first appearance: the later spelling is the suspect
        other = by_fold.setdefault(name.casefold(), name)
        if other != name:
            raise DataError(f"{rows_of[name][0]}: label {name!r} differs from {other!r} ({rows_of[other][0]}) only in "
                            "case; fix the typo or list the classes explicitly (--classes or "
                            f"{sidecar_classes(source).name})")
    return sorted(rows_of), rows_of


def _check_rare_labels(rows_of: dict[str, list[str]], source: Path, min_rows: int) -> None:
    rare = {name: where for name, where in rows_of.items() if len(where) < min_rows}
    if not rare:
        return
    import difflib

    name, where = min(rare.items(), key=lambda kv: (len(kv[1]), kv[1][0]))
    common = [n for n in rows_of if n not in rare]
    close = difflib.get_close_matches(name, common, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    others = sorted(n for n in rare if n != name)
    more = f"; also rare: {others[:5]}" if others else ""
    count = "1 row" if len(where) == 1 else f"only {len(where)} rows"
    raise DataError(f"{where[0]}: label {name!r} occurs in {count}, a probable typo{hint}{more}; "
                    f"a class seen in fewer than {min_rows} rows is accepted only from an explicit class list "
                    f"({sidecar_classes(source).name}, one class per line, or --classes)")


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
                     template: str, allow_outside_root: bool, label_sep: str = ";",
                     min_label_rows: int = MIN_LABEL_ROWS) -> Dataset:
    rows = list(rows)
    if not rows:
        raise DataError(f"{source}: manifest has no rows")
    rows_of: dict[str, list[str]] = {}
    if classnames is None:
        classnames, rows_of = _infer_classes(rows, source, label_col, multilabel, label_sep)
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
            labels = tuple(sorted({_class_index(classnames, v, where) for v in _split_labels(raw, True, label_sep)}))
            samples.append(Sample(sid, path, labels=labels, caption=row.get("caption") or None))
        else:
            if isinstance(raw, str) and label_sep in raw:
                how = ('set "multilabel": true' if source.suffix.lower() == ".json"
                       else "name the column 'labels' (image,labels,...)")
                raise DataError(f"{where}: label {raw!r} holds several labels separated by {label_sep!r}, but "
                                f"{source.name} is single-label; {how} for a multi-label manifest")
            samples.append(Sample(sid, path, label=_class_index(classnames, raw, where), caption=row.get("caption") or None))
    _check_rare_labels(rows_of, source, min_label_rows)
    return Dataset(name, list(classnames), samples, multilabel=multilabel, template=template, root=root)


def from_csv(path: str | Path, root: str | Path | None = None, *, image_col: str = "image", label_col: str | None = None,
             classnames: list[str] | None = None, multilabel: bool | None = None, name: str | None = None,
             template: str = "a photo of a {}.", allow_outside_root: bool = False,
             min_label_rows: int = MIN_LABEL_ROWS) -> Dataset:
    """CSV manifest (UTF-8, with or without a byte-order mark) with columns `image` (path relative
    to `root`, default the CSV's folder), `label` (class name, or index into the class list) or
    `labels` (multi-label: `;`-separated names or indices), optional `id` and `caption`.

    Classes, in index order: `classnames`, else the sidecar `<stem>.classes.txt` next to the CSV
    (one per line), else the sorted label values — then a label in fewer than `min_label_rows`
    rows is refused as a probable typo, and index-like labels are refused (nothing to index).
    `multilabel` defaults to the header: a `labels` column means multi-label. Non-empty cells
    beyond the header's columns are refused, naming the row."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = reader.fieldnames
            if fields is None or image_col not in fields:
                raise DataError(f"{path}: expected a header with column {image_col!r}, got {fields}")
            if label_col is None:
                label_col = "labels" if "labels" in fields and "label" not in fields else "label"
            rows = []
            for i, r in enumerate(reader):
                where = f"{path}:row {i + 2}"
                extra = [c for c in r.pop(None, None) or [] if c.strip()]  # cells beyond the header
                if extra:
                    raise DataError(f"{where}: cells beyond the header's {len(fields)} columns {fields}: "
                                    f"{extra[:3]} (quote a cell that contains a comma)")
                rows.append((where, dict(r)))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable UTF-8 CSV ({exc})") from None
    if multilabel is None:
        multilabel = label_col == "labels"
    if classnames is None and sidecar_classes(path).is_file():
        classnames = read_class_list(sidecar_classes(path))
    return _rows_to_dataset(rows, path, Path(root) if root else path.parent, name or path.stem, classnames,
                            image_col, label_col, multilabel, template, allow_outside_root,
                            min_label_rows=min_label_rows)


def from_json(path: str | Path, root: str | Path | None = None, *, allow_outside_root: bool = False,
              classnames: list[str] | None = None, min_label_rows: int = MIN_LABEL_ROWS) -> Dataset:
    """JSON manifest: {"name", "classnames", "multilabel"?, "template"?, "samples": [{"image", "label", ...}]}.
    `classnames` (e.g. from --classes) must equal the manifest's own list where it has one; with
    neither, classes are inferred from the labels as for a CSV (rare labels refused)."""
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
    own = doc.get("classnames")
    if own is not None and (not isinstance(own, list) or not all(isinstance(c, str) for c in own)):
        raise DataError(f"{path}: 'classnames' must be a list of strings")
    if own is not None and classnames is not None and list(classnames) != own:
        raise DataError(f"{path}: 'classnames' {own} differ from the given class list {list(classnames)}")
    classnames = own if own is not None else classnames
    rows = []
    for i, r in enumerate(doc["samples"]):
        if not isinstance(r, dict):
            raise DataError(f"{path}: samples[{i}]: expected an object, got {type(r).__name__}")
        rows.append((f"{path}:samples[{i}]", r))
    return _rows_to_dataset(rows, path, Path(root) if root else path.parent, doc.get("name", path.stem), classnames,
                            "image", "label", bool(doc.get("multilabel", False)),
                            doc.get("template", "a photo of a {}."), allow_outside_root,
                            min_label_rows=min_label_rows)
