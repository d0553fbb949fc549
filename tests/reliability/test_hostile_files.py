"""Point 2, corrupt or hostile files: checkpoints, pickles, images, manifests, concept banks, split
files and report files each fail with the documented error type, one line naming the file and the
fault; pickles are refused unless allow_pickle=True; manifest paths (and symlinks) cannot escape
the dataset root."""

from __future__ import annotations

import json
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conceptclip.data.dataset import from_csv, from_json
from conceptclip.data.images import load_image
from conceptclip.data.splits import Split, holdout_split
from conceptclip.engine.checkpoint import load_checkpoint, load_method_weights
from conceptclip.errors import CheckpointError, DataError, KnowledgeError
from conceptclip.io import load_tensors, save_tensors

from _helpers import make_checkpoint

SRC = Path(__file__).resolve().parents[2] / "src" / "conceptclip"


def _one_line(exc: pytest.ExceptionInfo, name: str) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and name in msg, msg
    return msg


def _st(header: dict | bytes, body: bytes = b"") -> bytes:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + body


# ---- checkpoints --------------------------------------------------------------------------
CORRUPT_CHECKPOINTS = {
    "empty": b"",
    "garbage header": b"\xde\xad\xbe\xef" * 8,
    "header length past the end": struct.pack("<Q", 10_000) + b"{}",
    "huge header length": struct.pack("<Q", 2**62) + b"{}",
    "header not JSON": _st(b"{not json at all}"),
    "header a list": _st(b"[1, 2, 3]"),
    "tensor past the body": _st({"x": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}, b"\0" * 16),
    "unknown dtype": _st({"x": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
    "shape/offset mismatch": _st({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 4]}}, b"\0" * 4),
    "text file": b"this is a README, not weights\n" * 3,
}


@pytest.mark.parametrize("case", sorted(CORRUPT_CHECKPOINTS))
def test_corrupt_safetensors_are_refused(tmp_path, case):
    path = tmp_path / "model.safetensors"
    path.write_bytes(CORRUPT_CHECKPOINTS[case])
    for loader in (load_tensors, load_checkpoint, load_method_weights):
        with pytest.raises(CheckpointError) as exc:
            loader(path)
        _one_line(exc, "model.safetensors")


BAD_METADATA = {"no metadata": None, "not JSON": "{", "a list": "[]", "empty object": "{}",
                "epoch a string": json.dumps({"epoch": "3", "history": [], "best_score": None, "optimizer": None}),
                "history missing": json.dumps({"epoch": 3, "best_score": None, "optimizer": None}),
                "optimizer garbage": json.dumps({"epoch": 3, "history": [], "best_score": None,
                                                 "optimizer": {"param_groups": []}}),
                "deeply nested": "[" * 50_000}


@pytest.mark.parametrize("case", sorted(BAD_METADATA))
def test_checkpoint_with_wrong_metadata_is_refused(tmp_path, case):
    """Valid safetensors whose training metadata is missing or of the wrong types: a CheckpointError
    (before the fix: TypeError/KeyError from deep inside load_checkpoint)."""
    path = tmp_path / "checkpoint.safetensors"
    meta = BAD_METADATA[case]
    tensors = {"model.ctx": torch.zeros(2, 3)}
    if case == "optimizer garbage":
        tensors["optim.x.momentum_buffer"] = torch.zeros(2)  # a parameter id that is not an integer
    save_tensors(path, tensors, metadata=None if meta is None else {"conceptclip": meta})
    with pytest.raises(CheckpointError, match="not a conceptclip training checkpoint|optimizer state is malformed") as exc:
        load_checkpoint(path)
    _one_line(exc, "checkpoint.safetensors")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from conceptclip.backbones import create_backbone
    from conceptclip.data import fewshot_split, from_folder
    from conceptclip.engine import run_experiment

    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(3)
    for c, name in enumerate(["cat", "dog", "fish"]):
        (root / name).mkdir()
        for i in range(8):
            Image.fromarray(np.clip(rng.normal(60 + 70 * c, 20, (32, 32, 3)), 0, 255).astype(np.uint8)).save(
                root / name / f"{i}.png")
    ds = from_folder(root)
    split = fewshot_split(ds, holdout_split(ds), 1, 1)
    out = tmp_path_factory.mktemp("runs") / "run"
    run_experiment("coop", ds, split, create_backbone("tiny-clip"), out, method_config={"n_ctx": 2},
                   train_config={"epochs": 2, "progress": False})
    return out, ds, split


def test_wrong_tensors_in_a_run_are_named(finished_run, tmp_path):
    """model.safetensors with the right key but the wrong shape, or unknown keys: a CheckpointError
    naming the file (before the fix: torch's multi-line 'size mismatch' RuntimeError)."""
    import shutil

    from conceptclip.engine.load import load_run

    src, _, _ = finished_run
    state = load_tensors(src / "model.safetensors")
    for name, bad in (("shape", {k: torch.zeros(7, 7) for k in state}), ("keys", {"something.else": torch.zeros(1)})):
        run = tmp_path / name
        shutil.copytree(src, run)
        save_tensors(run / "model.safetensors", bad)
        with pytest.raises(CheckpointError, match="does not fit method 'coop'") as exc:
            load_run(run)
        _one_line(exc, "model.safetensors")


def test_resume_from_a_checkpoint_of_another_shape_is_named(finished_run, tmp_path):
    from conceptclip.backbones import create_backbone
    from conceptclip.engine import TrainConfig, fit
    from conceptclip.engine.data import Part
    from conceptclip.methods import create_method

    ckpt = make_checkpoint(tmp_path / "other.safetensors", 0)  # a 2x3 'ctx' that no CoOp has
    bb = create_backbone("tiny-clip")
    y = torch.arange(3).repeat(2)
    part = Part([str(i) for i in range(6)], y, tensors={"features": torch.randn(6, bb.embed_dim), "labels": y,
                                                          "index": torch.arange(6)})
    coop = create_method("coop", bb, ["cat", "dog", "fish"], {"n_ctx": 2})
    with pytest.raises(CheckpointError, match="cannot resume 'coop'") as exc:
        fit(coop, part, None, TrainConfig(epochs=2, progress=False), checkpoint=ckpt)
    _one_line(exc, "other.safetensors")


# ---- pickles ------------------------------------------------------------------------------
class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_pickled_checkpoints_refused_unless_allowed(tmp_path):
    weights = {"ctx": torch.randn(4, 8)}
    for name in ("weights.pt", "weights.pth", "weights.bin", "renamed.safetensors"):
        torch.save(weights, tmp_path / name)
        with pytest.raises(CheckpointError, match="pickled PyTorch file; refusing") as exc:
            load_method_weights(tmp_path / name)
        _one_line(exc, name)
        got = load_method_weights(tmp_path / name, allow_pickle=True)
        assert got.keys() == weights.keys() and torch.equal(got["ctx"], weights["ctx"])
    torch.save({"state_dict": weights, "epoch": 3}, tmp_path / "lightning.ckpt")
    assert torch.equal(load_method_weights(tmp_path / "lightning.ckpt", allow_pickle=True)["ctx"], weights["ctx"])
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="expected a flat dict of named tensors"):
        load_method_weights(tmp_path / "list.pt", allow_pickle=True)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_never_runs(tmp_path):
    """A pickle whose unpickling writes a file: refused by default, and even with allow_pickle=True
    the weights-only unpickler rejects it; the marker file is never created."""
    import pickle

    marker = tmp_path / "marker.txt"
    for name, dump in (("evil.pt", lambda p: torch.save({"x": _Evil(str(marker))}, p)),
                       ("evil.pkl", lambda p: p.write_bytes(pickle.dumps(_Evil(str(marker)))))):
        dump(tmp_path / name)
        with pytest.raises(CheckpointError, match="refusing"):
            load_method_weights(tmp_path / name)
        with pytest.raises(CheckpointError, match="not a loadable weights-only PyTorch file") as exc:
            load_method_weights(tmp_path / name, allow_pickle=True)
        _one_line(exc, name)
    assert not marker.exists()


def test_safetensors_whose_length_starts_like_a_pickle_still_load(tmp_path):
    """A header length whose low byte is 0x80 (the pickle protocol byte) is not mistaken for a pickle."""
    for n in range(1, 400):
        save_tensors(tmp_path / "w.safetensors", {"a" * n: torch.zeros(1)})
        if (tmp_path / "w.safetensors").read_bytes()[0] == 0x80:
            break
    assert (tmp_path / "w.safetensors").read_bytes()[0] == 0x80
    assert list(load_tensors(tmp_path / "w.safetensors")) == ["a" * n]


def test_no_unsafe_torch_load_in_the_package():
    """Every torch.load call in src/ passes weights_only=True (grep over the package)."""
    calls = []
    for py in SRC.rglob("*.py"):
        text = py.read_text(encoding="utf-8")
        for m in re.finditer(r"torch\.load\(", text):
            depth, i = 1, m.end()
            while depth and i < len(text):
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            calls.append((py.relative_to(SRC).as_posix(), text[m.start():i]))
    assert calls, "expected at least the lite backbone's torch.load"
    unsafe = [c for c in calls if "weights_only=True" not in c[1]]
    assert unsafe == [], unsafe
    assert not [py for py in SRC.rglob("*.py") if re.search(r"\bpickle\.loads?\(", py.read_text(encoding="utf-8"))]


# ---- images ---------------------------------------------------------------------------
def _png_header_only(width: int, height: int) -> bytes:
    """A PNG declaring width x height (IHDR with a valid CRC) whose IDAT holds one row: tiny on
    disk, huge once decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def test_bad_images_are_one_line_data_errors(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "ok.jpg", quality=90)
    jpg = (tmp_path / "ok.jpg").read_bytes()
    cases = {
        "truncated.jpg": (jpg[: len(jpg) // 2], "cannot read image"),
        "header_only.jpg": (jpg[:200], "cannot read image"),
        "zero.png": (b"", "cannot read image"),
        "text.png": (b"hello, I am a text file\n", "cannot read image"),
        "bomb.png": (_png_header_only(100_000, 100_000), "cannot read image"),  # PIL's own bomb error
        "large.png": (_png_header_only(9_000, 8_000), "exceeds the limit"),  # 72 Mpx > conceptclip's 64 Mpx
        "warned.png": (_png_header_only(10_000, 9_000), "cannot read image"),  # PIL's bomb warning as error
    }
    for name, (data, needle) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=needle) as exc:
            load_image(tmp_path / name)
        _one_line(exc, name)
    with pytest.raises(DataError, match="not found"):
        load_image(tmp_path / "missing.png")
    assert load_image(tmp_path / "ok.jpg").size == (64, 64)


# ---- manifests ------------------------------------------------------------------------
@pytest.fixture
def root(tmp_path) -> Path:
    (tmp_path / "data").mkdir()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "data" / "a.png")
    return tmp_path / "data"


MANIFESTS = {
    "latin1.csv": ("image,label\na.png,na\xefve\n".encode("latin-1"), "not a readable UTF-8 CSV"),
    "nul.csv": (b"image,label\na.png\x00,x\n", "invalid image path|not a readable UTF-8 CSV"),
    "no_image_col.csv": (b"file,label\na.png,x\n", "expected a header with column 'image'"),
    "no_label.csv": (b"image,label\na.png\n", "missing field 'label'"),
    "empty.csv": (b"", "expected a header with column 'image'"),
    "header_only.csv": (b"image,label\n", "manifest has no rows"),
    "long_name.csv": (b"image,label\n" + b"x" * 5000 + b".png,x\n", "invalid image path"),
    "huge_field.csv": (b"image,label\na.png," + b"y" * 200_000 + b"\n", "not a readable UTF-8 CSV"),
    "list.json": (b"[1, 2]", "expected an object with a 'samples' list"),
    "string.json": (b'"samples"', "expected an object with a 'samples' list"),
    "bad.json": (b'{"samples": [', "not valid JSON"),
    "utf16.json": ('{"samples": []}'.encode("utf-16"), "not valid JSON"),
    "deep.json": (b"[" * 100_000, "nested too deeply"),
    "sample_not_object.json": (b'{"samples": ["a.png"]}', r"samples\[0\]: expected an object"),
    "path_not_string.json": (b'{"samples": [{"image": 3, "label": "x"}]}', "expected an image path"),
    "nul_path.json": (b'{"samples": [{"image": "a\\u0000.png", "label": "x"}]}', "invalid image path"),
    "classnames_wrong.json": (b'{"classnames": "x", "samples": [{"image": "a.png", "label": "x"}]}',
                              "'classnames' must be a list of strings"),
    "unknown_label.json": (b'{"classnames": ["x"], "samples": [{"image": "a.png", "label": {"y": 1}}]}',
                           "unknown label"),
}


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_bad_manifests_are_one_line_data_errors(root, name):
    data, needle = MANIFESTS[name]
    (root / name).write_bytes(data)
    loader = from_csv if name.endswith(".csv") else from_json
    with pytest.raises(DataError, match=needle) as exc:
        loader(root / name)
    _one_line(exc, name)


def test_symlinks_cannot_escape_the_dataset_root(tmp_path, root):
    outside = tmp_path / "secret"
    outside.mkdir()
    Image.new("RGB", (8, 8)).save(outside / "private.png")
    (root / "link.png").symlink_to(outside / "private.png")
    (root / "linkdir").symlink_to(outside, target_is_directory=True)
    (root / "loop.png").symlink_to(root / "loop.png")
    for image, needle in (("link.png", "escapes the dataset root"), ("linkdir/private.png", "escapes the dataset root"),
                          ("../secret/private.png", "escapes the dataset root"),
                          (str(outside / "private.png"), "escapes the dataset root"),
                          ("loop.png", "invalid image path|image file not found")):
        (root / "m.csv").write_text(f"image,label\na.png,x\n{image},y\n")
        with pytest.raises(DataError, match=needle) as exc:
            from_csv(root / "m.csv")
        _one_line(exc, "m.csv:row 3")
    (root / "m.csv").write_text("image,label\na.png,x\nlink.png,y\nlinkdir/private.png,y\n")
    ds = from_csv(root / "m.csv", allow_outside_root=True, classnames=["x", "y"])
    assert [s.path for s in ds.samples][1:] == [(outside / "private.png").resolve()] * 2


# ---- split files ----------------------------------------------------------------------
SPLIT_OK = {"dataset": "d", "fingerprint": "f", "kind": "holdout", "params": {}, "parts": {"train": ["a"]}}
SPLITS = {
    "not json": ("{", "not a valid split file"),
    "deep": ("[" * 100_000, "nested too deeply"),
    "a list": ([SPLIT_OK], "expected a split object"),
    "missing parts": ({k: v for k, v in SPLIT_OK.items() if k != "parts"}, "expected a split object"),
    "parts a list": ({**SPLIT_OK, "parts": ["a"]}, "'parts' must map"),
    "ids not strings": ({**SPLIT_OK, "parts": {"train": [1, 2]}}, "'parts' must map"),
    "classes a list": ({**SPLIT_OK, "classes": ["base"]}, "'classes' must map"),
    "classes of numbers": ({**SPLIT_OK, "classes": {"base": [0, 1]}}, "'classes' must map"),
    "params a list": ({**SPLIT_OK, "params": [1]}, "'params' must be an object"),
    "kind a number": ({**SPLIT_OK, "kind": 3}, "'kind' must be a string"),
    "version a string": ({**SPLIT_OK, "version": "1"}, "'version' must be an integer"),
    "version from the future": ({**SPLIT_OK, "version": 99}, "'version' must be an integer"),
}


@pytest.mark.parametrize("case", sorted(SPLITS))
def test_bad_split_files_are_one_line_data_errors(tmp_path, case):
    doc, needle = SPLITS[case]
    path = tmp_path / "split.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(DataError, match=needle) as exc:
        Split.load(path)
    _one_line(exc, "split.json")
    path.write_text(json.dumps(SPLIT_OK))
    assert Split.load(path).parts == {"train": ["a"]}


def test_split_round_trip_still_loads(tmp_path, root):
    from conceptclip.data import from_folder

    for c in ("x", "y"):
        (root / c).mkdir()
        for i in range(4):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / c / f"{i}.png")
    ds = from_folder(root)
    split = holdout_split(ds)
    split.save(tmp_path / "s.json")
    assert Split.load(tmp_path / "s.json", ds).sha256() == split.sha256()


# ---- concept banks and reports --------------------------------------------------------
BANKS = {
    "not json": (b'{"schema": ', KnowledgeError, "not valid JSON"),
    "not utf-8": (b'{"name": "\xff\xfe"}', KnowledgeError, "not UTF-8 text"),
    "deep": (b"[" * 100_000, KnowledgeError, "nested too deeply"),
    "a list": (b"[]", KnowledgeError, "expected an object"),
    "classes a list": (json.dumps({"schema": "conceptclip.concept_bank", "schema_version": 1, "name": "b",
                                   "kind": "concepts", "sources": {}, "classes": []}).encode(),
                       KnowledgeError, "$.classes: expected an object"),
    "count a string": (json.dumps({"schema": "conceptclip.concept_bank", "schema_version": 1, "name": "b",
                                   "kind": "concepts", "sources": {"s": {"kind": "paper", "citation": "c"}},
                                   "classes": {"m": {"concepts": [{"phrase": "p", "source": "s", "count": "3"}]}}}
                                  ).encode(), KnowledgeError, "count: expected a non-negative integer"),
    "version a bool": (json.dumps({"schema": "conceptclip.concept_bank", "schema_version": True, "name": "b",
                                   "kind": "concepts", "sources": {}, "classes": {}}).encode(),
                       KnowledgeError, "schema_version: expected a positive integer"),
}


@pytest.mark.parametrize("case", sorted(BANKS))
def test_bad_concept_banks_are_one_line_knowledge_errors(tmp_path, case):
    from conceptclip.knowledge.schema import load_bank

    data, err, needle = BANKS[case]
    (tmp_path / "bank.json").write_bytes(data)
    with pytest.raises(err, match=re.escape(needle)) as exc:
        load_bank(tmp_path / "bank.json")
    _one_line(exc, "bank.json")


def test_bad_report_files_are_one_line_knowledge_errors(tmp_path):
    from conceptclip.knowledge.triplets import extract_reports

    cases = {"latin1.jsonl": ('{"id": "1", "findings": "Caf\xe9 lungs clear."}\n'.encode("latin-1"), "not UTF-8 text"),
             "deep.jsonl": (b"[" * 100_000 + b"\n", "nested too deeply"),
             "list.jsonl": (b"[1]\n", "expected an object with key 'id'"),
             "findings_number.jsonl": (b'{"id": 1, "findings": 3}\n', "'findings' must be a string")}
    for name, (data, needle) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(KnowledgeError, match=needle) as exc:
            list(extract_reports(tmp_path / name))
        _one_line(exc, name)


@pytest.mark.slow
def test_cli_hostile_files_are_one_line(finished_run, tmp_path, one_line):
    """Through `conceptclip`: a pickled or wrong-shape model.safetensors (eval), a bad split file (train)."""
    import shutil

    from _helpers import cli

    src, ds, _ = finished_run
    for name, write, needles in (
            ("pickled", lambda p: torch.save(load_tensors(src / "model.safetensors"), p), ["refusing to unpickle"]),
            ("shape", lambda p: save_tensors(p, {k: torch.zeros(5) for k in load_tensors(src / "model.safetensors")}),
             ["does not fit method 'coop'"])):
        run = tmp_path / name
        shutil.copytree(src, run)
        write(run / "model.safetensors")
        one_line(cli("eval", str(run), "--dataset", str(ds.root)), "model.safetensors", *needles)
    (tmp_path / "split.json").write_text(json.dumps({**SPLIT_OK, "classes": ["base"]}))
    one_line(cli("train", "-m", "zeroshot", "--backbone", "tiny-clip", "--dataset", str(ds.root), "--split",
                 str(tmp_path / "split.json"), "-o", str(tmp_path / "r")), "split.json", "'classes' must map")
