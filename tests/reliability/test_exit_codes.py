"""The exit-code contract, through the real console entry point (`conceptclip = conceptclip.cli:main`,
loaded from the installed package's entry points) in subprocesses, for every sub-app: usage errors exit 2
with click's usage message on stderr, documented errors exit 2 with one `error:` line on stderr, Ctrl-C
exits 130, success 0. No traceback anywhere.

The matrix runs in one subprocess that imports the entry point once and forks a child per command
(stdout/stderr redirected at the file-descriptor level, the child's exit status is what `sys.exit`
gave): 20 fresh interpreters, each importing torch, took minutes on a loaded 2-core machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _helpers import REPO

# what the `conceptclip` console script runs: the entry point named in the installed metadata
ENTRY = ("import sys; from importlib.metadata import entry_points; sys.argv[0] = 'conceptclip'; "
         "sys.exit(entry_points(group='console_scripts')['conceptclip'].load()())")


def _env(tmp_path: Path) -> dict[str, str]:
    path = os.pathsep.join([str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path, "OMP_NUM_THREADS": "1",
            "CONCEPTCLIP_CACHE": str(tmp_path / "cache"), "TQDM_DISABLE": "1"}


DRIVER = """
import json, os, sys
from importlib.metadata import entry_points
main = entry_points(group="console_scripts")["conceptclip"].load()
cases, outdir = json.loads(sys.argv[1]), sys.argv[2]
codes = {}
for name, args in cases.items():
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        for fd, ext in ((1, "out"), (2, "err")):
            os.dup2(os.open(os.path.join(outdir, name + "." + ext), os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        sys.argv = ["conceptclip", *args]
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 1
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
    codes[name] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
print(json.dumps(codes))
"""


def _run_all(tmp_path: Path, cases: dict[str, list[str]]) -> dict[str, tuple[int, str, str]]:
    """name -> (exit code, stdout, stderr) of `conceptclip ARGS...` for every case."""
    import json

    logs = tmp_path / "logs"
    logs.mkdir()
    r = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(cases), str(logs)], capture_output=True, text=True,
                       env=_env(tmp_path), cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    codes = json.loads(r.stdout.strip().splitlines()[-1])
    return {k: (codes[k], (logs / f"{k}.out").read_text(), (logs / f"{k}.err").read_text()) for k in cases}


def _start(tmp_path: Path, *args: str) -> subprocess.Popen:
    # SIGINT restored to its default: a shell starts background jobs with SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler (the test would hang where CI runs in the background)
    return subprocess.Popen([sys.executable, "-c", ENTRY, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(tmp_path), cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _lines(text: str) -> list[str]:
    """Non-empty lines, without Python warnings (a library's FutureWarning and its source line)."""
    out, skip = [], False
    for line in text.splitlines():
        if "Warning:" in line:
            skip = True
            continue
        if skip and line.startswith(" "):
            continue
        skip = False
        if line.strip():
            out.append(line)
    return out


def test_entry_point_is_main():
    from importlib.metadata import entry_points

    assert entry_points(group="console_scripts")["conceptclip"].value == "conceptclip.cli:main"


def test_usage_documented_and_success_exit_codes_of_every_sub_app(tmp_path, image_folder):
    missing = tmp_path / "missing"
    usage = {  # every sub-app: an unknown option or a missing argument
        "train": ["train", "--dataset", str(image_folder)],  # --method and -o missing
        "align": ["align", "--epochs", "many"],
        "eval": ["eval"],
        "concepts": ["concepts", "show"],
        "bench": ["bench", "fewshot", "--bogus"],
        "explain": ["explain", "run", "img.png", "--bogus"],
        "rctpl": ["rctpl", "train", "--bogus"],
        "report": ["report", "--bogus"],
        "serve": ["serve", "--bogus"],
        "top": ["no-such-command"],
    }
    documented = {  # a documented error of every sub-app: one line on stderr naming the value
        "train": (["train", "-m", "coop", "--backbone", "tiny-clip", "--dataset", str(image_folder), "--shots", "2", "-o",
                   str(tmp_path / "o"), "--train", "epochs=1.5"], "epochs=1.5"),
        "eval": (["eval", str(missing), "--dataset", str(image_folder)], "missing"),
        "concepts": (["concepts", "show", str(tmp_path / "bank.json")], "bank.json"),
        "bench": (["bench", "fewshot", "--shots", "0", "--out", str(tmp_path / "b")], "--shots"),
        "explain": (["explain", str(missing), str(tmp_path / "x.png"), "-o", str(tmp_path / "e")], "missing"),
        "report": (["report", str(missing)], "missing"),
        "serve": (["serve", "--run", str(missing), "--port", "0"], "--port"),
        "rctpl": (["rctpl", "train", "--reports", str(tmp_path / "r.jsonl"), "-o", str(tmp_path / "r")], "r.jsonl"),
    }
    cases = {f"usage-{k}": a for k, a in usage.items()}
    cases.update({f"documented-{k}": a for k, (a, _) in documented.items()})
    cases.update({"success-methods": ["methods"], "success-help": ["concepts", "--help"]})
    done = _run_all(tmp_path, cases)
    for key, (code, out, err) in done.items():
        kind, name = key.split("-", 1)
        assert "Traceback" not in err + out, (key, err[-2000:])
        if kind == "usage":
            assert code == 2, (key, code, err[-2000:])
            assert "Usage: conceptclip" in err and "Error:" in err, (key, err)
            assert out == "", (key, out)
        elif kind == "documented":
            lines = _lines(err)
            assert code == 2, (key, code, err[-2000:])
            assert len(lines) == 1 and lines[0].startswith("error:"), (key, err)
            assert documented[name][1] in lines[0], (key, lines[0])
            assert out == "", (key, out)  # errors never go to stdout (scripts read it)
        else:
            assert code == 0, (key, err[-2000:])
    assert "coop" in done["success-methods"][1].split()


def test_ctrl_c_exits_130_and_keeps_the_resumable_run(tmp_path, image_folder):
    out = tmp_path / "run"
    p = _start(tmp_path, "train", "-m", "coop", "--backbone", "tiny-clip", "--dataset", str(image_folder), "--shots",
               "2", "--set", "n_ctx=2", "--train", "epochs=100000", "-o", str(out))
    deadline = time.time() + 300
    while not (out / "checkpoint.safetensors").exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert p.poll() is None, p.communicate()[1][-2000:]
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, (p.returncode, err[-2000:])
    assert "Traceback" not in err
    # the interrupted run keeps what --resume needs
    assert (out / "config.json").is_file() and (out / "checkpoint.safetensors").is_file()
    assert not (out / "metrics.json").exists()


@pytest.mark.parametrize("args", [["methods"], ["backbones"]])
def test_in_process_main_returns_success(args, capsys):
    """`main(argv)` exits 0 on success (typer's return value is not dropped)."""
    from conceptclip.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0
