"""Reading results folders: discovery, grouping, mean ± std over seeds, predictions.csv parsing,
card image selection, and the metrics/bench tables of the page — on hand-written run folders
whose numbers are known."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from conceptclip.errors import ConfigError


def write_run(path: Path, method: str, seed: int, acc: float, *, shots: int = 4, auc: float = 0.8,
              preds: str | None = None, split_kind: str = "fewshot", extra_metrics: dict | None = None,
              finished: bool = True, options: dict | None = None, train: dict | None = None) -> Path:
    """A results folder written by hand (the layout `engine.run` writes)."""
    path.mkdir(parents=True)
    split = json.dumps({"dataset": "toy", "kind": split_kind, "seed": seed}, indent=2) + "\n"
    (path / "split.json").write_text(split)
    cfg = {"method": {"method": method, "config": options or {"n_ctx": 4}}, "train": {"seed": seed, **(train or {})},
           "backbone": "tiny-clip", "classnames": ["a", "b"], "template": "a photo of a {}.", "multilabel": False,
           "backbone_weights": "w0", "dataset": "toy", "dataset_fingerprint": "f0",
           "split_sha256": hashlib.sha256(split.encode()).hexdigest(), "split_kind": split_kind,
           "split_params": {"shots": shots, "seed": seed}}
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "history.jsonl").write_text("".join(json.dumps({"epoch": e, "loss": 1.0 / (e + 1), "val_accuracy": 0.5})
                                                + "\n" for e in range(3)))
    (path / "predictions.csv").write_text(preds or "part,id,label,p_a,p_b\ntest,x1,0,0.900000,0.100000\n"
                                                   "test,x2,1,0.300000,0.700000\ntest,x3,1,0.600000,0.400000\n")
    if finished:
        metrics = {"method": method, "fit_seconds": 1.5, "best_epoch": 2,
                   "test": {"n": 3, "accuracy": acc, "balanced_accuracy": acc, "f1_macro": acc, "ece": 0.1,
                            "auc_macro": auc, "auc_per_class": {"a": auc, "b": auc}}}
        metrics.update(extra_metrics or {})
        (path / "metrics.json").write_text(json.dumps(metrics))
    return path


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    root = tmp_path / "runs"
    write_run(root / "coop_seed1", "coop", 1, 0.5, auc=0.7)
    write_run(root / "coop_seed2", "coop", 2, 0.7, auc=0.9)
    write_run(root / "coop_seed3", "coop", 3, 0.6, auc=0.8)
    write_run(root / "zeroshot_seed1", "zeroshot", 1, 0.4, options={"templates": []})
    write_run(root / "coop_seed4", "coop", 4, 0.0, finished=False)
    (root / "pools.json").write_text("{}")
    return root


def test_find_and_group_runs_mean_std_over_seeds(runs_dir):
    from conceptclip.report.runs import find_runs, format_mean_std, group_runs

    runs = find_runs([runs_dir])
    assert [r.path.name for r in runs] == ["coop_seed1", "coop_seed2", "coop_seed3", "coop_seed4", "zeroshot_seed1"]
    assert [r.finished for r in runs] == [True, True, True, False, True]
    groups = group_runs(runs)
    assert [(g.method, g.seeds) for g in groups] == [("coop", [1, 2, 3]), ("zeroshot", [1])]
    s = groups[0].summary()["test"]
    # accuracies 0.5, 0.7, 0.6: mean 0.6, sample std sqrt(((-.1)^2 + .1^2 + 0) / 2) = 0.1
    assert s["accuracy"]["mean"] == pytest.approx(0.6) and s["accuracy"]["std"] == pytest.approx(0.1)
    assert s["auc_macro"]["mean"] == pytest.approx(0.8) and s["auc_macro"]["std"] == pytest.approx(0.1)
    assert s["accuracy"]["n"] == 3
    assert groups[1].summary()["test"]["accuracy"] == {"mean": 0.4, "std": 0.0, "n": 1}
    assert format_mean_std(0.6, 0.1) == "0.600 ± 0.100"
    assert format_mean_std(float("nan"), 0.0) == "–"
    assert groups[0].label == "coop · fewshot · K=4"


def test_runs_differing_in_options_or_shots_form_separate_groups(tmp_path):
    from conceptclip.report.runs import find_runs, group_runs

    write_run(tmp_path / "a1", "coop", 1, 0.5, options={"n_ctx": 4})
    write_run(tmp_path / "a2", "coop", 2, 0.5, options={"n_ctx": 16})
    write_run(tmp_path / "a3", "coop", 1, 0.5, options={"n_ctx": 4}, shots=8)
    write_run(tmp_path / "a4", "coop", 2, 0.7, options={"n_ctx": 4})
    groups = group_runs(find_runs([tmp_path]))
    assert sorted(len(g.runs) for g in groups) == [1, 1, 2]
    labels = sorted(g.label for g in groups)
    assert labels == ["coop · fewshot · K=4 · n_ctx=16", "coop · fewshot · K=4 · n_ctx=4", "coop · fewshot · K=8"]


def test_only_replicates_are_pooled_and_groups_are_labelled_by_what_differs(tmp_path):
    """Runs that differ in any training option (epochs) are not replicates, and two runs of one
    configuration with the same seed are not either: never pooled, each group labelled apart."""
    from conceptclip.report.runs import find_runs, group_runs

    write_run(tmp_path / "e20_s1", "xcoop", 1, 0.5, train={"epochs": 20}, options={"bank": "ph2", "modality": "x"})
    write_run(tmp_path / "e50_s1", "xcoop", 1, 0.7, train={"epochs": 50}, options={"bank": "ph2", "modality": "x"})
    write_run(tmp_path / "e50_s2", "xcoop", 2, 0.6, train={"epochs": 50}, options={"bank": "ph2", "modality": "x"})
    write_run(tmp_path / "e50_s2_again", "xcoop", 2, 0.6, train={"epochs": 50, "progress": False},
              options={"bank": "ph2", "modality": "x"})
    groups = group_runs(find_runs([tmp_path]))
    got = sorted((g.label, g.seeds) for g in groups)
    assert got == [("xcoop · fewshot · K=4 · epochs=20", [1]),
                   ("xcoop · fewshot · K=4 · epochs=50", [1, 2]),
                   ("xcoop · fewshot · K=4 · epochs=50, copy 2", [2])]
    for g in groups:
        assert len(set(g.seeds)) == len(g.seeds)  # no seed twice in a group


def test_find_runs_errors(tmp_path):
    from conceptclip.report.runs import find_runs

    with pytest.raises(ConfigError, match="run folder not found"):
        find_runs([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no results folders"):
        find_runs([tmp_path / "empty"])
    with pytest.raises(ConfigError, match="at least one"):
        find_runs([])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json: cannot read results file"):
        find_runs([bad])


def test_read_predictions_single_multilabel_and_novel(tmp_path):
    from conceptclip.report.runs import read_predictions

    p = tmp_path / "p.csv"
    p.write_text("part,id,label,p_a,p_b\ntest_base,x1,1,0.2,0.8\ntest_novel,y1,0,0.6,0.4\ntest_novel,y2,1,0.1,0.9\n")
    out = read_predictions(p, ["a", "b"], {"base": ["a", "b"], "novel": ["c", "d"]}, False)
    assert out["test_base"].classnames == ["a", "b"] and out["test_novel"].classnames == ["c", "d"]
    np.testing.assert_array_equal(out["test_novel"].labels, [0, 1])
    np.testing.assert_allclose(out["test_novel"].probs, [[0.6, 0.4], [0.1, 0.9]])
    m = tmp_path / "m.csv"
    m.write_text("part,id,label,p_a,p_b,p_c\ntest,x1,[0; 2],0.9,0.1,0.8\ntest,x2,[],0.1,0.2,0.3\n")
    ml = read_predictions(m, ["a", "b", "c"], {}, True)["test"]
    np.testing.assert_array_equal(ml.labels, [[1, 0, 1], [0, 0, 0]])
    assert read_predictions(tmp_path / "none.csv", [], {}, False) == {}
    # labels as class names, spelt as the p_<class> headers (quoted where a name holds a comma)
    n = tmp_path / "n.csv"
    n.write_text('part,id,label,p_a,"p_b, c",p_10\ntest,x1,"b, c",0.1,0.8,0.1\ntest,x2,10,0.1,0.1,0.8\n')
    named = read_predictions(n, ["a", "b, c", "10"], {}, False)["test"]
    np.testing.assert_array_equal(named.labels, [1, 2])
    nm = tmp_path / "nm.csv"
    nm.write_text("part,id,label,p_a,p_b,p_c\ntest,x1,a;c,0.9,0.1,0.8\ntest,x2,,0.1,0.2,0.3\n")
    np.testing.assert_array_equal(read_predictions(nm, ["a", "b", "c"], {}, True)["test"].labels, [[1, 0, 1], [0, 0, 0]])
    bad = tmp_path / "bad.csv"
    bad.write_text("part,id,label,p_a,p_b\ntest,x1,zebra,0.5,0.5\n")
    with pytest.raises(ConfigError, match="label 'zebra' is not one of the classes"):
        read_predictions(bad, ["a", "b"], {}, False)


def test_select_ids_takes_classes_in_turn():
    from conceptclip.report.runs import PartPredictions
    from conceptclip.report.build import select_ids

    ids = ["c2", "a1", "b1", "a2", "c1", "a3"]
    labels = np.array([2, 0, 1, 0, 2, 0])
    pred = PartPredictions(ids, labels, np.zeros((6, 3)), ["x", "y", "z"])
    assert select_ids(pred, 4) == ["a1", "b1", "c1", "a2"]
    assert select_ids(pred, 10) == ["a1", "b1", "c1", "a2", "c2", "a3"]
    assert select_ids(pred, 0) == []


def test_pooled_confusion_and_reliability_inputs(runs_dir):
    """Pooling three seeds of the same 3 predictions: argmax rows (a, b, a) vs truth (a, b, b) ->
    confusion [[1, 0], [1, 1]] per seed, [[3, 0], [3, 3]] summed."""
    import torch

    from conceptclip.metrics.classification import confusion_matrix
    from conceptclip.report.build import group_figures, pooled_predictions
    from conceptclip.report.runs import find_runs, group_runs

    group = group_runs(find_runs([runs_dir]))[0]
    pooled = pooled_predictions(group)["test"]
    assert len(pooled.ids) == 9
    cm = confusion_matrix(torch.as_tensor(pooled.probs), torch.as_tensor(pooled.labels), num_classes=2)
    assert cm.tolist() == [[3, 0], [3, 3]]
    figs = group_figures(group)
    assert [f["caption"].split(" ")[0] for f in figs] == ["Confusion", "Reliability", "Training"]
    assert all(f["src"].startswith("data:image/png;base64,") for f in figs)


def test_metric_rows_and_harmonic_mean(tmp_path):
    from conceptclip.report.build import metric_rows
    from conceptclip.report.runs import find_runs, group_runs

    for seed, (b, n) in enumerate([(0.8, 0.4), (0.6, 0.6)], start=1):
        write_run(tmp_path / f"b2n{seed}", "coop", seed, b, split_kind="base2novel", extra_metrics={
            "test_base": {"n": 2, "accuracy": b}, "test_novel": {"n": 2, "accuracy": n},
            "harmonic_mean": 2 * b * n / (b + n)})
    rows = metric_rows(group_runs(find_runs([tmp_path])))
    assert [r["part"] for r in rows] == ["test", "test_base", "test_novel", "harmonic mean H (accuracy)"]
    assert rows[1]["cells"][0] == "0.700 ± 0.141"  # (0.8, 0.6): std = 0.1 * sqrt(2)
    h = [2 * .8 * .4 / 1.2, 0.6]
    assert rows[3]["cells"][0] == f"{np.mean(h):.3f} ± {np.std(h, ddof=1):.3f}"
    assert rows[0]["first"] and rows[0]["span"] == 4 and not rows[1]["first"]
    # the "test" part has predictions in every run: accuracy and macro AUC carry the seed-mean bootstrap
    # interval over its 3 images (both runs' hand-written predictions: 2 of 3 right, so it lies in [0, 1])
    acc_cell = rows[0]["cells"][0]
    assert acc_cell.startswith("0.700 ± 0.141 [") and acc_cell.endswith("]")
    low, high = (float(v) for v in acc_cell.split("[")[1].rstrip("]").split(","))
    assert 0.0 <= low <= 2 / 3 <= high <= 1.0


def test_report_page_from_hand_written_runs(runs_dir, tmp_path):
    """images=0, tsne off: no model is loaded; the page is self-contained and carries the numbers."""
    import base64
    import io
    import re

    from PIL import Image

    from conceptclip.report.build import build_report

    (runs_dir / "coop_seed2" / "split.json").write_text('{"tampered": true}\n')
    out = tmp_path / "r.html"
    summary = build_report([runs_dir], out, images=0, tsne=False)
    html = out.read_text()
    assert summary["runs"] == 5 and summary["groups"] == 2 and summary["cards"] == 0
    assert "0.600 ± 0.100" in html and "0.400 ± 0.000" in html
    assert "(unfinished)" in html
    assert html.count("(split.json differs!)") == 1
    cfg = json.loads((runs_dir / "coop_seed1" / "config.json").read_text())
    assert cfg["split_sha256"] in html
    # self-contained: no scripts, no links, no external sources; every image a decodable PNG
    assert "<script" not in html and "<link" not in html and "http://" not in html and "https://" not in html
    srcs = re.findall(r'src="([^"]+)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    for s in srcs:
        Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))).verify()


def test_bench_tables_feed_the_fewshot_and_base2novel_sections(tmp_path):
    from conceptclip.bench.table import write_tables
    from conceptclip.report.build import base2novel_section, fewshot_section

    recs = [{"method": "coop", "shots": k, "seed": s, "accuracy": a, "balanced_accuracy": a, "f1_macro": a,
             "auc_macro": a} for k, s, a in [(1, 1, 0.4), (1, 2, 0.6), (2, 1, 0.7), (2, 2, 0.7)]]
    write_tables("fewshot", recs, tmp_path / "bench")
    write_tables("base2novel", [{"method": "coop", "shots": 4, "seed": 1, "base_accuracy": 0.8,
                                 "novel_accuracy": 0.4, "harmonic_mean": 0.8 * 0.8 / 1.2}], tmp_path / "bench")
    fs = fewshot_section([tmp_path], [])
    assert fs["shots"] == [1, 2]
    assert fs["rows"] == [{"method": "coop", "cells": ["50.0 ± 14.1", "70.0 ± 0.0"]}]
    assert fs["plot"].startswith("data:image/png;base64,")
    b2n = base2novel_section([tmp_path], [])
    assert b2n["rows"] == [{"method": "coop", "shots": 4, "n_seeds": 1, "base": "80.0 ± 0.0", "novel": "40.0 ± 0.0",
                            "h": f"{100 * 2 * 0.8 * 0.4 / 1.2:.1f}"}]


def test_fewshot_curve_from_runs_when_no_bench_table(tmp_path):
    from conceptclip.report.build import fewshot_section
    from conceptclip.report.runs import find_runs

    write_run(tmp_path / "k1", "coop", 1, 0.5, shots=1)
    assert fewshot_section([tmp_path], find_runs([tmp_path])) is None  # one K only: no curve
    write_run(tmp_path / "k2", "coop", 1, 0.75, shots=2)
    fs = fewshot_section([tmp_path], find_runs([tmp_path]))
    # mean ± std over seeds, then the bootstrap interval over the runs' test predictions
    assert fs["rows"] == [{"method": "coop", "cells": ["50.0 ± 0.0 [0, 100]", "75.0 ± 0.0 [0, 100]"]}]
    assert "no bench fewshot.csv" in fs["source"]
    assert fs["plot"].startswith("data:image/png;base64,")


def test_multilabel_runs_get_a_pooled_reliability_diagram_and_no_confusion_matrix(tmp_path):
    from conceptclip.report.build import group_figures, pooled_predictions
    from conceptclip.report.runs import find_runs, group_runs

    preds = "part,id,label,p_a,p_b\ntest,x1,[0; 1],0.9,0.8\ntest,x2,[],0.2,0.1\ntest,x3,[1],0.3,0.6\n"
    run = write_run(tmp_path / "ml", "coop", 1, 0.5, preds=preds)
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "multilabel": True}))
    group = group_runs(find_runs([tmp_path]))[0]
    np.testing.assert_array_equal(pooled_predictions(group)["test"].labels, [[1, 1], [0, 0], [0, 1]])
    figs = group_figures(group)
    assert [f["caption"].split(" ")[0] for f in figs] == ["Reliability", "Training"]
