"""Protocol tables: per-run CSV, then mean ± std over seeds as CSV, Markdown and a PNG plot.

Few-shot: test accuracy and macro AUC (%) per method and K, each cell "mean ± std [low, high]":
std is the sample standard deviation over seeds (0 for one seed), [low, high] a 95 % percentile
bootstrap interval of the seed mean over the test images (`seed_mean_ci`: the seeds share one
test pool, so each resample draws test images with replacement and recomputes every seed's metric
on the same images; it shows how much the 60-image test pool alone moves the number). The CSV
also has one-vs-rest AUC per class (`auc_<class>`), and the per-run CSV the validation ties of the
hyper-parameter searches and the linear probe's convergence. Base-to-novel: base and novel
accuracy (%) per method, and the harmonic mean H = 2 B N / (B + N) of the seed-averaged B and N
(the CoCoOp / BiomedCoOp convention); the per-run CSV also has each run's own H.
"""

from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from conceptclip.io import write_text

FEWSHOT_METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "auc_macro")


CI_METRICS = ("accuracy", "auc_macro")
CI_RESAMPLES = 1000


def _auc_binary(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney AUC: P(score of a positive > score of a negative), ties counting half; NaN when one
    side is empty."""
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def prediction_metric(name: str, probs: np.ndarray, labels: np.ndarray, classnames: Sequence[str] = ()) -> float:
    """accuracy, auc_macro (mean one-vs-rest AUC over classes where defined; two classes: AUC of
    class 1) or auc_<class name or index> of one run's (N, C) probabilities, as `engine.classification_metrics`."""
    if name == "accuracy":
        return float((probs.argmax(1) == labels).mean())
    if probs.shape[1] == 2:
        return _auc_binary(probs[:, 1], labels == 1)
    if name == "auc_macro":
        vals = [_auc_binary(probs[:, c], labels == c) for c in range(probs.shape[1])]
        vals = [v for v in vals if v == v]
        return float(np.mean(vals)) if vals else float("nan")
    cls = name.removeprefix("auc_")
    c = list(classnames).index(cls) if cls in classnames else int(cls)
    return _auc_binary(probs[:, c], labels == c)


def seed_mean_ci(runs: Sequence[tuple[Sequence[str], np.ndarray, np.ndarray]], metric: str,
                 n_resamples: int = CI_RESAMPLES, confidence: float = 0.95, seed: int = 0,
                 classnames: Sequence[str] = ()):
    """Percentile bootstrap (`metrics.bootstrap.bootstrap_ci`) of the mean over seeds of `metric`, resampling
    the test images: `runs` holds each seed's (ids, labels (N,), probs (N, C)); images are matched by id
    (those every run tested), and one resample draws the same images for every seed."""
    from conceptclip.metrics.bootstrap import bootstrap_ci

    common = set(runs[0][0]).intersection(*(set(r[0]) for r in runs[1:]))
    order = [i for i in runs[0][0] if i in common]
    probs, labels = [], None
    for ids, lab, p, *_ in runs:
        pos = {i: k for k, i in enumerate(ids)}
        rows = np.array([pos[i] for i in order])
        probs.append(p[rows])
        labels = lab[rows] if labels is None else labels
    stacked = np.stack(probs, axis=1)  # (N, S, C): dim 0 is resampled

    def seed_mean(p: np.ndarray, y: np.ndarray) -> float:
        vals = [prediction_metric(metric, p[:, s], y, classnames) for s in range(p.shape[1])]
        return float(np.mean(vals))

    return bootstrap_ci(seed_mean, stacked, labels, n_resamples=n_resamples, confidence=confidence, seed=seed)


def read_run_predictions(run_dir: str | Path, part: str = "test"):
    """(ids, labels, probs, classnames) of one part of a run's predictions.csv (single-label); None when absent."""
    path = Path(run_dir) / "predictions.csv"
    if not path.is_file():
        return None
    ids, labels, probs = [], [], []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None) or []
        for row in reader:
            if len(row) >= 4 and row[0] == part:
                if not row[2].lstrip("-").isdigit():
                    return None  # multi-label
                ids.append(row[1])
                labels.append(int(row[2]))
                probs.append([float(x) for x in row[3:]])
    names = [h.removeprefix("p_") for h in header[3:]]
    return (ids, np.array(labels), np.array(probs), names) if ids else None


def add_confidence_intervals(summary: list[dict[str, Any]], records: list[dict[str, Any]],
                             metrics: Sequence[str] = CI_METRICS, n_resamples: int = CI_RESAMPLES) -> None:
    """Add `<metric>_ci_low/_ci_high` (seed-mean bootstrap over test images) to each few-shot summary row
    whose runs' predictions are readable."""
    for row in summary:
        group = [r for r in records if r["method"] == row["method"] and r["shots"] == row["shots"]]
        runs = [read_run_predictions(r["run"]) for r in group if r.get("run")]
        if not runs or any(r is None for r in runs):
            continue
        for metric in metrics:
            ci = seed_mean_ci(runs, metric, n_resamples=n_resamples, classnames=runs[0][3])
            row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = ci.low, ci.high


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def harmonic_mean(base: float, novel: float) -> float:
    """H = 2 B N / (B + N); 0 when both are 0."""
    return 2 * base * novel / (base + novel) if base + novel > 0 else 0.0


def _ordered(values: Sequence) -> list:
    return list(dict.fromkeys(values))


def _csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def fewshot_summary(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (method, K): n_seeds and mean/std of each metric."""
    rows = []
    for m in _ordered(r["method"] for r in records):
        for k in sorted({r["shots"] for r in records if r["method"] == m}):
            group = [r for r in records if r["method"] == m and r["shots"] == k]
            row: dict[str, Any] = {"method": m, "shots": k, "n_seeds": len(group)}
            per_class = [key for key in group[0] if key.startswith("auc_") and key != "auc_macro"]
            for metric in (*FEWSHOT_METRICS, *per_class):
                row[f"{metric}_mean"], row[f"{metric}_std"] = mean_std([g.get(metric) for g in group])
            rows.append(row)
    return rows


def base2novel_summary(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (method, K): base and novel mean/std, H of the means, mean/std of per-seed H."""
    rows = []
    for m in _ordered(r["method"] for r in records):
        for k in sorted({r["shots"] for r in records if r["method"] == m}):
            group = [r for r in records if r["method"] == m and r["shots"] == k]
            b, bs = mean_std([g["base_accuracy"] for g in group])
            n, ns = mean_std([g["novel_accuracy"] for g in group])
            h, hs = mean_std([g["harmonic_mean"] for g in group])
            rows.append({"method": m, "shots": k, "n_seeds": len(group), "base_mean": b, "base_std": bs,
                         "novel_mean": n, "novel_std": ns, "harmonic_mean": harmonic_mean(b, n),
                         "harmonic_mean_per_seed_mean": h, "harmonic_mean_per_seed_std": hs})
    return rows


def _pct(mean: float, std: float) -> str:
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def pct_cell(row: dict[str, Any], metric: str) -> str:
    """"mean ± std" in %, with " [low, high]" when the row has the metric's bootstrap interval."""
    text = _pct(row[f"{metric}_mean"], row[f"{metric}_std"])
    low, high = row.get(f"{metric}_ci_low"), row.get(f"{metric}_ci_high")
    if low is not None and high is not None and low == low and high == high:
        text += f" [{100 * low:.0f}, {100 * high:.0f}]"
    return text


def fewshot_markdown(summary: list[dict[str, Any]], metric: str = "accuracy", title: str = "") -> str:
    """Methods x K table of `metric` in %, mean ± std over seeds [95 % bootstrap interval of the seed mean]."""
    shots = sorted({r["shots"] for r in summary})
    methods = _ordered(r["method"] for r in summary)
    cell = {(r["method"], r["shots"]): r for r in summary}
    seeds = sorted({r["n_seeds"] for r in summary})
    has_ci = any(f"{metric}_ci_low" in r for r in summary)
    lines = [f"{title or 'Few-shot'} test {metric.replace('_', ' ')} (%), mean ± std over "
             f"{'/'.join(map(str, seeds))} seeds" + (" [95 % bootstrap CI of the mean over test images]" if has_ci else ""),
             "", "| method | " + " | ".join(f"K={k}" for k in shots) + " |", "|---|" + "---|" * len(shots)]
    for m in methods:
        vals = [pct_cell(cell[m, k], metric) if (m, k) in cell else "-" for k in shots]
        lines.append(f"| {m} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def base2novel_markdown(summary: list[dict[str, Any]], title: str = "") -> str:
    lines = [f"{title or 'Base-to-novel'} test accuracy (%), mean ± std over seeds; H = harmonic mean of the means",
             "", "| method | K | base | novel | H |", "|---|---|---|---|---|"]
    for r in summary:
        lines.append(f"| {r['method']} | {r['shots']} | {_pct(r['base_mean'], r['base_std'])} | "
                     f"{_pct(r['novel_mean'], r['novel_std'])} | {100 * r['harmonic_mean']:.1f} |")
    return "\n".join(lines) + "\n"


def fewshot_plot(summary: list[dict[str, Any]], path: str | Path, metric: str = "accuracy", title: str = "") -> Path:
    """Mean ± std of `metric` against K (log2 axis), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 4.5), dpi=120)
    methods = _ordered(r["method"] for r in summary)
    colours = plt.get_cmap("tab20" if len(methods) > 10 else "tab10")
    for i, m in enumerate(methods):
        rows = sorted((r for r in summary if r["method"] == m), key=lambda r: r["shots"])
        ks = [r["shots"] for r in rows]
        mu = [100 * r[f"{metric}_mean"] for r in rows]
        sd = [100 * r[f"{metric}_std"] for r in rows]
        ax.errorbar(ks, mu, yerr=sd, marker="osD^v<>ph*X"[i % 11], capsize=3, label=m, color=colours(i),
                    linewidth=1.4 if m != "biomedcoop" else 2.6, alpha=0.9)
    ax.set_xscale("log", base=2)
    shots = sorted({r["shots"] for r in summary})
    ax.set_xticks(shots, [str(k) for k in shots])
    ax.set_xlabel("shots per class (K)")
    ax.set_ylabel(f"test {metric.replace('_', ' ')} (%)")
    ax.set_title(title or "Few-shot")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def base2novel_plot(summary: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Grouped bars of base, novel and H per method (first K only when several)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    k0 = min(r["shots"] for r in summary)
    rows = [r for r in summary if r["shots"] == k0]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(rows) + 2), 4), dpi=120)
    for i, (key, err, label) in enumerate((("base_mean", "base_std", "base"), ("novel_mean", "novel_std", "novel"),
                                           ("harmonic_mean", None, "H"))):
        ax.bar(x + (i - 1) * 0.27, [100 * r[key] for r in rows], 0.27,
               yerr=[100 * r[err] for r in rows] if err else None, capsize=2, label=label)
    ax.set_xticks(x, [r["method"] for r in rows], rotation=20)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or f"Base-to-novel, K={k0}")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_tables(protocol: str, records: list[dict[str, Any]], out: str | Path, title: str = "") -> dict[str, Path]:
    """<protocol>_runs.csv, <protocol>.csv, <protocol>.md and <protocol>.png in `out`."""
    out = Path(out)
    paths = {"runs_csv": write_text(out / f"{protocol}_runs.csv", _csv(records))}
    if protocol == "fewshot":
        summary = fewshot_summary(records)
        add_confidence_intervals(summary, records)
        md = fewshot_markdown(summary, title=title)
        md += "\n" + fewshot_markdown(summary, "auc_macro", title=title)
        paths["png"] = fewshot_plot(summary, out / f"{protocol}.png", title=title)
    else:
        summary = base2novel_summary(records)
        md = base2novel_markdown(summary, title=title)
        paths["png"] = base2novel_plot(summary, out / f"{protocol}.png", title=title)
    paths["csv"] = write_text(out / f"{protocol}.csv", _csv(summary))
    paths["md"] = write_text(out / f"{protocol}.md", md)
    return paths
