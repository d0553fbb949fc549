"""RC-TPL end to end on tiny-clip: text-only training from a reports file, then zero-shot
classification, grounding and retrieval on generated images, through the `conceptclip rctpl`
commands and the functions behind them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conceptclip.errors import ConfigError
from conceptclip.prompts.text_features import encode_prompts
from conceptclip.rctpl.corpus import ReportItem, report_item
from conceptclip.rctpl.evaluate import profile_similarity, report_labels, retrieval_scores, with_no_finding
from conceptclip.rctpl.grounding import GroundingItem, load_grounding, truth_mask
from conceptclip.rctpl.train import encode_corpus

REPORTS = [
    {"id": "r1", "findings": "There is a small left pleural effusion. The heart is normal.", "impression": "Left effusion."},
    {"id": "r2", "findings": "Cardiomegaly. No pleural effusion.", "impression": "Enlarged heart."},
    {"id": "r3", "findings": "Right lower lobe opacity. No pneumothorax.", "impression": ""},
    {"id": "r4", "findings": "The lungs are clear. No effusion or pneumothorax.", "impression": "Normal chest."},
    {"id": "r5", "findings": "Bilateral pleural effusions and cardiomegaly.", "impression": ""},
    {"id": "r6", "findings": "Patchy opacity in the left lung base.", "impression": "No cardiomegaly."},
    {"id": "r7", "findings": "Normal heart. Clear lungs.", "impression": ""},
    {"id": "r8", "findings": "Opacity at the right lung base with a small right effusion.", "impression": ""},
]
CLASSES = ["effusion", "cardiomegaly", "opacity"]


def _cli(*args: str):
    from conceptclip.cli import app

    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rctpl")
    (root / "reports.jsonl").write_text("".join(json.dumps(r) + "\n" for r in REPORTS))
    rng = np.random.default_rng(0)
    (root / "img").mkdir()
    rows, boxes = [], []
    for i in range(9):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
        rows.append({"image": f"img/{i}.png", "label": CLASSES[i % 3]})
        boxes.append({"image": f"img/{i}.png", "finding": CLASSES[i % 3], "x": 4, "y": 6, "width": 20, "height": 16})
    for name, cols, data in (("images.csv", ["image", "label"], rows),
                             ("boxes.csv", ["image", "finding", "x", "y", "width", "height"], boxes)):
        with open(root / name, "w", newline="") as fh:
            w = csv.DictWriter(fh, cols)
            w.writeheader()
            w.writerows(data)
    return root


@pytest.fixture(scope="module")
def run(files) -> Path:
    """One text-only training run through the CLI (tiny-clip, 2 epochs of 2 steps)."""
    out = files / "run"
    res = _cli("rctpl", "train", "-o", str(out), "--reports", str(files / "reports.jsonl"), "--backbone", "tiny-clip",
               "--classes", ",".join(CLASSES), "--no-description", "--train", "epochs=2", "--train", "batch_size=4",
               "--train", "lr=0.01", "--train", "progress=false", "--device", "cpu")
    assert res.exit_code == 0, res.output
    return out


def test_training_run_writes_a_results_folder(run):
    for name in ("config.json", "model.safetensors", "history.jsonl", "steps.jsonl", "metrics.json", "checkpoint.safetensors"):
        assert (run / name).is_file(), name
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["method"]["method"] == "rctpl" and cfg["classnames"] == CLASSES and cfg["text_only"]
    assert cfg["corpus"]["reports"] == 8 and cfg["corpus"]["positives_per_class"] == {"effusion": 3, "cardiomegaly": 2, "opacity": 3}
    assert cfg["train"]["optimizer"] == "adamw" and cfg["train"]["epochs"] == 2
    history = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    steps = [json.loads(x) for x in (run / "steps.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [0, 1] and len(steps) == 4
    assert history[0]["loss"] == pytest.approx((steps[0]["loss"] + steps[1]["loss"]) / 2, abs=1e-5)
    assert all(h["loss"] == pytest.approx(h["rank_report"] + h["rank_concept"], abs=1e-5) for h in history)
    from conceptclip.io import load_tensors

    state = load_tensors(run / "model.safetensors")
    assert set(state) == {"report_prompt.ctx", "concept_prompt.ctx"} and state["report_prompt.ctx"].shape[0] == 12


def test_encode_corpus_lays_texts_out_like_images(tiny_clip):
    items = [report_item(r["id"], r, {}) for r in REPORTS[:3]]
    part = encode_corpus(tiny_clip, items, CLASSES)
    t = part.tensors
    n_regions = [len(it.regions) for it in items]
    assert t["patches"].shape == (3, max(n_regions), tiny_clip.embed_dim)
    assert t["patch_mask"].sum(1).tolist() == n_regions
    torch.testing.assert_close(t["features"], encode_prompts(tiny_clip, [it.text for it in items]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(t["patches"][1, :n_regions[1]], encode_prompts(tiny_clip, list(items[1].regions)),
                               rtol=1e-4, atol=1e-5)
    assert t["labels"].tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]


def test_zero_shot_eval_on_an_image_manifest(run, files):
    res = _cli("rctpl", "eval", str(run), "--dataset", str(files / "images.csv"), "--out", str(files / "eval.json"))
    assert res.exit_code == 0, res.output
    m = json.loads((files / "eval.json").read_text())
    assert m["n"] == 9 and set(m["auc_per_class"]) == set(CLASSES)
    for key in ("accuracy", "f1_macro", "auc_macro", "auc_macro_global", "auc_macro_local"):
        assert 0.0 <= m[key] <= 1.0, key


def test_grounding_against_boxes(run, files):
    res = _cli("rctpl", "ground", str(run), "--annotations", str(files / "boxes.csv"), "--out", str(files / "g.json"))
    assert res.exit_code == 0, res.output
    g = json.loads((files / "g.json").read_text())
    assert g["n"] == 9 and g["per_finding"] == {c: 3 for c in sorted(CLASSES)}
    for kind in ("similarity", "gradcam"):
        assert set(g[kind]) == {"pointing_game", "dice", "iou", "precision", "recall"}
        assert all(0.0 <= v <= 1.0 for v in g[kind].values())
        assert g[kind]["pointing_game"] * 9 == pytest.approx(round(g[kind]["pointing_game"] * 9))
    assert set(g["baselines"]) == {"random", "centre"}  # every map score comes with its baselines
    for name, scores in g["baselines"].items():
        assert set(scores) == {"pointing_game", "dice", "iou", "precision", "recall"}
        assert all(0.0 <= v <= 1.0 for v in scores.values())


def test_truth_mask_follows_the_preprocessing_geometry(tmp_path):
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    item = GroundingItem(tmp_path / "a.png", "effusion", boxes=[(0, 0, 32, 16)])
    mask = truth_mask(item, 32)  # 64 -> 32 px (nearest: output row i reads input row 2i + 1)
    expected = torch.zeros(32, 32, dtype=torch.bool)
    expected[:8, :16] = True
    assert torch.equal(mask, expected)
    (tmp_path / "g.json").write_text(json.dumps([{"image": "a.png", "finding": "edema", "boxes": [[1, 2, 3, 4]]},
                                                 {"image": "a.png", "finding": "edema", "boxes": [[5, 6, 7, 8]]}]))
    items = load_grounding(tmp_path / "g.json")
    assert len(items) == 1 and items[0].boxes == [(1, 2, 3, 4), (5, 6, 7, 8)]
    (tmp_path / "bad.json").write_text(json.dumps([{"image": "a.png", "finding": "edema", "boxes": [[1, 2, 0, 4]]}]))
    res = _cli("rctpl", "ground", str(tmp_path), "--annotations", str(tmp_path / "bad.json"))
    assert res.exit_code != 0


def test_retrieval_commands(run, files):
    res = _cli("rctpl", "retrieve", str(run), "--reports", str(files / "reports.jsonl"), "--query-fraction", "0.25",
               "--k", "1", "--k", "3")
    assert res.exit_code == 0, res.output
    r = json.loads(res.output.strip().splitlines()[-1])
    assert (r["n_queries"], r["n_gallery"]) == (2, 6) and 0.0 <= r["precision@3"] <= 1.0
    res = _cli("rctpl", "retrieve", str(run), "--reports", str(files / "reports.jsonl"), "--queries",
               str(files / "images.csv"), "--k", "2")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["n_queries"] == 9


def test_retrieval_scores_hand_computed():
    items = [ReportItem("a", "t", ("t",), frozenset({"effusion"})), ReportItem("b", "t", ("t",)),
             ReportItem("c", "t", ("t",), frozenset({"opacity", "effusion"}))]
    g_labels = report_labels(items, ["effusion", "opacity", "normal"])
    assert g_labels.tolist() == [[1, 0, 0], [0, 0, 1], [1, 1, 0]]
    assert with_no_finding(torch.tensor([[0.0, 0.0], [1.0, 0.0]])).tolist() == [[0, 0, 1], [1, 0, 0]]
    gallery = torch.tensor([[3.0, 0.0], [0.0, 0.0], [2.0, 4.0]])
    # standardised per class: columns (3, 0, 2) and (0, 0, 4) -> the query equal to gallery row i is closest to row i
    sim = profile_similarity(gallery, gallery)
    assert sim.argmax(1).tolist() == [0, 1, 2]
    labels = report_labels(items, ["effusion", "opacity"])
    r = retrieval_scores(gallery, gallery, labels, labels, ks=(1, 2))
    # top-1 is the item itself: always relevant; top-2: a<->c share effusion, b (normal) has no relevant partner
    assert r["precision@1"] == 1.0 and r["precision@2"] == pytest.approx((1.0 + 0.5 + 1.0) / 3)
    assert r["chance_precision"] == pytest.approx(5 / 9)


def test_clear_errors(run, files, tmp_path):
    res = _cli("rctpl", "train", "-o", str(tmp_path / "x"), "--reports", str(tmp_path / "missing.jsonl"),
               "--backbone", "tiny-clip")
    assert res.exit_code != 0 and "reports file not found" in str(res.exception or res.output)
    from conceptclip.rctpl.evaluate import load_rctpl, zero_shot_eval

    method, _ = load_rctpl(run, ["pneumonia", "normal"], multilabel=False)
    from conceptclip.data import load_dataset

    with pytest.raises(ConfigError, match="differ"):
        zero_shot_eval(method, load_dataset(files / "images.csv"))


def test_hand_prompt_baseline_run_without_training(tiny_clip, tmp_path):
    """`--train epochs=0 --set ctx_init=...`: the zero-shot "before" run holds the words' embeddings."""
    from conceptclip.io import load_tensors
    from conceptclip.rctpl.train import train_rctpl

    items = [report_item(r["id"], r, {}) for r in REPORTS]
    m = train_rctpl(tiny_clip, items, CLASSES, tmp_path / "hand", method_config={"ctx_init": "a chest x ray showing"},
                    train_config={"epochs": 0, "progress": False, "accelerator": "cpu"})
    assert m["loss_first_epoch"] is None and m["epochs"] == 0
    state = load_tensors(tmp_path / "hand" / "model.safetensors")
    ids = tiny_clip.tokenize(["a chest x ray showing"]).input_ids[0, 1:-1]
    torch.testing.assert_close(state["report_prompt.ctx"], tiny_clip.token_embedding(ids).detach())
    torch.testing.assert_close(state["concept_prompt.ctx"], state["report_prompt.ctx"])


def test_resume_follows_the_engine_writer(run, files, tmp_path):
    """RC-TPL's folder is written by the engine's one writer: a run stopped after epoch 1 and resumed to
    epochs=2 ends with the uninterrupted run's weights bit for bit, records the change under "resumed",
    and a resume with another lr is refused naming the key."""
    from conceptclip.io import load_tensors

    base = ["--reports", str(files / "reports.jsonl"), "--backbone", "tiny-clip", "--classes", ",".join(CLASSES),
            "--no-description", "--train", "batch_size=4", "--train", "lr=0.01", "--train", "progress=false",
            "--device", "cpu"]
    out = tmp_path / "resumed"
    assert _cli("rctpl", "train", "-o", str(out), *base, "--train", "epochs=1").exit_code == 0
    (out / "metrics.json").unlink()  # as if stopped after its first epoch's checkpoint
    refused = _cli("rctpl", "train", "-o", str(out), *base, "--train", "epochs=2", "--train", "lr=0.5", "--resume")
    assert refused.exit_code != 0 and "train.lr 0.01 -> 0.5" in str(refused.exception or refused.output)
    res = _cli("rctpl", "train", "-o", str(out), *base, "--train", "epochs=2", "--resume")
    assert res.exit_code == 0, res.output
    got, want = load_tensors(out / "model.safetensors"), load_tensors(run / "model.safetensors")
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["resumed"] == [{"from_epoch": 1, "changed": {"epochs": {"from": 1, "to": 2}}}]
    assert json.loads((out / "metrics.json").read_text())["resumed_from_epoch"] == 0
