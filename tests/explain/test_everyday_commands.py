"""The everyday commands on a trained run: `predict` (unlabelled images -> CSV of probabilities and
concept scores), `eval` writing per-image predictions, `explain --concepts BANK`, and `explain`
replacing its own earlier files."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner


@pytest.fixture(scope="module")
def trained(tmp_path_factory, pets):
    from conceptclip.backbones import create_backbone
    from conceptclip.data import fewshot_split, from_folder, holdout_split
    from conceptclip.engine import run_experiment

    root = tmp_path_factory.mktemp("everyday")
    paths = pets(root)
    ds = from_folder(paths["data"])
    split = fewshot_split(ds, holdout_split(ds), 2, 1)
    run_experiment("coop", ds, split, create_backbone("tiny-clip"), root / "run", method_config={"n_ctx": 2},
                   train_config={"epochs": 2, "progress": False})
    return root / "run", paths


def _invoke(*args: str):
    from conceptclip.cli import app

    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return res


def _rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def test_predict_unlabelled_images_with_probabilities_and_concept_scores(trained, tmp_path):
    from conceptclip.data.images import load_image
    from conceptclip.engine.load import load_run

    run, paths = trained
    unlabelled = tmp_path / "new"
    unlabelled.mkdir()
    for i, src in enumerate(sorted((paths["data"] / "dog").glob("*.png"))[:3]):
        (unlabelled / f"img{i}.png").write_bytes(src.read_bytes())
    out = tmp_path / "pred.csv"
    _invoke("predict", str(run), str(unlabelled), "-o", str(out), "--concepts", str(paths["bank"]))
    header, *rows = _rows(out)
    concepts = ["whiskers", "pointed ears", "floppy ears", "wet nose", "fins", "scales"]
    assert header == ["image", "prediction", "p_cat", "p_dog", "p_fish", *(f"c_{c}" for c in concepts)]
    assert [r[0] for r in rows] == [str(unlabelled / f"img{i}.png") for i in range(3)]
    # expected values computed here: the method's probabilities and the cosine of the image feature with
    # each concept prompt "a photo with <concept>." (the run's class template "a photo of a {}.")
    method, _ = load_run(run)
    bb = method.backbone
    pixels = bb.preprocess([load_image(unlabelled / f"img{i}.png") for i in range(3)])
    with torch.no_grad():
        feats = bb.encode_image(pixels).global_
        probs = method.probabilities(method.logits({"features": feats}))
        text = bb.encode_texts([f"a photo with {c}." for c in concepts])
    cos = F.normalize(feats.double(), dim=-1) @ F.normalize(text.double(), dim=-1).t()
    got_p = torch.tensor([[float(v) for v in r[2:5]] for r in rows], dtype=torch.float64)
    got_c = torch.tensor([[float(v) for v in r[5:]] for r in rows], dtype=torch.float64)
    torch.testing.assert_close(got_p, probs.double(), atol=2e-6, rtol=0)
    torch.testing.assert_close(got_c, cos, atol=2e-5, rtol=0)
    assert [r[1] for r in rows] == [["cat", "dog", "fish"][int(i)] for i in probs.argmax(1)]


def test_predict_without_bank_and_bad_paths(trained, tmp_path):
    from conceptclip.cli import app

    run, paths = trained
    out = tmp_path / "p.csv"
    _invoke("predict", str(run), str(paths["data"] / "cat" / "0.png"), "-o", str(out))
    assert _rows(out)[0] == ["image", "prediction", "p_cat", "p_dog", "p_fish"]  # no bank named "data"
    res = CliRunner().invoke(app, ["predict", str(run), str(tmp_path / "nope.png"), "-o", str(out)])
    assert res.exit_code != 0 and "image file or folder not found" in str(res.exception)


def test_eval_writes_per_image_predictions(trained, tmp_path):
    run, paths = trained
    out = tmp_path / "m.json"
    _invoke("eval", str(run), "--dataset", str(paths["data"]), "--out", str(out))
    header, *rows = _rows(tmp_path / "m.predictions.csv")
    metrics = json.loads(out.read_text())
    assert header == ["part", "id", "label", "p_cat", "p_dog", "p_fish"]
    assert len(rows) == metrics["n"] == 24
    assert {r[2] for r in rows} == {"cat", "dog", "fish"} and all(r[1].startswith(r[2] + "/") for r in rows)
    correct = sum(max(range(3), key=lambda j: float(r[3 + j])) == ["cat", "dog", "fish"].index(r[2]) for r in rows)
    assert correct / len(rows) == pytest.approx(metrics["accuracy"])


def test_explain_scores_a_bank_and_replaces_its_stale_files(trained, tmp_path):
    run, paths = trained
    out = tmp_path / "ex"
    imgs = [str(paths["data"] / "cat" / "0.png"), str(paths["data"] / "fish" / "1.png")]
    _invoke("explain", str(run), *imgs, "-o", str(out), "-e", "gradcam", "--concepts", str(paths["bank"]))
    doc = json.loads((out / "scores.json").read_text())
    assert list(doc["images"][0]["concept_scores"]) == [f"a photo with {c}." for c in
                                                         ["whiskers", "pointed ears", "floppy ears", "wet nose",
                                                          "fins", "scales"]]
    assert (out / "001_1_gradcam.png").is_file() and (out / "001_1_concepts.png").is_file()
    (out / "notes.txt").write_text("mine")
    _invoke("explain", str(run), imgs[0], "-o", str(out), "-e", "gradcam")
    names = sorted(p.name for p in out.iterdir())
    assert names == ["000_0_gradcam.png", "maps.safetensors", "notes.txt", "scores.json"]
    assert Image.open(out / "000_0_gradcam.png").size[1] > 0
