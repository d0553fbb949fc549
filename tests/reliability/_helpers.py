"""Helpers shared by the reliability tests: a small real checkpoint and one-line CLI checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def make_checkpoint(path: Path, epoch: int) -> Path:
    """A real training checkpoint: an SGD-with-momentum step on a 2x3 parameter, so the
    optimizer state, best state and history are all present."""
    from conceptclip.engine.checkpoint import save_checkpoint

    p = torch.nn.Parameter(torch.arange(6, dtype=torch.float32).reshape(2, 3) + epoch)
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    (p ** 2).sum().backward()
    opt.step()
    return save_checkpoint(path, method_state={"ctx": p.detach()}, optimizer_state=opt.state_dict(), epoch=epoch,
                           best_state={"ctx": p.detach() * 2}, best_score=0.5 + epoch / 100,
                           history=[{"epoch": e, "loss": 1.0 / (e + 1)} for e in range(epoch + 1)])


def run_python(code: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "conceptclip.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit code 2, exactly one non-empty stderr line starting `error:` containing every needle."""
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in r.stderr, r.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
