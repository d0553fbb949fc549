"""Protocol tables: per-run CSV, then mean ± std over seeds as CSV, Markdown and a PNG plot.

Few-shot: test accuracy (%) per method and K. Base-to-novel: base and novel accuracy (%) per
method, and the harmonic mean H = 2 B N / (B + N) of the seed-averaged B and N (the CoCoOp /
BiomedCoOp convention); the per-run CSV also has each run's own H. Std is the sample standard
deviation over seeds (0 for one seed).
"""

from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path
from typing import Any, Sequence

from conceptclip.io import write_text

FEWSHOT_METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "auc_macro")


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
            for metric in FEWSHOT_METRICS:
                row[f"{metric}_mean"], row[f"{metric}_std"] = mean_std([g[metric] for g in group])
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


def fewshot_markdown(summary: list[dict[str, Any]], metric: str = "accuracy", title: str = "") -> str:
    """Methods x K table of `metric` in %, mean ± std over seeds."""
    shots = sorted({r["shots"] for r in summary})
    methods = _ordered(r["method"] for r in summary)
    cell = {(r["method"], r["shots"]): r for r in summary}
    seeds = sorted({r["n_seeds"] for r in summary})
    lines = [f"{title or 'Few-shot'} test {metric.replace('_', ' ')} (%), mean ± std over "
             f"{'/'.join(map(str, seeds))} seeds", "",
             "| method | " + " | ".join(f"K={k}" for k in shots) + " |", "|---|" + "---|" * len(shots)]
    for m in methods:
        vals = [_pct(cell[m, k][f"{metric}_mean"], cell[m, k][f"{metric}_std"]) if (m, k) in cell else "-"
                for k in shots]
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
