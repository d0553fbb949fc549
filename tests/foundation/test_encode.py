"""`conceptclip encode` -> `embeddings:DIR`: the round trip reproduces training on the backbone itself,
several processes write one shard each, a rerun resumes, and the manifest hashes every file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conceptclip.backbones import create_backbone
from conceptclip.backbones.embeddings import sha256_file
from conceptclip.data.dataset import from_folder
from conceptclip.data.splits import Split
from conceptclip.engine.encode import encode_dataset
from conceptclip.errors import ConfigError

CLASSES = ("cat", "dog", "fox")


@pytest.fixture
def folder(tmp_path):
    """18 images in three class folders, each class with its own colour bias."""
    rng = np.random.default_rng(0)
    for k, c in enumerate(CLASSES):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(6):
            x = rng.integers(0, 120, (40, 48, 3)) + np.eye(3, dtype=int)[k] * 120
            Image.fromarray(x.astype(np.uint8)).save(tmp_path / "imgs" / c / f"{c}{i}.png")
    return from_folder(tmp_path / "imgs")


def _split(ds) -> Split:
    ids = [s.id for s in ds.samples]
    by = {c: [s.id for s in ds.samples if ds.classnames[s.label] == c] for c in ds.classnames}
    train = [i for c in by for i in by[c][:3]]
    val = [i for c in by for i in by[c][3:4]]
    test = [i for i in ids if i not in train and i not in val]
    return Split(ds.name, ds.fingerprint(), "manual", {}, {"train": train, "val": val, "test": test})


def _metrics_close(a: dict, b: dict, tol: float = 1e-6) -> None:
    for key in ("accuracy", "balanced_accuracy", "f1_macro", "auc_macro", "ece"):
        assert abs(a["test"][key] - b["test"][key]) <= tol, (key, a["test"][key], b["test"][key])
    for c, v in a["test"]["auc_per_class"].items():
        assert abs(v - b["test"]["auc_per_class"][c]) <= tol


def test_round_trip_lite_equals_embeddings(folder, lite, tmp_path):
    """encode with lite, train from embeddings:DIR: the same metrics and probabilities as lite directly."""
    from conceptclip.engine import run_experiment

    manifest = encode_dataset(lite, folder, tmp_path / "emb", spec="lite", progress=False)
    assert manifest["source"]["weights_id"] == lite.weights_id() and manifest["source"]["n_images"] == 18
    for entry in manifest["images"] + manifest["texts"]:
        for rel, digest in entry["sha256"].items():
            assert sha256_file(tmp_path / "emb" / rel) == digest
    stored = create_backbone(f"embeddings:{tmp_path / 'emb'}")
    assert float(stored.logit_scale) == pytest.approx(float(lite.logit_scale), rel=1e-6)
    split = _split(folder)
    tcfg = {"epochs": 5, "progress": False}
    for method in ("zeroshot", "linear_probe", "lp_pp", "tip_adapter", "tip_adapter_f", "clip_adapter"):
        direct = run_experiment(method, folder, split, lite, tmp_path / f"{method}_lite", train_config=tcfg)
        via = run_experiment(method, folder, split, stored, tmp_path / f"{method}_emb", train_config=tcfg)
        _metrics_close(direct, via)
        p1 = np.loadtxt(tmp_path / f"{method}_lite" / "predictions.csv", delimiter=",", skiprows=1, usecols=(3, 4, 5))
        p2 = np.loadtxt(tmp_path / f"{method}_emb" / "predictions.csv", delimiter=",", skiprows=1, usecols=(3, 4, 5))
        assert np.abs(p1 - p2).max() <= 1e-6, method


def test_two_processes_write_one_shard_each_and_resume(folder, tmp_path):
    one = encode_dataset("tiny-clip", folder, tmp_path / "one", progress=False, accelerator="cpu")
    two = encode_dataset("tiny-clip", folder, tmp_path / "two", devices=2, progress=False, accelerator="cpu")
    assert [e["file"] for e in two["images"]] == ["images-00000-of-00002.npy", "images-00001-of-00002.npy"]
    a = create_backbone(f"embeddings:{tmp_path / 'one'}")
    b = create_backbone(f"embeddings:{tmp_path / 'two'}")
    ids = [s.id for s in folder.samples]
    assert b.store.ids == ids  # contiguous slices in dataset order
    assert torch.allclose(a.stored_image_features(ids), b.stored_image_features(ids), atol=1e-6)
    assert one["texts"][0]["prompts"] == [folder.template.format(c) for c in CLASSES]
    # a killed run: shard 1 missing; the rerun writes only it
    shard0 = tmp_path / "two" / "images-00000-of-00002.npy"
    stamp = shard0.stat().st_mtime_ns
    (tmp_path / "two" / "images-00001-of-00002_ids.csv").unlink()
    (tmp_path / "two" / "images-00001-of-00002.npy").unlink()
    again = encode_dataset("tiny-clip", folder, tmp_path / "two", devices=2, progress=False, accelerator="cpu")
    assert shard0.stat().st_mtime_ns == stamp
    assert again["images"] == two["images"]  # the same bytes (sha256) as before
    # other settings in the same folder are refused; an embeddings backbone cannot encode
    with pytest.raises(ConfigError, match="other settings .*dtype"):
        encode_dataset("tiny-clip", folder, tmp_path / "two", devices=2, dtype="float16", progress=False)
    with pytest.raises(ConfigError, match="already serves stored embeddings"):
        encode_dataset(f"embeddings:{tmp_path / 'one'}", folder, tmp_path / "three", progress=False)


def test_encode_cli_float16(folder, tmp_path):
    from typer.testing import CliRunner

    from conceptclip.cli import app

    r = CliRunner().invoke(app, ["encode", "--backbone", "tiny-clip", "--dataset", str(tmp_path / "imgs"), "-o",
                                 str(tmp_path / "e16"), "--dtype", "float16", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "e16" / "manifest.json").read_text())
    assert doc["source"]["dtype"] == "float16" and doc["source"]["backbone"] == "tiny-clip"
    assert np.load(tmp_path / "e16" / "images-00000-of-00001.npy").dtype == np.float16
    r = CliRunner().invoke(app, ["encode", "--backbone", "tiny-clip", "--dataset", str(tmp_path / "imgs"), "-o",
                                 str(tmp_path / "e16"), "--dtype", "bfloat8"])
    assert isinstance(r.exception, ConfigError) and "--dtype 'bfloat8'" in str(r.exception)
