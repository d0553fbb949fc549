"""The training loop: selection, resume after SIGKILL to identical weights, results folders, checkpoints."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conceptclip.data import fewshot_split, from_folder, holdout_split
from conceptclip.engine import TrainConfig, fit, run_experiment
from conceptclip.engine.checkpoint import load_checkpoint
from conceptclip.engine.data import Part
from conceptclip.engine.load import load_run
from conceptclip.errors import CheckpointError, ConfigError
from conceptclip.io import load_tensors
from conceptclip.methods import create_method

CLASSES = ["cat", "dog", "fish"]


def _part(n: int, dim: int, seed: int) -> Part:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, dim, generator=torch.Generator().manual_seed(42))
    y = torch.arange(3).repeat(n // 3)
    x = centers[y] + 0.5 * torch.randn(len(y), dim, generator=g)
    return Part([str(i) for i in range(len(y))], y, tensors={"features": x, "labels": y, "index": torch.arange(len(y))})


def test_fit_learns_and_selects_on_validation(tiny_clip):
    coop = create_method("coop", tiny_clip, CLASSES, {"n_ctx": 4})
    train, val = _part(30, tiny_clip.embed_dim, 0), _part(12, tiny_clip.embed_dim, 1)
    cfg = TrainConfig(epochs=15, lr=0.05, batch_size=8, progress=False, select="val")
    result = fit(coop, train, val, cfg)
    losses = [r["loss"] for r in result.history]
    assert len(losses) == 15 and losses[-1] < losses[0]
    scores = [r["val_accuracy"] for r in result.history]
    best = min((r for r in result.history if r["val_accuracy"] == max(scores)), key=lambda r: r["val_loss"])
    assert result.best_score == max(scores) and result.best_epoch == best["epoch"]  # ties: the lower val loss
    # val_loss is the mean negative log-likelihood of the true class under the selected model
    from conceptclip.engine import predict

    probs = predict(coop, val)
    nll = -probs.gather(1, val.labels[:, None]).log().mean()
    assert abs(float(nll) - best["val_loss"]) < 1e-5
    assert result.selection["select"] == "val" and result.selection["epoch"] == best["epoch"]
    assert f"epoch {best['epoch']} had the best validation accuracy" in result.selection["reason"]


def test_fit_tests_the_final_epoch_by_default(tiny_clip):
    """The few-shot papers' protocol (CoOp and successors): the final epoch's weights are kept
    (validation is only logged), and the result says which epoch and why."""
    torch.manual_seed(0)
    coop = create_method("coop", tiny_clip, CLASSES, {"n_ctx": 4})
    train, v = _part(30, tiny_clip.embed_dim, 0), _part(12, tiny_clip.embed_dim, 1)
    shifted = (v.labels + 1) % 3
    val = Part(v.ids, shifted, tensors={**v.tensors, "labels": shifted})
    snapshots: list[dict] = []
    cfg = TrainConfig(epochs=6, lr=0.5, batch_size=8, warmup_epochs=0, progress=False)
    assert cfg.select == "last"
    result = fit(coop, train, val, cfg, on_epoch=lambda r: snapshots.append(
        {k: v.detach().clone() for k, v in coop.learned_state().items()}))
    scores = [r["val_accuracy"] for r in result.history]
    assert len(scores) == 6  # validation is still logged every epoch
    assert result.best_epoch == 5 and result.selection["epoch"] == 5
    assert "select=last: the final epoch of 6 (0-based 5)" in result.selection["reason"]
    for k, v in coop.learned_state().items():
        assert torch.equal(v, snapshots[-1][k])
    assert not all(torch.equal(v, snapshots[0][k]) for k, v in coop.learned_state().items())
    with pytest.raises(ConfigError, match="select='best'"):
        TrainConfig.from_dict({"select": "best"})


SCRIPT = textwrap.dedent("""
    import os, signal, sys, torch
    from conceptclip.backbones import create_backbone
    from conceptclip.engine import TrainConfig, fit, predict
    from conceptclip.engine.data import Part
    from conceptclip.io import save_tensors
    from conceptclip.methods import create_method
    ckpt, out, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    bb = create_backbone("tiny-clip")
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat(10)
    x = torch.randn(3, bb.embed_dim, generator=g)[y] + 1.5 * torch.randn(30, bb.embed_dim, generator=g)
    part = Part([str(i) for i in range(30)], y, tensors={"features": x, "labels": y, "index": torch.arange(30)})
    torch.manual_seed(0)  # the context initialisation
    m = create_method("coop", bb, ["cat", "dog", "fish"], {"n_ctx": 4})
    steps = [0]
    def step_end():
        steps[0] += 1
        if steps[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    m.on_train_step_end = step_end
    r = fit(m, part, part, TrainConfig(epochs=6, lr=0.05, batch_size=8, progress=False), checkpoint=ckpt)
    # the selected state and its predictions (probabilities on the part)
    save_tensors(out, {**m.learned_state(), "probs": predict(m, part)})
    print("resumed_from", r.resumed_from, "best_epoch", r.best_epoch, "best_score", r.best_score)
""")


def _run(tmp_path: Path, name: str, kill_at: int) -> subprocess.CompletedProcess:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    return subprocess.run([sys.executable, str(script), str(tmp_path / f"{name}.ckpt"), str(tmp_path / f"{name}.out"),
                           str(kill_at)], capture_output=True, text=True, timeout=900)


def test_sigkill_mid_training_resumes_to_identical_weights(tmp_path):
    """SIGKILL inside an epoch (a seeded step), then a resume: the same LAST state, optimiser state,
    best state, history, selection and predictions as a run never killed."""
    kill_at = random.Random(18).randint(5, 19)  # 4 steps per epoch x 6 epochs: somewhere inside, reproducibly
    ref = _run(tmp_path, "ref", kill_at=-1)
    assert ref.returncode == 0, ref.stderr
    killed = _run(tmp_path, "cut", kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "cut.out").exists()
    state = load_checkpoint(tmp_path / "cut.ckpt")  # the checkpoint left behind is whole and valid
    assert state["epoch"] == (kill_at - 1) // 4 - 1  # the last epoch finished before the kill
    resumed = _run(tmp_path, "cut", kill_at=-1)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed_from {state['epoch']}" in resumed.stdout
    # selection and predictions
    assert ref.stdout.split("best_epoch")[1] == resumed.stdout.split("best_epoch")[1]
    a, b = load_tensors(tmp_path / "ref.out"), load_tensors(tmp_path / "cut.out")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the LAST state, optimiser state and history of the final checkpoints
    last_ref, last_cut = load_checkpoint(tmp_path / "ref.ckpt"), load_checkpoint(tmp_path / "cut.ckpt")
    assert last_ref["epoch"] == last_cut["epoch"] == 5 and last_ref["history"] == last_cut["history"]
    for key in ("method_state", "best_state"):
        assert all(torch.equal(last_ref[key][k], last_cut[key][k]) for k in last_ref[key])
    opt_ref, opt_cut = last_ref["optimizer_state"]["state"], last_cut["optimizer_state"]["state"]
    assert all(torch.equal(opt_ref[p][k], opt_cut[p][k]) for p in opt_ref for k in opt_ref[p])


def test_run_experiment_results_folder_and_reload(image_folder, tiny_clip, tmp_path):
    ds = from_folder(image_folder)
    split = fewshot_split(ds, holdout_split(ds), 2, 1)
    out = tmp_path / "run"
    metrics = run_experiment("coop", ds, split, tiny_clip, out, method_config={"n_ctx": 2},
                             train_config={"epochs": 3, "progress": False})
    for name in ("config.json", "split.json", "checkpoint.safetensors", "model.safetensors", "history.jsonl",
                 "predictions.csv", "metrics.json"):
        assert (out / name).is_file(), name
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["split_sha256"] == split.sha256() and cfg["classnames"] == CLASSES
    assert metrics["test"]["n"] == len(split.parts["test"])
    method, _ = load_run(out)
    from conceptclip.data import FeatureCache
    from conceptclip.engine import predict
    from conceptclip.engine.data import build_part

    part = build_part(ds, split.parts["test"], method.inputs, method.backbone, FeatureCache())
    probs = predict(method, part)
    header, *lines = (out / "predictions.csv").read_text().splitlines()
    rows = [line.split(",") for line in lines]
    assert torch.allclose(probs, torch.tensor([[float(v) for v in r[3:]] for r in rows]), atol=1e-5)
    # the label is the class name, spelt as its probability column
    assert header == "part,id,label,p_cat,p_dog,p_fish"
    assert [r[2] for r in rows] == [CLASSES[int(part.labels[i])] for i in range(len(rows))]
    shared: dict = {}  # runs on the same backbone weights share one loaded backbone
    first, second = load_run(out, backbones=shared)[0], load_run(out, backbones=shared)[0]
    assert first.backbone is second.backbone and len(shared) == 1 and first.backbone is not method.backbone
    assert torch.equal(first.learned_state()["prompt.ctx"], method.learned_state()["prompt.ctx"])
    with pytest.raises(ConfigError, match="results folder already exists"):
        run_experiment("coop", ds, split, tiny_clip, out)
    with pytest.raises(ConfigError, match="already finished"):
        run_experiment("coop", ds, split, tiny_clip, out, resume=True)


def test_corrupt_checkpoint_is_named(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{truncated")
    with pytest.raises(CheckpointError, match="model.safetensors: not a valid safetensors file"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_train_config_validation():
    with pytest.raises(ConfigError, match="optimizer='adam'"):
        TrainConfig.from_dict({"optimizer": "adam"})
    with pytest.raises(ConfigError, match="unknown option"):
        TrainConfig.from_dict({"epoch": 3})
    cfg = TrainConfig(epochs=10, lr=0.1, warmup_epochs=1, warmup_lr=1e-5)
    assert cfg.lr_at(0) == 1e-5 and cfg.lr_at(5) == pytest.approx(0.05)


def test_text_features_computed_once_per_step_not_per_image(tiny_clip, monkeypatch):
    """CoOp encodes all class prompts in one text-encoder call per step, whatever the batch size."""
    coop = create_method("coop", tiny_clip, CLASSES, {"n_ctx": 4})
    calls = []
    original = type(tiny_clip).encode_text

    def counting(self, tokens, inputs_embeds=None):
        calls.append(tokens.input_ids.shape[0])
        return original(self, tokens, inputs_embeds)

    monkeypatch.setattr(type(tiny_clip), "encode_text", counting)
    train = _part(30, tiny_clip.embed_dim, 0)
    fit(coop, train, None, TrainConfig(epochs=2, batch_size=10, progress=False))
    assert calls == [3] * 6  # 2 epochs x 3 steps, each one call over the 3 class prompts
