"""`embeddings:PATH`: a backbone that serves stored embeddings instead of running towers.

Researchers embed a dataset once (on a GPU machine, with `conceptclip encode`, or with their own
code) and run many few-shot experiments from the stored vectors. This backbone reads them,
pickle-free and memory-mapped, and joins them to a dataset by sample id:

- image embeddings (N, D) in one or more shards: `.npy` (float16/32/64, read memory-mapped in
  windows, so a set bigger than RAM works) or `.safetensors` (one tensor), each with an ids CSV
  (`row,id` or one `id` column) naming the sample of every row (rows belong to ids, not positions);
- optional text embeddings of named prompts (class prompts, concepts, a reference prompt): each
  a file (T, D) with its T prompt texts. `encode_texts(texts)` looks the texts up, so every method
  that only needs fixed prompt features (zero-shot, Tip-Adapter(-F), CLIP-Adapter, LP++, concept
  scores) works; `text_aliases` {requested text: stored text} serve a prompt from another's vector.

PATH is a folder with `manifest.json` (what `conceptclip encode` writes), a manifest `.json` file
anywhere (its relative paths are relative to its folder; absolute paths read stores in place), or a
folder with exactly one `*.npy` + `*_ids.csv` pair and no manifest (images only, no text).

Manifest (JSON):

    {"format": "conceptclip-embeddings", "version": 1, "embed_dim": 512, "logit_scale": 100.0,
     "images": [{"file": "images-00000-of-00002.npy", "ids": "images-00000-of-00002_ids.csv"}, ...],
     "texts": [{"file": "class_prompts.npy", "prompts": ["This is dermatoscopy of melanoma"]}, ...],
     "text_aliases": {"a dermoscopy image of a melanoma.": "This is dermatoscopy of melanoma"},
     "source": {...}}   # free-form provenance: backbone, weights id, preprocessing, dataset fingerprint

There is no image or text tower: methods that read pixels or patch tokens, or that feed learned
context through a text encoder (the prompt learners, heat maps), are refused at once.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from conceptclip.backbones.base import Backbone, ImageFeatures, TokenBatch, register_backbone
from conceptclip.errors import BackboneError, MissingTowerError

FORMAT = "conceptclip-embeddings"
MANIFEST = "manifest.json"
CLIP_LOGIT_SCALE = 100.0  # exp(4.6052): OpenAI CLIP's trained (clamped) logit scale
WINDOW_ROWS = 65536  # rows mapped at once when streaming a shard


def _first(items: Sequence[str], n: int = 5) -> str:
    items = list(items)
    more = f", ... (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(str(i) for i in items[:n]) + more


def read_ids(path: Path) -> list[str]:
    """Ids of an ids CSV: a `row,id` file (rows 0..N-1 in order) or a single `id` column."""
    if not path.is_file():
        raise BackboneError(f"{path}: ids file not found")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise BackboneError(f"{path}: empty ids file; expected a header 'row,id' or 'id'")
        header = [h.strip() for h in header]
        if "id" not in header:
            raise BackboneError(f"{path}: header {header}: expected a column 'id' (as 'row,id' or 'id')")
        col = header.index("id")
        row_col = header.index("row") if "row" in header else None
        ids = []
        for i, rec in enumerate(reader):
            if not rec:
                continue
            if row_col is not None and rec[row_col].strip() != str(len(ids)):
                raise BackboneError(f"{path}:line {i + 2}: row {rec[row_col]!r}, expected {len(ids)} "
                                    "(rows must be listed in order 0..N-1)")
            ids.append(rec[col].strip())
    return ids


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of a .npy file, refusing pickled (object) and Fortran-order arrays."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f"npy format version {version}; expected 1.0 or 2.0")
            shape, fortran, dtype = read_header(fh)  # the header only, no data
            offset = fh.tell()
    except FileNotFoundError:
        raise BackboneError(f"{path}: embeddings file not found") from None
    except ValueError as exc:
        raise BackboneError(f"{path}: not a .npy array file ({exc})") from None
    if dtype.hasobject:
        raise BackboneError(f"{path}: a pickled .npy (object array, e.g. a dict saved with np.save); "
                            "expected a plain float array (N, D) with an ids CSV — pickles are never loaded")
    if fortran:
        raise BackboneError(f"{path}: Fortran-order array; expected C order (save with np.save(np.ascontiguousarray(x)))")
    if dtype.kind != "f":
        raise BackboneError(f"{path}: dtype {dtype}; expected float16, float32 or float64")
    return tuple(shape), dtype, offset


@dataclass
class Shard:
    """One image-embedding file and its ids; `start` is its first row in the whole store."""

    file: Path
    ids_file: Path
    rows: int
    dim: int
    start: int
    dtype: str
    offset: int = 0  # .npy data offset

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Rows [lo, hi) of this shard as float32, through a memory map released afterwards (bounded RSS)."""
        if hi <= lo:
            return np.zeros((0, self.dim), np.float32)
        if self.file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(self.file), framework="numpy") as f:
                return np.asarray(f.get_slice(f.keys()[0])[lo:hi], dtype=np.float32)
        item = np.dtype(self.dtype).itemsize
        mm = np.memmap(self.file, dtype=self.dtype, mode="r", offset=self.offset + lo * self.dim * item,
                       shape=(hi - lo, self.dim))
        try:
            return np.array(mm, dtype=np.float32)
        finally:
            del mm


def _shard(file: Path, ids_file: Path, start: int) -> tuple[Shard, list[str]]:
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(file), framework="numpy") as f:
                keys = list(f.keys())
                if len(keys) != 1:
                    raise BackboneError(f"{file}: {len(keys)} tensors {keys[:5]}; expected exactly one (N, D)")
                sl = f.get_slice(keys[0])
                shape, dtype = tuple(sl.get_shape()), str(sl.get_dtype()).lower()
        except FileNotFoundError:
            raise BackboneError(f"{file}: embeddings file not found") from None
        except BackboneError:
            raise
        except Exception as exc:  # safetensors' own header errors
            raise BackboneError(f"{file}: not a readable safetensors file ({str(exc).splitlines()[0][:200]})") from None
        dtype = {"f16": "float16", "f32": "float32", "f64": "float64"}.get(dtype, dtype)
        if dtype not in ("float16", "float32", "float64"):
            raise BackboneError(f"{file}: dtype {dtype}; expected float16, float32 or float64")
        offset = 0
    elif file.suffix == ".npy":
        shape, dt, offset = _npy_header(file)
        dtype = dt.str if dt.byteorder not in ("=", "|") else dt.name
    else:
        raise BackboneError(f"{file}: unsupported embeddings file; expected .npy or .safetensors")
    ids = read_ids(ids_file)
    if len(shape) != 2:
        raise BackboneError(f"{file}: shape {shape}; expected a 2-D array (N, D) of embeddings")
    if shape[0] != len(ids):
        raise BackboneError(f"{file}: {shape[0]} rows but {ids_file} lists {len(ids)} ids; expected one id per row")
    return Shard(file, ids_file, shape[0], shape[1], start, dtype, offset), ids


class EmbeddingStore:
    """Sharded image embeddings read through memory maps: `rows_for(ids)`, `read(rows)`, `blocks()`."""

    def __init__(self, shards: list[tuple[Path, Path]], embed_dim: int | None = None, where: str = "") -> None:
        self.where = where
        self.shards: list[Shard] = []
        self._ids: list[str] = []
        start = 0
        for file, ids_file in shards:
            shard, ids = _shard(file, ids_file, start)
            dim = embed_dim if embed_dim is not None else (self.shards[0].dim if self.shards else shard.dim)
            if shard.dim != dim:
                raise BackboneError(f"{file}: {shard.rows} rows of dimension {shard.dim}; expected dimension {dim} "
                                    f"({'the manifest embed_dim' if embed_dim is not None else 'as ' + str(self.shards[0].file)})")
            self.shards.append(shard)
            self._ids.extend(ids)
            start += shard.rows
        if not self.shards:
            raise BackboneError(f"{where}: no image embeddings listed; expected at least one file with its ids CSV")
        self.dim = self.shards[0].dim
        self._index: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> list[str]:
        return self._ids

    def index(self) -> dict[str, int]:
        """id -> global row; duplicate ids (within or across shards) are refused."""
        if self._index is None:
            index: dict[str, int] = {}
            dups: list[tuple[str, int]] = []
            for r, i in enumerate(self._ids):
                if i in index:
                    dups.append((i, r))
                index[i] = r
            if dups:
                files = sorted({str(s.ids_file) for s in self.shards for _, r in dups[:5]
                                if s.start <= r < s.start + s.rows})
                dups = [i for i, _ in dups]  # type: ignore[misc]
                raise BackboneError(f"{', '.join(files)}: {len(dups)} duplicate id(s): {_first(dups)}; "
                                    "expected each id once")
            self._index = index
        return self._index

    def rows_for(self, ids: Sequence[str], dataset: str = "") -> np.ndarray:
        """Global rows of `ids`; missing ids fail with their count and the first few."""
        index = self.index()
        missing = [i for i in ids if i not in index]
        if missing:
            files = _first([str(s.ids_file) for s in self.shards], 2)
            raise BackboneError(f"{files}: {len(missing)} of {len(ids)} ids{' of dataset ' + repr(dataset) if dataset else ''} "
                                f"have no stored embedding: {_first(missing)}")
        return np.array([index[i] for i in ids], dtype=np.int64)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """float32 (len(rows), D) of the given global rows (any order); non-finite rows are refused."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), np.float32)
        for shard in self.shards:
            sel = np.nonzero((rows >= shard.start) & (rows < shard.start + shard.rows))[0]
            if not len(sel):
                continue
            local = rows[sel] - shard.start
            order = np.argsort(local, kind="stable")
            for w in range(0, len(order), WINDOW_ROWS):
                part = order[w:w + WINDOW_ROWS]
                lo, hi = int(local[part[0]]), int(local[part[-1]]) + 1
                if hi - lo <= 4 * WINDOW_ROWS:  # dense enough: one window
                    out[sel[part]] = shard.read(lo, hi)[local[part] - lo]
                else:  # sparse: row by row (each a tiny map)
                    for p in part:
                        out[sel[p]] = shard.read(int(local[p]), int(local[p]) + 1)[0]
            self._check_finite(out[sel], shard, local)
        return out

    def _check_finite(self, block: np.ndarray, shard: Shard, local_rows: np.ndarray) -> None:
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            ids = [self._ids[shard.start + int(r)] for r in local_rows[bad]]
            raise BackboneError(f"{shard.file}: {int(bad.sum())} row(s) with non-finite values (NaN/inf), ids {_first(ids)}; "
                                "expected finite embeddings")

    def blocks(self, block_rows: int = WINDOW_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        """(first global row, float32 block) over the whole store in row order, one window mapped at a time."""
        for shard in self.shards:
            for lo in range(0, shard.rows, block_rows):
                hi = min(lo + block_rows, shard.rows)
                block = shard.read(lo, hi)
                self._check_finite(block, shard, np.arange(lo, hi))
                yield shard.start + lo, block


def _load_texts(entries: list[dict], base: Path, dim: int, where: str) -> dict[str, np.ndarray]:
    texts: dict[str, np.ndarray] = {}
    for k, entry in enumerate(entries):
        if not isinstance(entry, dict) or "file" not in entry or not isinstance(entry.get("prompts"), list):
            raise BackboneError(f"{where}: texts[{k}]: expected {{\"file\": ..., \"prompts\": [texts]}}")
        file = _resolve(base, entry["file"])
        prompts = [str(p) for p in entry["prompts"]]
        if file.suffix == ".npy":
            _npy_header(file)  # refuses pickles before np.load
            arr = np.load(file, allow_pickle=False)
        else:
            from conceptclip.io import load_tensors

            tensors = load_tensors(file)
            if len(tensors) != 1:
                raise BackboneError(f"{file}: {len(tensors)} tensors; expected exactly one (T, D)")
            arr = next(iter(tensors.values())).float().numpy()
        arr = np.asarray(arr, dtype=np.float32)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] != dim:
            raise BackboneError(f"{file}: text embeddings of shape {tuple(arr.shape)}; expected ({len(prompts)}, {dim}) "
                                "(one row per prompt, the image dimension)")
        if arr.shape[0] != len(prompts):
            raise BackboneError(f"{file}: {arr.shape[0]} rows but {len(prompts)} prompts listed ({_first(prompts, 2)}); "
                                "expected one prompt per row")
        bad = [p for p, ok in zip(prompts, np.isfinite(arr).all(1)) if not ok]
        if bad:
            raise BackboneError(f"{file}: {len(bad)} prompt row(s) with non-finite values: {_first(bad, 3)}")
        for p, row in zip(prompts, arr):
            if p in texts and not np.array_equal(texts[p], row):
                raise BackboneError(f"{file}: prompt {p!r} is stored twice with different embeddings; expected one")
            texts[p] = row
    return texts


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def read_manifest(path: Path) -> tuple[dict, Path]:
    """(manifest dict, folder its relative paths start from) of a folder or a manifest file."""
    file = path / MANIFEST if path.is_dir() else path
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackboneError(f"{file}: manifest not found") from None
    except json.JSONDecodeError as exc:
        raise BackboneError(f"{file}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BackboneError(f"{file}: 'format' is {doc.get('format') if isinstance(doc, dict) else doc!r}; "
                            f"expected {FORMAT!r}")
    if not isinstance(doc.get("images"), list) or not doc["images"]:
        raise BackboneError(f"{file}: 'images' must list at least one {{\"file\": ..., \"ids\": ...}}")
    return doc, file.parent


class EmbeddingsBackbone(Backbone):
    """Stored image (and optional prompt) embeddings in one joint space; no towers."""

    is_vit = False
    #: batch inputs the engine cannot serve from this backbone (no image tower)
    unavailable_inputs = frozenset({"pixels", "patches"})

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self.name = f"embeddings:{self.path.resolve()}"  # absolute: a results folder re-creates it from anywhere
        if not self.path.exists():
            raise BackboneError(f"embeddings {str(path)!r} not found: expected a folder with {MANIFEST} (see "
                                "`conceptclip encode`), a manifest .json, or a folder with one *.npy + *_ids.csv pair")
        if self.path.is_file() or (self.path / MANIFEST).is_file():
            doc, base = read_manifest(self.path)
            where = str(self.path / MANIFEST if self.path.is_dir() else self.path)
            shards = []
            for k, e in enumerate(doc["images"]):
                if not isinstance(e, dict) or "file" not in e or "ids" not in e:
                    raise BackboneError(f"{where}: images[{k}]: expected {{\"file\": ..., \"ids\": ...}}")
                shards.append((_resolve(base, e["file"]), _resolve(base, e["ids"])))
            dim = doc.get("embed_dim")
            if dim is not None and (not isinstance(dim, int) or dim <= 0):
                raise BackboneError(f"{where}: embed_dim={dim!r}; expected a positive integer")
            self.store = EmbeddingStore(shards, dim, where)
            texts = _load_texts(doc.get("texts") or [], base, self.store.dim, where)
            aliases = doc.get("text_aliases") or {}
            unknown = sorted(v for v in aliases.values() if v not in texts)
            if unknown:
                raise BackboneError(f"{where}: text_aliases point to {len(unknown)} prompt(s) not stored: {_first(unknown, 3)}")
            scale = doc.get("logit_scale", CLIP_LOGIT_SCALE)
            self.manifest = doc
        else:
            # X_array.npy (or X.npy) + X_ids.csv; where both share one ids file, the `_array` copy is the
            # pickle-free one (the shared folders keep the original pickled dict beside it)
            found: dict[Path, Path] = {}
            for a in sorted(self.path.glob("*.npy")):
                ids_file = a.with_name(a.stem.removesuffix("_array") + "_ids.csv")
                if ids_file.is_file() and (ids_file not in found or a.stem.endswith("_array")):
                    found[ids_file] = a
            pairs = [(a, i) for i, a in found.items()]
            if len(pairs) != 1:
                raise BackboneError(f"{self.path}: {len(pairs)} *.npy + *_ids.csv pairs and no {MANIFEST}; "
                                    "expected exactly one pair, or a manifest listing the shards")
            where = str(self.path)
            self.store = EmbeddingStore(pairs, None, where)
            texts, aliases, scale = {}, {}, CLIP_LOGIT_SCALE
            self.manifest = {"format": FORMAT, "version": 1, "images": [{"file": str(pairs[0][0]), "ids": str(pairs[0][1])}]}
        if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise BackboneError(f"{where}: logit_scale={scale!r}; expected a positive number")
        self.where = where
        self.embed_dim = self.store.dim
        self.text_width = 0
        self.image_size = 0
        self.context_length = 0
        self._texts = texts
        self._aliases = {str(k): str(v) for k, v in aliases.items()}
        self.register_buffer("_log_scale", torch.tensor(math.log(float(scale))))

    # -- stored data -----------------------------------------------------------------
    def stored_image_features(self, ids: Sequence[str], dataset: str = "") -> torch.Tensor:
        """float32 (len(ids), D) image embeddings of `ids` (joined by id, never by position)."""
        return torch.from_numpy(self.store.read(self.store.rows_for(ids, dataset)))

    @property
    def stored_prompts(self) -> list[str]:
        return list(self._texts)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Stored embeddings of `texts` (exact prompt text, or through `text_aliases`)."""
        if isinstance(texts, str):
            texts = [texts]
        keys = [self._aliases.get(t, t) for t in texts]
        missing = [t for t, k in zip(texts, keys) if k not in self._texts]
        if missing:
            have = _first(self.stored_prompts, 4) if self._texts else "none"
            raise MissingTowerError(f"{self.name}: no text tower and {len(missing)} prompt(s) not stored: "
                                    f"{_first([repr(m) for m in missing], 3)}; stored prompts: {have} "
                                    "(add them to the manifest's texts, or map them with text_aliases)")
        return torch.from_numpy(np.stack([self._texts[k] for k in keys])).to(self.device)

    # -- what it lacks ------------------------------------------------------------------
    def _no_image_tower(self, what: str):
        raise MissingTowerError(f"{self.name} serves stored embeddings only: no image tower, so no {what} "
                                "(use a method on global features, or the backbone the embeddings came from)")

    def _no_text_tower(self):
        raise MissingTowerError(f"{self.name} serves stored embeddings only: no text tower to encode new or learned "
                                "prompts (prompt learners need one; fixed prompts come from the stored texts)")

    def preprocess(self, images) -> torch.Tensor:
        self._no_image_tower("pixels to preprocess")

    def encode_image(self, pixels: torch.Tensor, *, patches: bool = False) -> ImageFeatures:
        self._no_image_tower("patch tokens or heat maps" if patches else "image encoding")

    def tokenize(self, texts: Sequence[str]) -> TokenBatch:
        self._no_text_tower()

    @property
    def token_embedding(self) -> nn.Embedding:
        self._no_text_tower()

    def encode_text(self, tokens: TokenBatch, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        self._no_text_tower()

    def explain_layers(self) -> dict[str, nn.Module]:
        self._no_image_tower("layers for heat maps")

    # -- misc -----------------------------------------------------------------------
    def _logit_scale_param(self) -> torch.Tensor:
        return self._log_scale

    @property
    def device(self) -> torch.device:
        return self._log_scale.device

    def weights_id(self) -> str:
        """Hash of the stored files (the recorded sha256s where the manifest has them, else size+mtime)."""
        if not hasattr(self, "_weights_id"):
            h = hashlib.sha256(json.dumps({k: v for k, v in self.manifest.items() if k != "source"},
                                          sort_keys=True, default=str).encode())
            for s in self.store.shards:
                for f in (s.file, s.ids_file):
                    st = f.stat()
                    h.update(f"{f.name}|{st.st_size}|{st.st_mtime_ns}".encode())
            self._weights_id = "emb-" + h.hexdigest()[:16]
        return self._weights_id


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_manifest(out: str | Path, images: Sequence[tuple[str | Path, str | Path]],
                   texts: Sequence[tuple[str | Path, Sequence[str]]] = (), *, embed_dim: int,
                   logit_scale: float = CLIP_LOGIT_SCALE, text_aliases: dict[str, str] | None = None,
                   source: dict | None = None, hashes: bool = True) -> Path:
    """Write a manifest (atomically) listing image shards (file, ids CSV) and prompt files (file, texts).

    Paths inside `out`'s folder are stored relative to it, others absolute (stores read in place);
    with `hashes`, the sha256 of every file is recorded."""
    from conceptclip.io import write_json

    out = Path(out)
    base = out.parent.resolve()

    def rel(p: str | Path) -> str:
        p = Path(p).resolve()
        return str(p.relative_to(base)) if p.is_relative_to(base) else str(p)

    def digest(*files: str | Path) -> dict:
        return {"sha256": {rel(f): sha256_file(f) for f in files}} if hashes else {}

    doc = {"format": FORMAT, "version": 1, "embed_dim": int(embed_dim), "logit_scale": float(logit_scale),
           "images": [{"file": rel(f), "ids": rel(i), **digest(f, i)} for f, i in images],
           "texts": [{"file": rel(f), "prompts": list(p), **digest(f)} for f, p in texts],
           "text_aliases": dict(text_aliases or {}), "source": dict(source or {})}
    return write_json(out, doc)


@register_backbone("embeddings")
def _make_embeddings(arg: str | None) -> EmbeddingsBackbone:
    if not arg:
        raise BackboneError("backbone 'embeddings' needs a path: 'embeddings:DIR' (a folder written by "
                            "`conceptclip encode`) or 'embeddings:MANIFEST.json'")
    return EmbeddingsBackbone(arg)
