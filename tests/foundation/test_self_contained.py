"""A results folder is self-contained: files named by a method's options travel with it (copied, with
their sha256 in config.json), so eval/explain/report work from any folder, and a missing or changed
piece is named instead of skipped."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from conceptclip.data import fewshot_split, from_folder, holdout_split
from conceptclip.engine import run_experiment
from conceptclip.engine.files import check_files
from conceptclip.engine.load import load_run
from conceptclip.errors import CheckpointError


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory, tiny_clip, pets):
    """A biomedcoop run whose bank option is a RELATIVE path in the training folder, then the
    training folder deleted: only the results folder is left."""
    tmp = tmp_path_factory.mktemp("self_contained")
    paths = pets(tmp / "work")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp / "work")
        ds = from_folder(paths["data"])
        split = fewshot_split(ds, holdout_split(ds), 2, 1)
        out = tmp / "results" / "run"
        run_experiment("biomedcoop", ds, split, tiny_clip, out, method_config={"bank": "bank.json"},
                       train_config={"epochs": 1, "progress": False})
    bank_sha = hashlib.sha256((tmp / "work" / "bank.json").read_bytes()).hexdigest()
    shutil.rmtree(tmp / "work")
    return out, bank_sha


@pytest.fixture
def trained(trained_once, tmp_path, monkeypatch):
    """A fresh copy of the run, the working directory elsewhere."""
    out = tmp_path / "copy" / "run"
    shutil.copytree(trained_once[0], out)
    monkeypatch.chdir(tmp_path)
    return out, trained_once[1]


def test_option_files_are_copied_with_their_sha256(trained):
    out, bank_sha = trained
    cfg = json.loads((out / "config.json").read_text())
    rel = cfg["method"]["config"]["bank"]
    assert rel.startswith("files/") and (out / rel).is_file()
    rec = cfg["files"]["method.bank"]
    assert rec["path"] == rel and rec["sha256"] == bank_sha
    assert rec["source"].endswith("bank.json")
    assert check_files(out, cfg) == []


def test_run_loads_from_another_folder_without_the_original_bank(trained):
    out, _ = trained
    method, cfg = load_run(out)
    assert any("whiskers" in p for p in method.ensembles.prompts[0])  # the bank's concepts, from the run's copy


def test_missing_or_changed_piece_is_named(trained):
    out, _ = trained
    cfg = json.loads((out / "config.json").read_text())
    copy = out / cfg["files"]["method.bank"]["path"]
    copy.write_text(copy.read_text().replace("whiskers", "stripes"))
    with pytest.raises(CheckpointError, match=r"has changed since training \(option method\.bank"):
        load_run(out)
    copy.unlink()
    with pytest.raises(CheckpointError, match=r"bank-bank\.json is missing \(option method\.bank"):
        load_run(out)
    assert "is missing" in check_files(out, cfg)[0]


def test_report_names_the_missing_piece(trained, tmp_path):
    from conceptclip.report.build import build_report

    out, _ = trained
    cfg = json.loads((out / "config.json").read_text())
    (out / cfg["files"]["method.bank"]["path"]).unlink()
    lines: list[str] = []
    build_report([out], tmp_path / "r.html", images=1, tsne=False, log=lines.append)
    html = (tmp_path / "r.html").read_text()
    assert any("is incomplete" in line and "is missing" in line for line in lines)
    assert "incomplete:" in html and "bank-bank.json is missing" in html
    assert "does not load" in html  # the group's cards say why there are none
