"""`conceptclip --help` and every `COMMAND --help` without importing torch, and no command dropped when
an optional extra is missing (the sub-apps import their extras inside the command bodies)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
COMMANDS = ["align", "train", "eval", "predict", "sanity", "demo", "encode", "methods", "backbones", "concepts",
            "bench", "explain", "rctpl", "report", "serve"]
# the optional extras (pyproject.toml): web (fastapi, uvicorn, python-multipart) and open_clip
EXTRAS = ["fastapi", "uvicorn", "multipart", "python_multipart", "open_clip", "starlette"]


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_importing_the_cli_does_not_import_torch():
    res = _python("import conceptclip.cli, sys; assert 'torch' not in sys.modules, 'torch imported'; "
                  "assert 'numpy' not in sys.modules, 'numpy imported'")
    assert res.returncode == 0, res.stderr[-3000:]


def test_help_exits_0_lists_every_command_and_imports_no_torch():
    code = ("import sys\n"
            "from conceptclip.cli import main\n"
            "for argv in [['--help']] + [[c, '--help'] for c in sys.argv[1:]]:\n"
            "    try:\n"
            "        main(argv)\n"
            "    except SystemExit as e:\n"
            "        assert e.code == 0, (argv, e.code)\n"
            "    assert 'torch' not in sys.modules, argv\n")
    res = _python(code.replace("sys.argv[1:]", repr(COMMANDS)))
    assert res.returncode == 0, res.stderr[-3000:]
    top = res.stdout.split("Usage: conceptclip [OPTIONS] COMMAND")[1].split("Usage:")[0]
    listed = {line.split()[1] for line in top.splitlines() if line.startswith("│ ") and len(line.split()) > 2}
    assert set(COMMANDS) <= listed, sorted(set(COMMANDS) - listed)
    assert res.stdout.count("Usage: conceptclip ") == 1 + len(COMMANDS)


def test_python_dash_m_conceptclip_help():
    res = _python("import runpy, sys; sys.argv = ['conceptclip', '--help']; "
                  "runpy.run_module('conceptclip', run_name='__main__')")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Usage:" in res.stdout and "serve" in res.stdout


def test_no_command_is_dropped_without_the_optional_extras():
    blocked = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in EXTRAS)
    res = _python(blocked + "from conceptclip.cli import main\n"
                  "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n")
    assert res.returncode == 0, res.stderr[-3000:]
    for command in COMMANDS:
        assert f"│ {command} " in res.stdout, command


@pytest.mark.parametrize("command", ["serve", "report"])
def test_subcommand_help_without_the_extras(command):
    blocked = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in EXTRAS + ["jinja2"])
    res = _python(blocked + "from conceptclip.cli import main\n"
                  f"try:\n    main([{command!r}, '--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n")
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"Usage: conceptclip {command}" in res.stdout
