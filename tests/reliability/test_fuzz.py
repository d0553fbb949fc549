"""Point 3, fuzzing (hypothesis): every loader, fed random or mutated bytes/JSON, either returns a
valid object or raises its documented error type (DataError, CheckpointError, KnowledgeError);
the report-triplet extractor never raises on any text."""

from __future__ import annotations

import io
import json
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conceptclip.data.dataset import Dataset, from_csv, from_json
from conceptclip.data.images import load_image
from conceptclip.data.splits import Split
from conceptclip.engine.checkpoint import load_checkpoint
from conceptclip.errors import CheckpointError, DataError, KnowledgeError
from conceptclip.io import load_tensors

from _helpers import make_checkpoint

FUZZ = settings(max_examples=50, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

_DIR = Path(tempfile.mkdtemp(prefix="conceptclip-fuzz-"))
(_DIR / "cat").mkdir()
Image.new("RGB", (8, 8), (10, 200, 10)).save(_DIR / "cat" / "a.png")
Image.new("RGB", (8, 8), (200, 10, 10)).save(_DIR / "b.png")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) |
    st.sampled_from(["a.png", "cat/a.png", "b.png", "../b.png", "x", "", "cat", "0", "1;0", "a\x00"]) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["image", "label", "samples", "classnames", "id", "caption", "multilabel", "name", "parts",
                         "dataset", "fingerprint", "kind", "params", "classes", "version", "template"]) | st.text(max_size=5),
        inner, max_size=6),
    max_leaves=20)


def _write(name: str, data: bytes) -> Path:
    path = _DIR / name
    path.write_bytes(data)
    return path


@FUZZ
@given(doc=json_values)
def test_json_manifest_fuzz(doc):
    try:
        ds = from_json(_write("m.json", json.dumps(doc).encode()))
    except DataError:
        return
    assert isinstance(ds, Dataset) and all(s.path.is_file() for s in ds.samples)


@FUZZ
@given(samples=st.lists(st.dictionaries(st.sampled_from(["image", "label", "id", "caption"]), json_values, max_size=4),
                        min_size=1, max_size=4), classnames=json_values, multilabel=st.booleans())
def test_json_manifest_sample_fuzz(samples, classnames, multilabel):
    """Structurally plausible manifests (an object with a samples list) reach the per-row checks."""
    doc = {"samples": samples, "classnames": classnames, "multilabel": multilabel}
    try:
        ds = from_json(_write("rows.json", json.dumps(doc).encode()))
    except DataError:
        return
    assert all(s.path.resolve().is_relative_to(_DIR.resolve()) for s in ds.samples)


csv_cells = st.sampled_from(["a.png", "cat/a.png", "b.png", "../b.png", "/etc/passwd", "cat", "0", "7", "x;y", '"',
                             "", "\x00", "é"]) | st.text(max_size=6)


@FUZZ
@given(header=st.lists(st.sampled_from(["image", "label", "id", "caption", "x"]), max_size=4),
       rows=st.lists(st.lists(csv_cells, max_size=5), max_size=4), multilabel=st.booleans(),
       junk=st.binary(max_size=8))
def test_csv_manifest_fuzz(header, rows, multilabel, junk):
    text = "\n".join(",".join(r) for r in [header, *rows])
    try:
        ds = from_csv(_write("m.csv", text.encode("utf-8", "surrogatepass") + junk), multilabel=multilabel)
    except DataError:
        return
    assert all(s.path.resolve().is_relative_to(_DIR.resolve()) for s in ds.samples)


@FUZZ
@given(doc=json_values, raw=st.binary(max_size=64), use_raw=st.booleans())
def test_split_file_fuzz(doc, raw, use_raw):
    try:
        split = Split.load(_write("split.json", raw if use_raw else json.dumps(doc).encode()))
    except DataError:
        return
    assert isinstance(split.parts, dict) and isinstance(split.classes, dict)
    split.check_disjoint() if all(k in ("train", "val", "test") for k in split.parts) else None


def _valid_bank() -> dict:
    from conceptclip.knowledge.schema import ClassEntry, Concept, ConceptBank, Provenance

    bank = ConceptBank("fz", {"s": Provenance("paper", "a paper")},
                       {"melanoma": ClassEntry((Concept("blue-whitish veil", "s", frequency=0.5, count=3),))})
    return bank.to_dict()


def _mutate(doc, path: list, value):
    """Replace the value at `path` (keys/indices taken modulo the container size) by `value`."""
    if not path or not isinstance(doc, (dict, list)) or not doc:
        return value
    if isinstance(doc, dict):
        key = sorted(doc)[path[0] % len(doc)]
        return {**doc, key: _mutate(doc[key], path[1:], value)}
    i = path[0] % len(doc)
    return [*doc[:i], _mutate(doc[i], path[1:], value), *doc[i + 1:]]


@FUZZ
@given(path=st.lists(st.integers(0, 10), max_size=6), value=json_values, verify=st.booleans())
def test_concept_bank_fuzz(path, value, verify):
    """A valid bank with one random node replaced by a random JSON value."""
    from conceptclip.knowledge.schema import ConceptBank, load_bank

    doc = _mutate(_valid_bank(), path, value)
    try:
        bank = load_bank(_write("bank.json", json.dumps(doc).encode()), verify_hash=verify)
    except KnowledgeError:
        return
    assert isinstance(bank, ConceptBank)


@FUZZ
@given(raw=st.binary(max_size=200))
def test_concept_bank_random_bytes(raw):
    from conceptclip.knowledge.schema import load_bank

    with pytest.raises(KnowledgeError):
        load_bank(_write("bank.bin", raw))


_CKPT = make_checkpoint(_DIR / "good.safetensors", 2).read_bytes()


@FUZZ
@given(raw=st.binary(max_size=300), header_len=st.integers(0, 400), prefix=st.booleans())
def test_safetensors_random_bytes(raw, header_len, prefix):
    data = (struct.pack("<Q", header_len) + raw) if prefix else raw
    path = _write("rand.safetensors", data)
    for loader in (load_tensors, load_checkpoint):
        try:
            out = loader(path)
        except CheckpointError:
            continue
        assert isinstance(out, dict)


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, len(_CKPT) - 1), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.integers(0, len(_CKPT)))
def test_checkpoint_byte_flips(flips, cut):
    """A real checkpoint with up to 6 bytes overwritten and possibly truncated: loads or CheckpointError,
    and whatever loads has the shapes the header promised."""
    data = bytearray(_CKPT)
    for pos, val in flips:
        data[pos] = val
    path = _write("flip.safetensors", bytes(data[:cut]))
    try:
        state = load_checkpoint(path)
    except CheckpointError:
        return
    assert all(torch.is_tensor(v) for v in state["method_state"].values())


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


_IMAGES = {"png": _png_bytes(), "jpg": _jpeg_bytes()}


@FUZZ
@given(kind=st.sampled_from(["png", "jpg", "random"]), raw=st.binary(max_size=200),
       flips=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=4), cut=st.integers(0, 2000))
def test_image_bytes_fuzz(kind, raw, flips, cut):
    data = bytearray(raw if kind == "random" else _IMAGES[kind])
    for pos, val in flips:
        if data:
            data[pos % len(data)] = val
    path = _write(f"img.{kind if kind != 'random' else 'png'}", bytes(data[: max(cut, 1)] if kind != "random" else data))
    try:
        im = load_image(path)
    except DataError as exc:
        assert "\n" not in str(exc) and path.name in str(exc)
        return
    assert im.mode == "RGB" and im.width * im.height > 0


REPORT_WORDS = ["no", "not", "without", "mild", "small", "left", "right", "lower", "lobe", "pleural", "effusion",
                "pneumothorax", "cardiomegaly", "opacity", "atelectasis", "calcified", "granuloma", "granulomas",
                "clear", "lungs", "heart", "size", "normal", "is", "are", "there", "and", "or", "with", "bilateral",
                "base", "XXXX", ".", ",", ";", "?", "\n", "-", "(", ")", "1.", "2.", "  "]


@FUZZ
@given(words=st.lists(st.sampled_from(REPORT_WORDS) | st.text(max_size=6), max_size=40), section=st.text(max_size=5))
def test_extract_triplets_on_garbled_reports(words, section):
    from conceptclip.knowledge.triplets import Triplet, extract_triplets

    out = extract_triplets(" ".join(words), section=section)
    assert all(isinstance(t, Triplet) for t in out)


@FUZZ
@given(text=st.text(max_size=300))
def test_extract_triplets_on_random_text(text):
    from conceptclip.knowledge.triplets import extract_triplets

    assert isinstance(extract_triplets(text), list)


@FUZZ
@given(raw=st.binary(max_size=200))
def test_extract_reports_random_files(raw):
    from conceptclip.knowledge.triplets import extract_reports

    try:
        list(extract_reports(_write("reports.jsonl", raw)))
    except KnowledgeError:
        pass

