"""Point 1, interruption: every file a run writes is replaced atomically (temp file + rename).
Faults are injected at each stage of a write, in-process (the writer or the rename raises) and by
killing the writing process (os._exit) mid-write and between fsync and rename: the previous file
always stays whole and valid, and a half-written temp file is never accepted as a checkpoint.
A training run killed through the CLI resumes with --resume to the same weights and predictions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import conceptclip.io as cio
from conceptclip.engine.checkpoint import load_checkpoint
from conceptclip.errors import CheckpointError
from conceptclip.io import load_tensors, save_tensors, write_json, write_text

from _helpers import REPO, cli, make_checkpoint


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


WRITERS = {
    "write_text": (lambda p, v: write_text(p, f"version {v}\n"), lambda p: p.read_text()),
    "write_json": (lambda p, v: write_json(p, {"version": v}), lambda p: json.loads(p.read_text())),
    "save_tensors": (lambda p, v: save_tensors(p, {"w": torch.full((64,), float(v))}),
                     lambda p: load_tensors(p)["w"][0].item()),
    "save_checkpoint": (lambda p, v: make_checkpoint(p, v), lambda p: load_checkpoint(p)["epoch"]),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_failed_rename_keeps_previous_file(tmp_path, monkeypatch, writer):
    write, read = WRITERS[writer]
    path = tmp_path / "target"
    write(path, 1)
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cio.os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        write(path, 2)
    monkeypatch.undo()
    assert path.read_bytes() == before and read(path) in (1, 1.0, "version 1\n", {"version": 1})
    assert _leftovers(tmp_path) == []  # the temp file is cleaned up


@pytest.mark.parametrize("writer", ["save_tensors", "save_checkpoint"])
def test_writer_dying_half_way_keeps_previous_file(tmp_path, monkeypatch, writer):
    """The safetensors writer writes half the bytes and raises: the target is untouched."""
    import safetensors.torch as st

    write, read = WRITERS[writer]
    path = tmp_path / "target.safetensors"
    write(path, 3)
    before = path.read_bytes()
    real = st.save_file

    def half_then_fail(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(st, "save_file", half_then_fail)
    with pytest.raises(OSError, match="Input/output"):
        write(path, 4)
    monkeypatch.undo()
    assert path.read_bytes() == before and read(path) == 3
    assert _leftovers(tmp_path) == []


KILL_SCRIPT = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    import safetensors.torch as st
    import conceptclip.io as cio
    sys.path.insert(0, sys.argv[3])
    from _helpers import make_checkpoint
    from conceptclip.io import write_json
    path, stage = Path(sys.argv[1]), sys.argv[2]
    kind = "ckpt" if path.suffix == ".safetensors" else "json"
    (make_checkpoint(path, 1) if kind == "ckpt" else write_json(path, {"version": 1}))
    if stage == "mid-write":
        real = st.save_file
        def half(tensors, filename, metadata=None):
            real(tensors, filename, metadata=metadata)
            data = Path(filename).read_bytes()
            Path(filename).write_bytes(data[: len(data) // 2])
            os._exit(137)
        st.save_file = half
        real_write = Path.write_text
        def half_text(self, text, *a, **k):
            real_write(self, text[: len(text) // 2], *a, **k)
            os._exit(137)
        Path.write_text = half_text
    else:  # killed after the temp file is complete and fsynced, before the rename
        cio.os.replace = lambda src, dst: os._exit(137)
    (make_checkpoint(path, 2) if kind == "ckpt" else write_json(path, {"version": 2, "pad": "x" * 4000}))
    print("not killed")
""")


def test_process_killed_mid_write_leaves_previous_valid(tmp_path):
    """4 kills (checkpoint and metrics.json x mid-write and before-rename) in parallel processes."""
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cases = [(name, stage) for name in ("checkpoint.safetensors", "metrics.json") for stage in ("mid-write", "pre-rename")]
    procs = []
    for name, stage in cases:
        folder = tmp_path / f"{stage}-{name}"
        folder.mkdir()
        procs.append((folder / name, stage, subprocess.Popen(
            [sys.executable, str(script), str(folder / name), stage, str(Path(__file__).parent)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)))
    for path, stage, proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 137 and "not killed" not in out, err
        temps = [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
        assert len(temps) == 1  # a kill leaves the temp file behind, under a name nothing reads
        if path.suffix == ".safetensors":
            assert load_checkpoint(path)["epoch"] == 1  # the previous checkpoint is whole
            if stage == "mid-write":
                with pytest.raises(CheckpointError, match="not a valid safetensors file"):
                    load_checkpoint(temps[0])  # the half file is never read as valid
            else:
                assert load_checkpoint(temps[0])["epoch"] == 2  # complete but never renamed
        else:
            assert json.loads(path.read_text()) == {"version": 1}
            if stage == "mid-write":
                with pytest.raises(json.JSONDecodeError):
                    json.loads(temps[0].read_text())
        # the next write of the same file removes the dead writer's temp; a live writer's stays
        live = path.parent / f".{path.name}.{os.getpid()}.live.tmp"
        live.write_text("in progress")
        write_json(path, {"version": 3})
        assert sorted(p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")) == [live.name]
        assert path.read_text().count("version") == 1


def test_every_truncation_of_a_checkpoint_is_refused(tmp_path):
    """A checkpoint cut at any of 60 lengths (every header byte, then across the body) never loads."""
    good = make_checkpoint(tmp_path / "good.safetensors", 5)
    data = good.read_bytes()
    cuts = sorted(set(range(0, 20)) | {round(len(data) * i / 40) for i in range(1, 40)} | {len(data) - 1})
    refused = 0
    for n in cuts:
        bad = tmp_path / "cut.safetensors"
        bad.write_bytes(data[:n])
        with pytest.raises(CheckpointError, match="cut.safetensors"):
            load_checkpoint(bad)
        refused += 1
    assert refused == len(cuts) >= 58
    assert load_checkpoint(good)["epoch"] == 5


RESUME_WRAPPER = textwrap.dedent("""
    import os, signal, sys
    import conceptclip.engine.trainer as trainer
    real, saves, kill_after = trainer.save_checkpoint, [0], int(sys.argv[1])
    def save_then_maybe_die(*a, **k):
        out = real(*a, **k)
        saves[0] += 1
        if saves[0] == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    trainer.save_checkpoint = save_then_maybe_die
    sys.argv = ["conceptclip", *sys.argv[2:]]
    from conceptclip.cli import main
    main()
""")


@pytest.mark.slow
def test_cli_train_killed_then_resumed_matches_uninterrupted(tmp_path, image_folder, one_line):
    """`conceptclip train` is SIGKILLed after its 2nd of 4 epoch checkpoints; `--resume` finishes it to
    the same model.safetensors and predictions.csv as a run never interrupted; without --resume the
    folder is refused and left as it was."""
    wrapper = tmp_path / "wrap.py"
    wrapper.write_text(RESUME_WRAPPER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}

    def train(out: Path, kill_after: int, *extra: str) -> subprocess.CompletedProcess:
        args = ["train", "-m", "coop", "--backbone", "tiny-clip", "--dataset", str(image_folder), "--shots", "2",
                "--set", "n_ctx=2", "--train", "epochs=4", "--train", "lr=0.05", "-o", str(out), *extra]
        return subprocess.run([sys.executable, str(wrapper), str(kill_after), *args], capture_output=True, text=True,
                              timeout=300, env=env)

    ref, cut = tmp_path / "ref", tmp_path / "cut"
    r = train(ref, -1)
    assert r.returncode == 0, r.stderr[-2000:]
    r = train(cut, 2)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert load_checkpoint(cut / "checkpoint.safetensors")["epoch"] == 1 and not (cut / "metrics.json").exists()
    before = {p.name: p.read_bytes() for p in cut.iterdir()}
    one_line(cli("train", "-m", "coop", "--backbone", "tiny-clip", "--dataset", str(image_folder), "--shots", "2",
                 "-o", str(cut)), "results folder already exists", "--resume")
    assert {p.name: p.read_bytes() for p in cut.iterdir()} == before  # nothing lost or replaced
    r = train(cut, -1, "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = load_tensors(ref / "model.safetensors"), load_tensors(cut / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (ref / "predictions.csv").read_text() == (cut / "predictions.csv").read_text()
    mr, mc = json.loads((ref / "metrics.json").read_text()), json.loads((cut / "metrics.json").read_text())
    assert mc["resumed_from_epoch"] == 1 and mr["resumed_from_epoch"] is None
    assert mr["test"] == mc["test"] and mr["best_epoch"] == mc["best_epoch"]
    assert (ref / "history.jsonl").read_text() == (cut / "history.jsonl").read_text()
