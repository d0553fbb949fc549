"""The results-folder rules, without training: which folders `--overwrite` may replace, what a failing
run leaves behind, and which configuration changes `--resume` refuses or records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conceptclip.engine import TrainConfig
from conceptclip.engine.checkpoint import save_checkpoint
from conceptclip.engine.run import RUN_MARKER, check_run_dir, claim_run_dir, is_results_folder, resume_config
from conceptclip.errors import ConfigError


def _run_folder(path: Path, kind: str = "run", config: dict | None = None) -> Path:
    path.mkdir(parents=True)
    (path / RUN_MARKER).write_text(json.dumps({"kind": kind, "format": 1}))
    if kind == "run":
        (path / "config.json").write_text(json.dumps(config or {"train": {"lr": 0.002}}))
    (path / "model.safetensors").write_bytes(b"weights")
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_is_results_folder(tmp_path):
    run = _run_folder(tmp_path / "run")
    demo = _run_folder(tmp_path / "demo", kind="demo")
    assert is_results_folder(run) and not is_results_folder(run, "demo")
    assert is_results_folder(demo, "demo") and not is_results_folder(demo)  # a demo needs no config.json
    (run / "config.json").unlink()
    assert not is_results_folder(run)  # a run folder holds its config.json
    for marker in ("not json", "[1, 2]", '{"kind": "other"}'):
        (demo / RUN_MARKER).write_text(marker)
        assert not is_results_folder(demo, "demo")
    assert not is_results_folder(tmp_path / "absent")


def test_check_run_dir(tmp_path):
    assert check_run_dir(tmp_path / "absent") == "new"
    (tmp_path / "empty").mkdir()
    assert check_run_dir(tmp_path / "empty") == "new" and check_run_dir(tmp_path / "empty", overwrite=True) == "new"
    claimed = tmp_path / "claimed"
    claimed.mkdir()
    (claimed / RUN_MARKER).write_text('{"kind": "run"}')  # a run killed right after creating its folder
    assert check_run_dir(claimed) == "new"
    (tmp_path / "file").write_text("x")
    for kw in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(ConfigError, match="file: exists and is not a folder"):
            check_run_dir(tmp_path / "file", **kw)
    mine = _run_folder(tmp_path / "mine")
    assert check_run_dir(mine, overwrite=True) == "replace" and check_run_dir(mine, resume=True) == "resume"
    assert check_run_dir(mine, overwrite=True, resume=True) == "replace"
    with pytest.raises(ConfigError, match="mine: results folder already exists; pass --resume"):
        check_run_dir(mine)
    (mine / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match="already finished"):
        check_run_dir(mine, resume=True)
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.png").write_bytes(b"img")
    with pytest.raises(ConfigError, match=r"data: not a conceptclip run folder \(no .conceptclip-run marker and "
                                          r"config.json\); --overwrite replaces only folders conceptclip made"):
        check_run_dir(data, overwrite=True)
    with pytest.raises(ConfigError, match=r"not a conceptclip demo folder \(no .conceptclip-run marker\);"):
        check_run_dir(data, overwrite=True, kind="demo")
    with pytest.raises(ConfigError, match="config.json missing"):
        check_run_dir(data, resume=True)
    assert _files(data) == {"a.png": b"img"}


class _Boom(Exception):
    pass


def test_claim_new_folder_removed_on_failure_unless_it_holds_a_checkpoint(tmp_path):
    out = tmp_path / "a" / "b"
    with claim_run_dir(out, "new", kind="demo") as got:
        assert got == out and json.loads((out / RUN_MARKER).read_text()) == {"kind": "demo", "format": 1}
    assert out.is_dir()
    fresh = tmp_path / "fresh"
    with pytest.raises(_Boom):
        with claim_run_dir(fresh, "new"):
            (fresh / "split.json").write_text("{}")
            raise _Boom
    assert not fresh.exists()
    with pytest.raises(KeyboardInterrupt):
        with claim_run_dir(fresh, "new"):
            (fresh / "checkpoint.safetensors").write_bytes(b"ckpt")
            raise KeyboardInterrupt
    assert (fresh / "checkpoint.safetensors").is_file()  # resumable work is kept
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(_Boom):
        with claim_run_dir(empty, "new"):
            (empty / "config.json").write_text("{}")
            raise _Boom
    assert empty.is_dir() and list(empty.iterdir()) == []  # the user's empty folder stays, empty


def test_claim_replace_restores_the_old_folder_on_failure(tmp_path):
    old = _run_folder(tmp_path / "run")
    before = _files(old)
    with pytest.raises(_Boom):
        with claim_run_dir(old, "replace"):
            assert list(old.iterdir()) == [old / RUN_MARKER]  # a fresh folder while the old one is aside
            (old / "checkpoint.safetensors").write_bytes(b"new")
            raise _Boom
    assert _files(old) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    with claim_run_dir(old, "replace"):
        (old / "config.json").write_text('{"new": true}')
    assert _files(old) == {RUN_MARKER: b'{\n  "kind": "run",\n  "format": 1\n}\n', "config.json": b'{"new": true}'}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the old folder is gone


def test_claim_resume_removes_nothing_and_a_blocked_path_is_one_line(tmp_path):
    run = _run_folder(tmp_path / "run")
    before = _files(run)
    with pytest.raises(_Boom):
        with claim_run_dir(run, "resume"):
            raise _Boom
    assert _files(run) == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="file/sub: cannot create the results folder"):
        with claim_run_dir(tmp_path / "file" / "sub", "new"):
            pass


CONFIG = {"method": {"method": "coop", "config": {"n_ctx": 2}}, "train": {"epochs": 4, "lr": 0.002, "seed": 1,
          "progress": True}, "split_sha256": "abc"}


def _resume(tmp_path, new: dict, epochs: int, ckpt_epoch: int | None = 1, old: dict | None = None) -> dict:
    out = tmp_path / "run"
    if not out.exists():
        _run_folder(out, config=old or CONFIG)
        if ckpt_epoch is not None:
            save_checkpoint(out / "checkpoint.safetensors", method_state={"w": torch.zeros(1)}, optimizer_state=None,
                            epoch=ckpt_epoch, best_state=None, best_score=None, history=[])
    return resume_config(out, new, TrainConfig(epochs=epochs))


def _with(**train) -> dict:
    return {**CONFIG, "train": {**CONFIG["train"], **train}}


def test_resume_same_config_records_nothing(tmp_path):
    assert _resume(tmp_path, json.loads(json.dumps(CONFIG)), 4) == {**CONFIG, "resumed": []}


def test_resume_refuses_other_options_naming_them(tmp_path):
    with pytest.raises(ConfigError, match=r"run: --resume with options that differ from the run's config.json \("
                                          r"train.lr 0.002 -> 0.5; train.seed 1 -> 2\); resume with the same"):
        _resume(tmp_path, _with(lr=0.5, seed=2, epochs=6), 6)
    other = {**CONFIG, "method": {"method": "coop", "config": {"n_ctx": 3}}, "split_sha256": "def", "extra": [1]}
    with pytest.raises(ConfigError, match=r"\(extra \(absent\) -> \[1\]; method.config.n_ctx 2 -> 3; "
                                          r"split_sha256 \"abc\" -> \"def\"\)"):
        _resume(tmp_path, other, 4)


def test_resume_records_allowed_changes_from_the_next_epoch(tmp_path):
    new = _resume(tmp_path, _with(epochs=6, progress=False), 6)
    assert new["train"]["epochs"] == 6
    assert new["resumed"] == [{"from_epoch": 2, "changed": {"epochs": {"from": 4, "to": 6},
                                                             "progress": {"from": True, "to": False}}}]
    # a second resume keeps the first record and compares with the config as it now stands
    (tmp_path / "run" / "config.json").write_text(json.dumps(new))
    again = _resume(tmp_path, _with(epochs=8, progress=False), 8)
    assert again["resumed"] == [*new["resumed"], {"from_epoch": 2, "changed": {"epochs": {"from": 6, "to": 8}}}]


def test_resume_epochs_not_below_the_finished_ones(tmp_path):
    assert _resume(tmp_path, _with(epochs=2), 2)["resumed"][0]["from_epoch"] == 2  # exactly the finished: allowed
    with pytest.raises(ConfigError, match="epochs=1, but the checkpoint has 2 finished epochs; expected epochs >= 2"):
        _resume(tmp_path, _with(epochs=1), 1)


def test_resume_without_checkpoint_starts_at_epoch_0(tmp_path):
    new = _resume(tmp_path, _with(epochs=1), 1, ckpt_epoch=None)
    assert new["resumed"] == [{"from_epoch": 0, "changed": {"epochs": {"from": 4, "to": 1}}}]


def test_resume_unreadable_config_is_one_line(tmp_path):
    out = _run_folder(tmp_path / "run")
    for text in ("{broken", "[1]"):
        (out / "config.json").write_text(text)
        with pytest.raises(ConfigError, match="config.json: cannot read the run's config"):
            resume_config(out, CONFIG, TrainConfig())
