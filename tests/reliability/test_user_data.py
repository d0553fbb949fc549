"""Nothing a user owns is deleted and every failure is one line (issue 18): `--overwrite` replaces only a
folder conceptclip made and only after the new options validated (restoring it when the new run fails);
a failed run leaves no half-created folder; `--resume` refuses a different configuration naming the keys
and records allowed changes; option values are type-checked; `-o` naming a file is one line; results
files get the permissions of plainly created files. The CLI runs in-process through `main(argv)`."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

import conceptclip.io as cio
from conceptclip.cli import main
from conceptclip.engine.run import RUN_MARKER, is_results_folder

TRAIN = ["train", "-m", "coop", "--backbone", "tiny-clip", "--shots", "2", "--set", "n_ctx=2"]


def _snap(folder: Path) -> dict[str, str] | None:
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _cli(capsys, *args: str) -> tuple[int, list[str]]:
    """(exit code, non-empty stderr lines) of `conceptclip ARGS`."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return exc.value.code, err


def _error(capsys, *args: str) -> str:
    code, err = _cli(capsys, *args)
    assert code == 2 and len(err) == 1 and err[0].startswith("error:"), (code, err)
    return err[0]


@pytest.fixture
def train(image_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPTCLIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    return [*TRAIN, "--dataset", str(image_folder)]


@pytest.fixture
def finished(train, tmp_path, capsys):
    out = tmp_path / "finished"
    assert _cli(capsys, *train, "--train", "epochs=2", "-o", out)[0] == 0
    assert is_results_folder(out) and (out / "metrics.json").is_file()
    return out


def test_overwrite_refuses_a_folder_conceptclip_did_not_make(train, image_folder, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(image_folder, copy)
    before = _snap(copy)
    line = _error(capsys, *train, "--train", "epochs=1", "-o", copy, "--overwrite")
    assert "not a conceptclip run folder" in line and str(copy) in line
    assert _snap(copy) == before  # all 30 images kept
    (copy / "config.json").write_text("{}")  # a config.json alone does not make it a results folder
    line = _error(capsys, *train, "--train", "epochs=1", "-o", copy, "--overwrite")
    assert "--overwrite replaces only folders conceptclip made" in line and (copy / "cat" / "0.png").is_file()


def test_overwrite_validates_first_then_replaces_a_finished_run(train, finished, capsys):
    before = _snap(finished)
    for bad, needle in ((["--train", "epochs=abc"], "epochs='abc': expected a number (an integer)"),
                        (["--train", "lr=fast"], "lr='fast': expected a number (finite)"),
                        (["--train", "epochs=1.5"], "epochs=1.5: expected a number (an integer)"),
                        (["--train", "epochs=null"], "epochs=null: expected a number (an integer)"),
                        (["--set", "n_ctx=1.5"], "n_ctx=1.5: expected a number (an integer)"),
                        (["--set", "nctx=2"], "unknown option(s) ['nctx']"),
                        (["--train", "optimizer=adam"], "optimizer='adam'")):
        assert needle in _error(capsys, *train, *bad, "-o", finished, "--overwrite")
        assert _snap(finished) == before  # the finished run is untouched
    assert _cli(capsys, *train, "--train", "epochs=3", "-o", finished, "--overwrite")[0] == 0
    assert json.loads((finished / "config.json").read_text())["train"]["epochs"] == 3
    assert len((finished / "history.jsonl").read_text().splitlines()) == 3
    assert [p.name for p in finished.parent.iterdir() if "replaced" in p.name] == []  # the old one is gone


def test_overwrite_restores_the_old_run_when_the_new_one_fails(train, finished, capsys, monkeypatch):
    import conceptclip.engine.run as run

    before = _snap(finished)

    def broken(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(run, "fit", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        main([*train, "--train", "epochs=3", "-o", str(finished), "--overwrite"])
    assert _snap(finished) == before
    assert sorted(p.name for p in finished.parent.iterdir()) == ["cache", "data", "finished"]


def test_failed_run_leaves_no_folder_and_the_corrected_command_runs(train, tmp_path, capsys, monkeypatch):
    out = tmp_path / "new"
    _error(capsys, *train, "--train", "epochs=abc", "-o", out)  # refused before anything is created
    assert not out.exists()
    from conceptclip.errors import DataError
    import conceptclip.engine.run as run

    def unreadable(*a, **k):  # a failure after the folder was created, before the first checkpoint
        raise DataError("data/cat/3.png: not an image")

    monkeypatch.setattr(run, "build_parts", unreadable)
    assert "cat/3.png" in _error(capsys, *train, "--train", "epochs=1", "-o", out)
    assert not out.exists()
    out.mkdir()  # an empty folder the user made stays (empty)
    _error(capsys, *train, "--train", "epochs=1", "-o", out)
    assert out.is_dir() and list(out.iterdir()) == []
    monkeypatch.undo()
    assert _cli(capsys, *train, "--train", "epochs=1", "-o", out)[0] == 0


def test_interrupted_run_keeps_its_checkpoint(train, tmp_path, capsys, monkeypatch):
    """A failure after a checkpoint was written keeps the folder: --resume continues it."""
    import conceptclip.engine.run as run

    out = tmp_path / "cut"
    real = run.save_tensors

    def die_at_model_save(path, *a, **k):
        if Path(path).name == "model.safetensors":
            raise KeyboardInterrupt
        return real(path, *a, **k)

    monkeypatch.setattr(run, "save_tensors", die_at_model_save)
    code, _ = _cli(capsys, *train, "--train", "epochs=2", "-o", out)
    assert code == 130 and (out / "checkpoint.safetensors").is_file() and (out / "config.json").is_file()
    monkeypatch.undo()
    assert "results folder already exists" in _error(capsys, *train, "--train", "epochs=2", "-o", out)
    assert _cli(capsys, *train, "--train", "epochs=2", "-o", out, "--resume")[0] == 0
    assert json.loads((out / "metrics.json").read_text())["resumed_from_epoch"] == 1


def test_resume_refuses_other_options_and_records_more_epochs(train, tmp_path, capsys, monkeypatch):
    import conceptclip.engine.trainer as trainer

    out = tmp_path / "cut"
    real, saves = trainer.save_checkpoint, [0]

    def save_then_stop(*a, **k):
        real(*a, **k)
        saves[0] += 1
        if saves[0] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_stop)
    assert _cli(capsys, *train, "--train", "epochs=4", "-o", out)[0] == 130
    monkeypatch.undo()
    before = _snap(out)
    line = _error(capsys, *train, "--train", "epochs=4", "--train", "lr=0.5", "-o", out, "--resume")
    assert "train.lr 0.002 -> 0.5" in line and "epochs" not in line
    line = _error(capsys, *train, "--train", "epochs=4", "--set", "n_ctx=3", "--seed", "2", "-o", out, "--resume")
    assert "method.config.n_ctx 2 -> 3" in line and "train.seed 1 -> 2" in line and "split_sha256" in line
    line = _error(capsys, *train, "--train", "epochs=1", "-o", out, "--resume")
    assert "epochs=1" in line and "2 finished epochs" in line
    assert _snap(out) == before  # refused resumes change nothing
    assert _cli(capsys, *train, "--train", "epochs=6", "-o", out, "--resume")[0] == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["epochs"] == 6
    assert cfg["resumed"] == [{"from_epoch": 2, "changed": {"epochs": {"from": 4, "to": 6}}}]
    assert len((out / "history.jsonl").read_text().splitlines()) == 6


def test_out_naming_a_file_is_one_line(train, tmp_path, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("keep me\n")
    for extra in ([], ["--overwrite"], ["--resume"]):
        assert "is not a folder" in _error(capsys, *train, "--train", "epochs=1", "-o", f, *extra)
    assert "cannot create the results folder" in _error(capsys, *train, "--train", "epochs=1", "-o", f / "sub")
    assert f.read_text() == "keep me\n"


def test_demo_overwrite_refuses_a_folder_it_did_not_make(tmp_path, image_folder, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(image_folder, copy)
    before = _snap(copy)
    assert "not a conceptclip demo folder" in _error(capsys, "demo", "--out", copy, "--overwrite")
    assert "not a conceptclip demo folder" in _error(capsys, "demo", "--out", copy)  # nor writes into it
    assert "expected shots >= 1" in _error(capsys, "demo", "--out", tmp_path / "d", "--shots", "0")
    assert _snap(copy) == before and not (tmp_path / "d").exists()
    (copy / RUN_MARKER).write_text(json.dumps({"kind": "run"}))  # a run marker does not make a demo folder
    assert "not a conceptclip demo folder" in _error(capsys, "demo", "--out", copy, "--overwrite")


def test_results_files_get_plain_file_permissions(tmp_path, monkeypatch):
    for umask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        monkeypatch.setattr(cio, "_UMASK", umask)
        path = tmp_path / f"m{umask:o}.json"
        cio.write_json(path, {"a": 1})
        cio.save_tensors(tmp_path / f"t{umask:o}.safetensors", {})
        assert (path.stat().st_mode & 0o777, (tmp_path / f"t{umask:o}.safetensors").stat().st_mode & 0o777) == (mode, mode)
    os.chmod(path, 0o640)  # an existing file keeps its mode when replaced
    cio.write_json(path, {"a": 2})
    assert path.stat().st_mode & 0o777 == 0o640 and json.loads(path.read_text()) == {"a": 2}
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    monkeypatch.undo()
    cio.write_text(tmp_path / "atomic.txt", "x")  # the process umask: the same mode as open() gives
    assert (tmp_path / "atomic.txt").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
