"""docs/own-data.md, end to end: every `conceptclip` command of its bash blocks runs as written (only
the epochs made small), on the generated shapes dataset and the hand-written bank of the page — the
five seed methods, zero-shot, eval, predict, explain, report, serve and the page's curl call of the
web API. The commands are read from the Markdown, so the page cannot drift from the CLI."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from report.test_report_docs import blocks  # noqa: E402
from web_server import running_server  # noqa: E402

FAST_EPOCHS = {"align": "5", "train": "1"}


def doc_commands() -> list[list[str]]:
    """The `conceptclip ...` commands of own-data.md's bash blocks, in order, as argument lists."""
    out = []
    for block in blocks("own-data.md", "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" # ")[0].strip()
            if line.startswith("conceptclip "):
                out.append(shlex.split(line)[1:])
    return out


def curl_commands() -> list[str]:
    return [line.strip() for b in blocks("own-data.md", "bash") for line in b.splitlines()
            if line.strip().startswith("curl ")]


def fast(args: list[str]) -> list[str]:
    """The command with few epochs: `align --epochs N` and `train --train epochs=N`."""
    args = list(args)
    for i, a in enumerate(args):
        if args[0] == "align" and a == "--epochs":
            args[i + 1] = FAST_EPOCHS["align"]
        if a.startswith("epochs=") and args[i - 1] == "--train":
            args[i] = "epochs=" + FAST_EPOCHS["train"]
    return args


def test_doc_commands_cover_the_walkthrough():
    cmds = doc_commands()
    trained = {a[a.index("-m") + 1] for a in cmds if a[0] == "train"}
    assert {"zeroshot", "coop", "xcoop", "deal", "ecor", "biomedcoop"} <= trained
    assert [a[0] for a in cmds].count("serve") == 1
    for name in ("align", "eval", "predict", "explain", "report"):
        assert any(a[0] == name for a in cmds), name
    assert curl_commands() and "-F file=@" in curl_commands()[0]


def test_doc_commands_parse_against_the_cli():
    """Every option of every command exists and every required one is given (the CLI parses each
    command without running it); cheap, so it runs by default."""
    import typer

    from conceptclip.cli import app

    root = typer.main.get_command(app)
    for args in doc_commands():
        cmd = root.get_command(None, args[0])
        assert cmd is not None, f"own-data.md: no command {args[0]!r}"
        try:
            cmd.make_context(args[0], list(args[1:]))
        except Exception as exc:  # a renamed, removed or missing option (typer's click usage errors)
            pytest.fail(f"own-data.md: `conceptclip {' '.join(args)}`: {exc}")
        with pytest.raises(Exception):  # the check can fail: a misspelt option is refused
            cmd.make_context(args[0], [*args[1:], "--no-such-option"])


@pytest.mark.slow
def test_walkthrough_end_to_end(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from conceptclip.cli import app
    from conceptclip.web.app import create_app

    monkeypatch.chdir(tmp_path)
    exec(compile(blocks("own-data.md", "python")[0], "own-data.md", "exec", dont_inherit=True), {"__name__": "doc"})
    Path("shapes/bank.json").write_text(blocks("own-data.md", "json")[1])
    api_example = json.loads(blocks("own-data.md", "json")[2])
    served = False
    for args in doc_commands():
        args = fast(args)
        if args[0] == "serve":
            opts = dict(zip(args[1::2], args[2::2]))
            web = create_app(opts["--run"], bank=opts.get("--concepts"))
            with running_server(web) as port:
                for curl in curl_commands():
                    cmd = shlex.split(curl.replace("127.0.0.1:8000", f"127.0.0.1:{port}"))
                    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
                    assert res.returncode == 0, res.stderr
                    answer = json.loads(res.stdout)
                    assert set(answer) == set(api_example), "the page's JSON example lists the API's fields"
                    assert answer["prediction"] in ("circle", "square", "triangle")
                    assert answer["concept_kind"] == "cosine" and answer["concepts"]
            served = True
            continue
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, f"conceptclip {' '.join(args)}:\n{res.output}\n{res.exception!r}"
    assert served
    runs = Path("runs/shapes")
    for m in ("zeroshot", "coop", "xcoop", "deal", "ecor", "biomedcoop"):
        metrics = json.loads((runs / m / "metrics.json").read_text())
        assert metrics["test"]["n"] == 18, m
        cfg = json.loads((runs / m / "config.json").read_text())
        assert cfg["files"]["backbone"]["path"] == "lite_heads.safetensors"
        if m not in ("zeroshot", "coop"):  # the bank travels with the run
            assert cfg["files"]["method.bank"]["path"].startswith("files/"), m
    xcoop = json.loads((runs / "xcoop" / "config.json").read_text())
    refs = " ".join(map(str, xcoop["method"]["reference_prompts"]))
    assert "dermoscopy" not in refs and "round outline" in refs  # the page's bank, not PH2's
    assert Path("runs/shapes/coop_all.predictions.csv").read_text().startswith("part,id,label,p_circle,")
    header = Path("shapes/predictions.csv").read_text().splitlines()[0]
    assert header.startswith("image,prediction,p_circle,p_square,p_triangle,c_a round outline,")
    assert len(Path("shapes/predictions.csv").read_text().splitlines()) == 61
    scores = json.loads(Path("explained/scores.json").read_text())
    assert len(scores["images"]) == 2 and scores["images"][0]["concept_scores"]
    html = Path("shapes.html").read_text()
    for m in ("xcoop", "deal", "ecor", "biomedcoop"):
        assert f"{m} · fewshot · K=4" in html
    assert "incomplete:" not in html
    assert json.loads(Path("runs/shapes_disjoint/zeroshot/metrics.json").read_text())["test"]["n"] == 18
