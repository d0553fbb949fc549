"""Fixtures of the command-line tests: one torch thread, and `run_cli(argv)` in process."""

from __future__ import annotations

import sys
import warnings

import pytest

from torch_threads import single_thread

_one_thread = pytest.fixture(scope="package", autouse=True)(single_thread)


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """`run_cli(*args)` -> (exit code, stdout, stderr) of `conceptclip ARGS` through `cli.main`."""
    from conceptclip.cli import main

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # main() replaces it
    monkeypatch.setitem(__import__("os").environ, "COLUMNS", "200")

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["conceptclip", *args])
        with pytest.raises(SystemExit) as exc:
            main(list(args))
        out, err = capsys.readouterr()
        return exc.value.code, out, err

    return run
