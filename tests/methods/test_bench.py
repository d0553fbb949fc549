"""The protocol runner: list options, few-shot and base-to-novel tables, resumption, settings checks."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conceptclip.bench import run_protocol, write_tables
from conceptclip.cli.bench import bench_app
from conceptclip.bench.table import base2novel_summary, fewshot_markdown, fewshot_summary, harmonic_mean
from conceptclip.errors import ConfigError

CLASSES = ("melanoma", "nevus", "keratosis", "lentigo")


@pytest.fixture
def toy_folder(tmp_path):
    """4 classes x 10 random 32 px PNGs, each class with its own mean colour."""
    rng = np.random.default_rng(2)
    for c, name in enumerate(CLASSES):
        (tmp_path / "toy" / name).mkdir(parents=True)
        for i in range(10):
            arr = np.clip(rng.normal(40 + 50 * c, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(tmp_path / "toy" / name / f"{i}.png")
    return tmp_path / "toy"


def test_summary_mean_std_and_harmonic_mean():
    recs = [{"method": "coop", "shots": 1, "seed": s, "accuracy": a, "balanced_accuracy": a, "f1_macro": a,
             "auc_macro": a} for s, a in ((1, 0.5), (2, 0.7), (3, 0.6))]
    row = fewshot_summary(recs)[0]
    assert row["n_seeds"] == 3 and abs(row["accuracy_mean"] - 0.6) < 1e-12 and abs(row["accuracy_std"] - 0.1) < 1e-12
    assert "| coop | 60.0 ± 10.0 |" in fewshot_markdown(fewshot_summary(recs))
    assert abs(harmonic_mean(0.8, 0.4) - 2 * 0.32 / 1.2) < 1e-12 and harmonic_mean(0.0, 0.0) == 0.0
    b2n = [{"method": "coop", "shots": 4, "seed": s, "base_accuracy": b, "novel_accuracy": n,
            "harmonic_mean": harmonic_mean(b, n)} for s, b, n in ((1, 0.9, 0.3), (2, 0.7, 0.5))]
    row = base2novel_summary(b2n)[0]
    assert abs(row["base_mean"] - 0.8) < 1e-12 and abs(row["novel_mean"] - 0.4) < 1e-12
    assert abs(row["harmonic_mean"] - harmonic_mean(0.8, 0.4)) < 1e-12  # H of the means, not mean of the Hs


def test_fewshot_runs_tables_and_resumes(tmp_path, toy_folder, monkeypatch):
    out = tmp_path / "bench"
    kw = dict(backbone="tiny-clip", max_epochs=2, progress=False, log=lambda s: None)
    records = run_protocol("fewshot", str(toy_folder), ["zeroshot", "coop"], [1, 2], [1, 2], out, **kw)
    assert len(records) == 8 and {r["shots"] for r in records} == {1, 2}
    train_cfg = json.loads((out / "fewshot" / "coop" / "K2_seed1" / "config.json").read_text())["train"]
    assert train_cfg["epochs"] == 2 and train_cfg["eval_every"] >= 10**9  # tested after the final epoch
    assert train_cfg["select"] == "last"  # the same rule `conceptclip train` uses by default
    assert json.loads((out / "fewshot" / "coop" / "K2_seed1" / "metrics.json").read_text())["best_epoch"] == 1
    assert (out / "fewshot" / "splits" / "K2_seed2.json").is_file() and (out / "pools.json").is_file()
    paths = write_tables("fewshot", records, out)
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [(r["method"], r["shots"]) for r in rows][:2] == [("zeroshot", "1"), ("zeroshot", "2")]
    zs = [r for r in records if r["method"] == "zeroshot" and r["shots"] == 1]
    assert abs(float(rows[0]["accuracy_mean"]) - np.mean([r["accuracy"] for r in zs])) < 1e-9
    assert "K=1 | K=2" in paths["md"].read_text() and paths["png"].stat().st_size > 1000

    # a rerun trains nothing: every run is finished
    import conceptclip.engine as engine

    monkeypatch.setattr(engine, "run_experiment", lambda *a, **k: pytest.fail("a finished run was redone"))
    again = run_protocol("fewshot", str(toy_folder), ["zeroshot", "coop"], [1, 2], [1, 2], out, **kw)
    assert again == records
    with pytest.raises(ConfigError, match="other settings"):
        run_protocol("fewshot", str(toy_folder), ["coop"], [1], [1], out, **{**kw, "max_epochs": 3})


def test_base2novel_reports_base_novel_and_h(tmp_path, toy_folder):
    out = tmp_path / "b2n"
    records = run_protocol("base2novel", str(toy_folder), ["zeroshot", "coop"], [2], [1], out, backbone="tiny-clip",
                           max_epochs=1, progress=False, log=lambda s: None)
    for r in records:
        assert 0 <= r["novel_accuracy"] <= 1 and abs(r["harmonic_mean"] - harmonic_mean(r["base_accuracy"],
                                                                                          r["novel_accuracy"])) < 1e-9
    metrics = json.loads((out / "base2novel" / "coop" / "K2_seed1" / "metrics.json").read_text())
    # class folders sort to keratosis, lentigo (base: the first half) | melanoma, nevus (novel)
    assert metrics["test_novel"]["n"] == 6 and set(metrics["test_novel"]["auc_per_class"]) == {"melanoma", "nevus"}
    paths = write_tables("base2novel", records, out)
    assert "| coop | 2 |" in paths["md"].read_text()


def test_base2novel_refuses_a_single_novel_class(tmp_path, image_folder):
    with pytest.raises(ConfigError, match="1 novel class"):
        run_protocol("base2novel", str(image_folder), ["coop"], [1], [1], tmp_path / "x", backbone="tiny-clip",
                     progress=False, log=lambda s: None)


def test_cli_takes_several_values_after_one_flag(tmp_path, toy_folder):
    out = tmp_path / "cli"
    res = CliRunner().invoke(bench_app, ["fewshot", "--dataset", str(toy_folder), "--backbone", "tiny-clip",
                                         "--methods", "zeroshot", "lp_pp", "--shots", "1", "2", "--seeds", "3",
                                         "--out", str(out), "--threads", "1"])
    assert res.exit_code == 0, res.output
    runs = sorted(p.parent.name + "/" + p.parent.parent.name for p in (out / "fewshot").glob("*/*/metrics.json"))
    assert runs == ["K1_seed3/lp_pp", "K1_seed3/zeroshot", "K2_seed3/lp_pp", "K2_seed3/zeroshot"]
    assert "| lp_pp |" in res.stdout


def test_unknown_method_and_bad_options_fail_clearly(tmp_path, toy_folder):
    with pytest.raises(ConfigError, match="unknown method"):
        run_protocol("fewshot", str(toy_folder), ["nope"], [1], [1], tmp_path, backbone="tiny-clip", log=lambda s: None)
    res = CliRunner().invoke(bench_app, ["fewshot", "--dataset", str(toy_folder), "--set", "coop=3", "--out",
                                         str(tmp_path / "y"), "--backbone", "tiny-clip"])
    assert res.exit_code != 0 and "METHOD.KEY=VALUE" in str(res.exception)


def test_seed_mean_bootstrap_interval_resamples_test_images(tmp_path):
    """Two seeds' predictions on the same test images (listed in different orders): the interval is the
    percentile bootstrap of the seed-mean accuracy, resampling images with one draw shared by both seeds."""
    import torch

    from conceptclip.bench.table import add_confidence_intervals, read_run_predictions, seed_mean_ci
    from conceptclip.engine import classification_metrics

    rng = np.random.default_rng(0)
    ids = [f"i{k}" for k in range(30)]
    labels = rng.integers(0, 3, 30)
    runs = []
    for s in range(2):
        probs = rng.dirichlet(np.ones(3), 30)
        order = rng.permutation(30) if s else np.arange(30)
        d = tmp_path / f"run{s}"
        d.mkdir()
        lines = ["part,id,label,p_a,p_b,p_c"] + [f"test,{ids[i]},{labels[i]}," + ",".join(f"{p:.6f}" for p in probs[i])
                                                for i in order]
        (d / "predictions.csv").write_text("\n".join(lines) + "\n")
        runs.append((probs.round(6), d))
    # the estimate is the mean over seeds of each run's own metrics
    read = [read_run_predictions(d) for _, d in runs]
    ci = seed_mean_ci(read, "accuracy", n_resamples=200)
    want = np.mean([classification_metrics(torch.tensor(p), torch.tensor(labels), ["a", "b", "c"])["accuracy"]
                    for p, _ in runs])
    assert abs(ci.estimate - want) < 1e-12
    auc = seed_mean_ci(read, "auc_b", n_resamples=50, classnames=["a", "b", "c"])
    want_auc = np.mean([classification_metrics(torch.tensor(p), torch.tensor(labels), ["a", "b", "c"])["auc_per_class"]["b"]
                        for p, _ in runs])
    assert abs(auc.estimate - want_auc) < 1e-9
    # the interval, recomputed by hand: same seeded draws over the first run's id order
    gen = torch.Generator().manual_seed(0)
    means = []
    for _ in range(200):
        idx = torch.randint(0, 30, (30,), generator=gen).tolist()
        accs = []
        for p, _ in runs:
            accs.append(sum(1 for i in idx if int(np.argmax(p[i])) == labels[i]) / 30)
        means.append(sum(accs) / 2)
    lo, hi = np.quantile(means, [0.025, 0.975])
    assert abs(ci.low - lo) < 1e-12 and abs(ci.high - hi) < 1e-12 and ci.low < ci.estimate < ci.high
    # a summary row gets the interval and the markdown prints it
    recs = [{"method": "m", "shots": 1, "seed": s, "run": str(d), "accuracy": 0.5, "balanced_accuracy": 0.5,
             "f1_macro": 0.5, "auc_macro": 0.5} for s, (_, d) in enumerate(runs)]
    summary = fewshot_summary(recs)
    add_confidence_intervals(summary, recs, n_resamples=200)
    assert abs(summary[0]["accuracy_ci_low"] - lo) < 1e-12
    assert f"[{100 * lo:.0f}, {100 * hi:.0f}]" in fewshot_markdown(summary)
