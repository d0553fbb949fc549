"""One set of option helpers for train, bench and rctpl: KEY=VALUE lists (values JSON where they are
JSON), METHOD.KEY=VALUE, METHOD=N, `--train` with `--device` as the accelerator, `--device` itself; the
same one-line error wherever an option is parsed."""

from __future__ import annotations

import json

import pytest

from conceptclip.cli.options import (parse_method_counts, parse_method_options, parse_options, pick_device,
                                     split_names, train_options)
from conceptclip.errors import ConfigError


def test_key_values_are_json_where_they_are_json():
    items = ["n_ctx=8", "ctx_init=a photo of a", "csc=true", "w=[1, 2]", " lr = 0.5", "empty=", "eq=a=b"]
    assert parse_options(items, "--set") == {"n_ctx": 8, "ctx_init": "a photo of a", "csc": True, "w": [1, 2],
                                             "lr": 0.5, "empty": "", "eq": "a=b"}
    assert parse_options(None, "--set") == {}
    with pytest.raises(ConfigError) as exc:
        parse_options(["n_ctx"], "--set")
    assert str(exc.value) == "--set 'n_ctx': expected KEY=VALUE"
    with pytest.raises(ConfigError) as exc:
        parse_options(["=3"], "--train", example="epochs=20")
    assert str(exc.value) == "--train '=3': expected KEY=VALUE, e.g. epochs=20"


def test_method_options_and_counts():
    assert parse_method_options(["biomedcoop.lambda_sccm=10", "coop.ctx_init=a photo", "biomedcoop.tau=2.0"]) == \
        {"biomedcoop": {"lambda_sccm": 10, "tau": 2.0}, "coop": {"ctx_init": "a photo"}}
    for bad in ("coop=3", ".n_ctx=2", "coop.=2", "coop.n_ctx"):
        with pytest.raises(ConfigError) as exc:
            parse_method_options([bad])
        assert str(exc.value) == f"--set {bad!r}: expected METHOD.KEY=VALUE, e.g. biomedcoop.tau=2.0"
    assert parse_method_counts(["coop=20", " cocoop =5"]) == {"coop": 20, "cocoop": 5}
    for bad in ("coop=-1", "coop=2.5", "=3", "coop"):
        with pytest.raises(ConfigError, match=r"expected METHOD=N with N a non-negative integer"):
            parse_method_counts([bad])


def test_train_options_take_the_device_as_accelerator():
    assert train_options(["epochs=5", "seed=4"], "cuda:1", seed=1) == {"seed": 4, "epochs": 5, "accelerator": "cuda:1"}
    assert train_options(None, None, seed=2) == {"seed": 2}
    assert split_names(["a, b", "c", " "]) == ["a", "b", "c"] and split_names(None) is None
    assert pick_device("cpu") == "cpu" and pick_device("cuda:3") == "cuda:3"
    with pytest.raises(ConfigError, match=r"^--device 'gpu': expected cpu, cuda or cuda:N$"):
        pick_device("gpu")


def test_train_and_bench_report_a_bad_option_alike(run_cli, image_folder, tmp_path):
    base = ["--backbone", "tiny-clip", "--dataset", str(image_folder), "--shots", "2"]
    code, out, err = run_cli("train", "-m", "zeroshot", *base, "-o", str(tmp_path / "t"), "--train", "epochs")
    assert (code, out, err) == (2, "", "error: --train 'epochs': expected KEY=VALUE\n")
    code, out, err = run_cli("bench", "fewshot", "--methods", "zeroshot", *base, "--out", str(tmp_path / "b"),
                             "--train", "epochs")
    assert (code, out, err) == (2, "", "error: --train 'epochs': expected KEY=VALUE, e.g. epochs=20\n")
    code, out, err = run_cli("bench", "fewshot", "--methods", "zeroshot", *base, "--out", str(tmp_path / "b"),
                             "--epochs", "coop=x")
    assert code == 2 and err.startswith("error: --epochs 'coop=x': expected METHOD=N")
    code, out, err = run_cli("train", "-m", "zeroshot", *base, "-o", str(tmp_path / "t"), "--device", "gpu")
    assert (code, err) == (2, "error: --device 'gpu': expected cpu, cuda or cuda:N\n")


def test_rctpl_uses_the_same_helpers(run_cli, tmp_path):
    reports = tmp_path / "reports.jsonl"
    reports.write_text("".join(json.dumps({"id": f"r{i}", "findings": "Small left pleural effusion.",
                                           "impression": ""}) + "\n" for i in range(3)))
    args = ["rctpl", "train", "-o", str(tmp_path / "r"), "--reports", str(reports), "--backbone", "tiny-clip",
            "--classes", "effusion"]
    code, out, err = run_cli(*args, "--train", "epochs")
    assert (code, out, err) == (2, "", "error: --train 'epochs': expected KEY=VALUE\n")
    code, out, err = run_cli(*args, "--device", "gpu")
    assert (code, err) == (2, "error: --device 'gpu': expected cpu, cuda or cuda:N\n")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", [["explain", "RUN", "IMG", "-o", "OUT"], ["predict", "RUN", "IMG", "-o", "OUT.csv"],
                                     ["report", "RUN", "-o", "OUT.html"], ["serve", "--run", "RUN"]])
def test_commands_on_a_finished_run_check_device_before_loading(command, run_cli, tmp_path):
    """A bad --device is one line naming it (it was a RuntimeError from deep inside torch), checked before
    the run (here: a folder that does not even exist) is read."""
    args = [str(tmp_path / a) if a.isupper() else a for a in command]
    code, _, err = run_cli(*args, "--device", "gpu")
    assert code == 2
    assert err.strip() == "error: --device 'gpu': expected cpu, cuda or cuda:N"
