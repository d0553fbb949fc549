"""`conceptclip report RUN_DIR... -o report.html`: one self-contained HTML page over results folders.

The page holds: test metrics as mean ± std over seeds per group (method, options, dataset, split
kind, K, backbone); few-shot curves and the base-to-novel table (from the bench layer's tables
when a folder holds them, else from the runs); per group a confusion matrix (summed over seeds),
a reliability diagram (pooled over seeds), training curves, a t-SNE of learned prompt vs concept
tokens (prompt methods), the concepts nearest to each learned class prompt, and per-image cards
(image, prediction, concept score bars, heat-map overlays, textual explanation); finally every
run's config, split sha256 (checked against split.json) and dataset fingerprint.

Images are matplotlib/PIL PNGs inlined as base64 data URLs: the file opens anywhere, offline.
"""

from __future__ import annotations

import contextvars
import csv
import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from conceptclip.engine.files import check_files
from conceptclip.errors import ConceptClipError, ConfigError
from conceptclip.report.runs import (
    SUMMARY_METRICS,
    PartPredictions,
    RunGroup,
    RunRecord,
    find_runs,
    format_mean_std,
    group_runs,
    mean_std,
)

BENCH_DEPTH = 3  # how deep below a given folder bench tables (fewshot.csv, base2novel.csv) are searched


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("conceptclip")
    except Exception:  # not installed: running from a source tree
        return "dev"


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


# ---- tables ----------------------------------------------------------------------------
def metric_rows(groups: Sequence[RunGroup]) -> list[dict[str, Any]]:
    """Rows of the summary table: one per (group, test part), plus the harmonic mean row."""
    rows = []
    for gi, g in enumerate(groups):
        summary = g.summary()
        parts = [p for p in summary if p != "harmonic_mean"]
        sub = []
        for part in parts:
            n = sorted({int((r.metrics or {}).get(part, {}).get("n", 0)) for r in g.runs})
            cis = _seed_mean_cis(g, part)
            sub.append({"part": part, "n": "/".join(map(str, n)),
                        "cells": [format_mean_std(summary[part][m]["mean"], summary[part][m]["std"]) + cis.get(m, "")
                                   for m in SUMMARY_METRICS]})
        if "harmonic_mean" in summary:
            h = summary["harmonic_mean"]["harmonic_mean"]
            sub.append({"part": "harmonic mean H (accuracy)", "n": "",
                        "cells": [format_mean_std(h["mean"], h["std"])] + [""] * (len(SUMMARY_METRICS) - 1)})
        first = g.runs[0]
        for i, row in enumerate(sub):
            row.update({"first": i == 0, "span": len(sub), "anchor": f"g{gi}", "label": g.label,
                        "dataset": first.config.get("dataset", "?"), "backbone": first.config.get("backbone", "?"),
                        "seeds": ", ".join(str(s) for s in g.seeds)})
            rows.append(row)
    return rows


def _seed_mean_cis(group: RunGroup, part: str) -> dict[str, str]:
    """" [low, high]" per metric: the 95 % bootstrap interval of the seed mean over the part's images
    (`bench.table.seed_mean_ci`), for single-label groups whose runs all have their predictions."""
    from conceptclip.bench.table import CI_METRICS, seed_mean_ci

    preds = [r.predictions().get(part) for r in group.runs]
    if not preds or any(p is None or p.labels.ndim != 1 or not len(p.ids) for p in preds):
        return {}
    runs = [(p.ids, p.labels, p.probs) for p in preds]
    out = {}
    for m in CI_METRICS:
        ci = seed_mean_ci(runs, m, classnames=preds[0].classnames)
        if ci.low == ci.low and ci.high == ci.high:
            out[m] = f" [{ci.low:.3f}, {ci.high:.3f}]"
    return out


def _find_tables(paths: Sequence[Path], name: str) -> list[Path]:
    found: dict[Path, None] = {}
    for p in paths:
        p = Path(p)
        for hit in sorted(p.rglob(name)):
            if len(hit.relative_to(p).parts) <= BENCH_DEPTH + 1:
                found[hit.resolve()] = None
    return list(found)


def _read_csv(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for k, v in list(r.items()):
            if k not in ("method",):
                r[k] = _num(v)
        r["shots"] = int(r.get("shots", 0)) if np.isfinite(r.get("shots", np.nan)) else 0
        r["n_seeds"] = int(r.get("n_seeds", 0)) if np.isfinite(r.get("n_seeds", np.nan)) else 0
    return rows


def _pct(mean: float, std: float) -> str:
    return format_mean_std(mean, std, scale=100.0, digits=1)


def replicate_names(runs: Sequence[RunRecord]) -> dict[Path, str]:
    """Finished run path -> the name its row gets in the few-shot and base-to-novel tables: the
    method, plus what sets its configuration apart ("coop (epochs=20)"), so only replicates pool."""
    return {r.path: g.method + (f" ({g.differs})" if g.differs else "") for g in group_runs(runs) for r in g.runs}


def fewshot_section(paths: Sequence[Path], runs: Sequence[RunRecord]) -> dict[str, Any] | None:
    """Few-shot curve + table: the bench layer's fewshot.csv when present, else the finished
    few-shot runs when they cover at least two values of K for some method."""
    from conceptclip.bench.table import add_confidence_intervals, fewshot_summary, pct_cell
    from conceptclip.report.overlay import png_data_url
    from conceptclip.report.plots import bench_plot_png

    tables = _find_tables(paths, "fewshot.csv")
    if tables:
        summary = [r for t in tables for r in _read_csv(t)]
        source = "From the bench table(s) " + ", ".join(_rel(t) for t in tables) + "."
    else:
        names = replicate_names(runs)
        records = [{"method": names[r.path], "shots": r.shots, "run": str(r.path), **{m: (r.metrics or {}).get("test", {}).get(m)
                                                                for m in ("accuracy", "balanced_accuracy", "f1_macro",
                                                                          "auc_macro")}}
                   for r in runs if r.finished and r.split_kind == "fewshot" and "test" in (r.metrics or {})]
        by_method: dict[str, set[int]] = {}
        for rec in records:
            by_method.setdefault(rec["method"], set()).add(rec["shots"])
        if not records or max(len(v) for v in by_method.values()) < 2:
            return None
        summary = fewshot_summary(records)
        add_confidence_intervals(summary, records)
        source = "From the few-shot runs found (no bench fewshot.csv under the given folders)."
    if not summary:
        return None
    shots = sorted({r["shots"] for r in summary})
    methods = list(dict.fromkeys(r["method"] for r in summary))
    cell = {(r["method"], r["shots"]): r for r in summary}
    rows = [{"method": m, "cells": [pct_cell(cell[m, k], "accuracy") if (m, k) in cell else "–" for k in shots]}
            for m in methods]
    return {"source": source, "shots": shots, "rows": rows,
            "plot": png_data_url(bench_plot_png("fewshot", summary, title="Few-shot test accuracy"))}


def base2novel_section(paths: Sequence[Path], runs: Sequence[RunRecord]) -> dict[str, Any] | None:
    """Base-to-novel table (and figure): the bench layer's base2novel.csv when present, else the
    finished runs that tested base and novel classes."""
    from conceptclip.bench.table import base2novel_summary
    from conceptclip.report.overlay import png_data_url
    from conceptclip.report.plots import bench_plot_png

    tables = _find_tables(paths, "base2novel.csv")
    if tables:
        summary = [r for t in tables for r in _read_csv(t)]
        source = "From the bench table(s) " + ", ".join(_rel(t) for t in tables) + "."
    else:
        names = replicate_names(runs)
        records = [{"method": names[r.path], "shots": r.shots,
                    "base_accuracy": r.metrics["test_base"]["accuracy"],
                    "novel_accuracy": r.metrics["test_novel"]["accuracy"],
                    "harmonic_mean": r.metrics.get("harmonic_mean", 0.0)}
                   for r in runs if r.finished and {"test_base", "test_novel"} <= set(r.metrics or {})]
        if not records:
            return None
        summary = base2novel_summary(records)
        source = "From the base-to-novel runs found (no bench base2novel.csv under the given folders)."
    rows = [{"method": r["method"], "shots": r["shots"], "n_seeds": r["n_seeds"],
             "base": _pct(r["base_mean"], r["base_std"]), "novel": _pct(r["novel_mean"], r["novel_std"]),
             "h": f"{100 * r['harmonic_mean']:.1f}"} for r in summary]
    plot = png_data_url(bench_plot_png("base2novel", summary)) if summary else None
    return {"source": source, "rows": rows, "plot": plot}


# ---- per-group figures ------------------------------------------------------------------
def pooled_predictions(group: RunGroup) -> dict[str, PartPredictions]:
    """Each test part's predictions of all the group's runs, concatenated (seeds pooled)."""
    pooled: dict[str, list[PartPredictions]] = {}
    for r in group.runs:
        for part, p in r.predictions().items():
            pooled.setdefault(part, []).append(p)
    out = {}
    for part, ps in pooled.items():
        widths = {p.probs.shape[1] for p in ps}
        if len(widths) != 1:
            continue
        out[part] = PartPredictions([i for p in ps for i in p.ids], np.concatenate([p.labels for p in ps]),
                                    np.concatenate([p.probs for p in ps]), ps[0].classnames)
    return out


def group_figures(group: RunGroup) -> list[dict[str, str]]:
    """Confusion matrix and reliability diagram per test part (seeds pooled), training curves."""
    import torch

    from conceptclip.metrics.calibration import expected_calibration_error, reliability_bins
    from conceptclip.metrics.classification import confusion_matrix
    from conceptclip.report.overlay import png_data_url
    from conceptclip.report.plots import confusion_png, history_png, reliability_png

    figs = []
    n_runs = len(group.runs)
    pooled_note = f"summed over {n_runs} seeds" if n_runs > 1 else "one run"
    multilabel = bool(group.runs[0].config.get("multilabel"))
    for part, p in pooled_predictions(group).items():
        probs, labels = torch.as_tensor(p.probs), torch.as_tensor(p.labels)
        if not multilabel and probs.shape[1] >= 2:
            cm = confusion_matrix(probs, labels, num_classes=probs.shape[1]).numpy()
            figs.append({"src": png_data_url(confusion_png(cm, p.classnames, f"{part}: confusion ({pooled_note})")),
                         "caption": f"Confusion matrix of {part} ({len(p.ids)} predictions, {pooled_note}); "
                                    "shades are fractions of each true class."})
        bins = reliability_bins(probs.clamp(0, 1), labels, n_bins=10)
        ece = float(expected_calibration_error(probs.clamp(0, 1), labels, n_bins=15))
        if multilabel:  # pool the labels' bins
            cnt = bins.count.sum(0)
            conf = torch.nan_to_num(bins.confidence * bins.count).sum(0) / cnt.clamp_min(1)
            acc = torch.nan_to_num(bins.accuracy * bins.count).sum(0) / cnt.clamp_min(1)
        else:
            cnt, conf, acc = bins.count[0], bins.confidence[0], bins.accuracy[0]
        figs.append({"src": png_data_url(reliability_png(conf.numpy(), acc.numpy(), cnt.numpy(), ece,
                                                         f"{part}: reliability")),
                     "caption": f"Reliability diagram of {part} (10 bins, predictions pooled over the seeds); "
                                "ECE over 15 bins of the pooled predictions."})
    hist = history_png([(f"seed {r.seed}", r.history) for r in group.runs], "training curves")
    if hist:
        figs.append({"src": png_data_url(hist), "caption": "Training loss and validation metric per epoch."})
    return figs


def auc_table(group: RunGroup) -> tuple[list[str], list[dict[str, Any]]]:
    classes: list[str] = []
    rows = []
    for part in dict.fromkeys(p for r in group.runs for p in r.test_parts()):
        per = [(r.metrics or {}).get(part, {}).get("auc_per_class") or {} for r in group.runs]
        names = list(per[0])
        if part == group.runs[0].test_parts()[0]:
            classes = names
        if names != classes:
            continue
        rows.append({"part": part, "cells": [format_mean_std(*mean_std([p.get(c) for p in per])[:2]) for c in names]})
    return classes, rows


# ---- cards ------------------------------------------------------------------------------
def select_ids(pred: PartPredictions, n: int) -> list[str]:
    """Up to n test ids, taking classes in turn (class order), ids sorted within a class, so the
    cards show every class where possible and the same images for every method."""
    if n <= 0 or not pred.ids:
        return []
    if pred.labels.ndim != 1:
        return sorted(pred.ids)[:n]
    per_class: dict[int, list[str]] = {}
    for sid, lab in sorted(zip(pred.ids, pred.labels.tolist())):
        per_class.setdefault(int(lab), []).append(sid)
    out: list[str] = []
    while len(out) < n and any(per_class.values()):
        for c in sorted(per_class):
            if per_class[c] and len(out) < n:
                out.append(per_class[c].pop(0))
    return out


class _Datasets:
    """Datasets for the cards, loaded once per spec: the given --dataset, or "ph2" for PH2 runs."""

    def __init__(self, spec: str | None) -> None:
        self.spec = spec
        self._cache: dict[str, Any] = {}

    def get(self, config: dict[str, Any]) -> tuple[Any, str]:
        from conceptclip.data import load_dataset
        from conceptclip.data.registry import dataset_entry

        spec = self.spec or (config.get("dataset") if dataset_entry(config.get("dataset")) else None)
        if spec is None:
            return None, (f"No per-image cards: the run's dataset {config.get('dataset')!r} is not built in; "
                          "pass --dataset (the folder, CSV or JSON manifest it was trained on).")
        if spec not in self._cache:
            try:
                self._cache[spec] = load_dataset(spec)
            except ConceptClipError as exc:
                self._cache[spec] = exc
        ds = self._cache[spec]
        if isinstance(ds, Exception):
            return None, f"No per-image cards: dataset {spec!r} did not load ({ds})."
        note = ""
        if config.get("dataset_fingerprint") and ds.fingerprint() != config["dataset_fingerprint"]:
            note = (f" Dataset {spec!r} has fingerprint {ds.fingerprint()}, the run was trained on "
                    f"{config['dataset_fingerprint']}: images or labels changed since training.")
        return ds, note


def make_cards(explainer: Any, dataset: Any, pred: PartPredictions,
               ids: Sequence[str]) -> tuple[list[dict[str, Any]], str]:
    """One card per id (image, truth, prediction, top concept bars, heat maps, rationale), and the
    kind of concept scores shown ("method", "cosine" or "")."""
    from conceptclip.data.images import load_image
    from conceptclip.report.overlay import png_data_url, thumbnail

    index = {sid: i for i, sid in enumerate(pred.ids)}
    samples = [dataset.by_id(sid) for sid in ids]
    results = explainer.explain_batch([load_image(s.path) for s in samples])
    cards = []
    for sid, res in zip(ids, results):
        lab = pred.labels[index[sid]]
        truth = ", ".join(pred.classnames[j] for j in np.flatnonzero(lab)) if np.ndim(lab) else pred.classnames[int(lab)]
        cards.append({"id": sid, "truth": truth, "prediction": res.prediction,
                      "probability": res.probabilities[res.prediction],
                      "correct": res.prediction in truth.split(", "),
                      "image": png_data_url(thumbnail(res.shown, 256)), "concepts": res.top_concepts(6),
                      "maps": [{"title": m.title, "src": png_data_url(thumbnail(m.image, 192)), "failed": m.failed,
                                "sanity_text": m.sanity_text} for m in res.maps],
                      "rationale": res.rationale})
    return cards, (results[0].concept_kind if results else "")


# ---- runs table -------------------------------------------------------------------------
# the folder the page names paths relative to: the parent of the folders given to build_report, so the
# page shows "runs/coop_seed1", never the building machine's absolute paths (or ../../ up to them)
_BASE: contextvars.ContextVar[Path | None] = contextvars.ContextVar("report_base", default=None)


def _rel(path: Path) -> str:
    base = _BASE.get()
    if base is None:
        return Path(path).name or "."
    try:
        rel = os.path.relpath(Path(path).resolve(), base)
    except ValueError:  # another drive (Windows)
        return Path(path).name
    return Path(path).resolve().name if rel.startswith("..") else rel


def run_row(r: RunRecord) -> dict[str, Any]:
    cfg = r.config
    split_file = r.path / "split.json"
    split_ok = None
    if split_file.is_file() and cfg.get("split_sha256"):
        split_ok = hashlib.sha256(split_file.read_bytes()).hexdigest() == cfg["split_sha256"]
    m = r.metrics or {}
    return {"path": _rel(r.path), "finished": r.finished, "method": r.method, "seed": r.seed if r.seed is not None else "",
            "split": f"{r.split_kind}, K={r.shots or 'all'}", "split_sha": str(cfg.get("split_sha256", "")),
            "split_ok": split_ok, "dataset": cfg.get("dataset", "?"), "fingerprint": cfg.get("dataset_fingerprint", "?"),
            "backbone": cfg.get("backbone", "?"), "weights": cfg.get("backbone_weights", "?"),
            "fit": f"{m['fit_seconds']:.1f}" if isinstance(m.get("fit_seconds"), (int, float)) else "",
            "best_epoch": m.get("best_epoch", "") if m.get("best_epoch") is not None else "",
            "problems": check_files(r.path, cfg),
            "config": json.dumps(_without_sources(cfg), indent=2, ensure_ascii=False)}


def _without_sources(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config as the page shows it: the copied files' "source" (an absolute path of the machine
    the run was made on) reduced to its file name."""
    files = cfg.get("files")
    if not isinstance(files, dict):
        return cfg
    shown = {k: ({**v, "source": Path(str(v["source"])).name} if isinstance(v, dict) and "source" in v else v)
             for k, v in files.items()}
    return {**cfg, "files": shown}


def _scrub_paths(text: str) -> str:
    """Absolute paths left in config values (e.g. a bank file, an hf: model folder): those under the
    report's base folder become relative, the home folder becomes ~."""
    base = _BASE.get()
    for prefix, repl in ((str(base) if base is not None else None, ""), (str(Path.home()), "~")):
        if prefix and prefix != os.sep:
            text = text.replace(prefix + os.sep, repl + ("/" if repl else "")).replace(prefix, repl or ".")
    return text


# ---- the page ---------------------------------------------------------------------------
def build_report(paths: Sequence[str | Path], out: str | Path, *, dataset: str | None = None,
                 bank: str | None = None, concept_template: str | None = None, images: int = 4, tsne: bool = True,
                 device: str | None = None,
                 title: str | None = None, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Write the report for the runs at or below `paths` to `out`; return what it holds
    ({"out", "runs", "groups", "cards", "figures", "bytes"}). The page names paths relative to the
    folder holding `paths` and holds no absolute path of this machine (its home folder shows as ~)."""
    paths = [Path(p) for p in paths]
    if paths:
        token = _BASE.set(Path(os.path.commonpath([p.resolve() for p in paths])).parent)
        try:
            return _build_report(paths, out, dataset=dataset, bank=bank, concept_template=concept_template,
                                 images=images, tsne=tsne, device=device, title=title, log=log)
        finally:
            _BASE.reset(token)
    return _build_report(paths, out, dataset=dataset, bank=bank, concept_template=concept_template, images=images,
                         tsne=tsne, device=device, title=title, log=log)


def _build_report(paths: list[Path], out: str | Path, *, dataset, bank, concept_template, images, tsne, device,
                  title, log) -> dict[str, Any]:
    import jinja2

    from conceptclip.io import write_text
    from conceptclip.report.template import REPORT_TEMPLATE

    runs = find_runs(paths)
    groups = group_runs(runs)
    if not groups:
        raise ConfigError("report: none of the runs found has finished (no metrics.json); nothing to report")
    log(f"{len(runs)} run folder(s), {len(groups)} group(s)")
    for r in runs:
        for problem in check_files(r.path, r.config):
            log(f"warning: {_rel(r.path)} is incomplete: {problem}")
    datasets = _Datasets(dataset)
    backbones: dict[str, Any] = {}
    concept_cache: dict[str, Any] = {}
    view_groups = []
    n_cards = n_figs = 0
    for gi, g in enumerate(groups):
        first = g.runs[0]
        classes, auc_rows = auc_table(g)
        figs = group_figures(g)
        vg: dict[str, Any] = {"anchor": f"g{gi}", "label": g.label, "method": g.method,
                              "k_label": f"K={first.shots}" if first.shots else "", "runs": g.runs,
                              "seeds": ", ".join(str(s) for s in g.seeds), "dataset": first.config.get("dataset", "?"),
                              "backbone": first.config.get("backbone", "?"),
                              "options": json.dumps(first.config.get("method", {}).get("config", {}), sort_keys=True),
                              "auc_classes": classes, "auc_rows": auc_rows, "figures": figs, "cards": [],
                              "card_note": "", "prompt_text": None, "concept_source": ""}
        if images > 0 or tsne:
            extra = _explained(g, datasets, backbones, concept_cache, bank, concept_template, images, tsne, device, log)
            vg["figures"] = figs + extra.pop("figures", [])
            vg.update(extra)
        n_cards += len(vg["cards"])
        n_figs += len(vg["figures"])
        view_groups.append(vg)

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    html = env.from_string(REPORT_TEMPLATE).render(
        title=title or f"conceptclip report · {', '.join(p.name or str(p) for p in paths)}",
        version=_version(), generated=_dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        runs=runs, unfinished=[r for r in runs if not r.finished], groups=view_groups,
        metric_names=[m.replace("_", " ") for m in SUMMARY_METRICS], metric_rows=metric_rows(groups),
        fewshot=fewshot_section(paths, runs), base2novel=base2novel_section(paths, runs),
        run_rows=[run_row(r) for r in runs])
    html = _scrub_paths(html)
    out = write_text(out, html)
    log(f"report: {out} ({len(html) / 1e6:.2f} MB)")
    return {"out": str(out), "runs": len(runs), "groups": len(groups), "cards": n_cards, "figures": n_figs,
            "bytes": len(html.encode())}


def _explained(g: RunGroup, datasets: _Datasets, backbones: dict, concept_cache: dict, bank: str | None,
               concept_template: str | None, images: int, tsne: bool, device: str | None,
               log: Callable[[str], None]) -> dict[str, Any]:
    """Cards, t-SNE and the prompts' textual explanation of a group's first run (one model load)."""
    from conceptclip.report.explainer import RunExplainer, load_concepts
    from conceptclip.report.overlay import png_data_url
    from conceptclip.report.plots import tsne_png
    from conceptclip.report.tsne import prompt_token_points

    run = g.runs[0]
    out: dict[str, Any] = {"card_run": _rel(run.path)}
    if not (run.path / "model.safetensors").is_file():
        out["card_note"] = "No per-image cards: the run has no model.safetensors."
        return out
    ckey = f"{bank}|{run.config.get('dataset')}|{run.config.get('template')}"
    if ckey not in concept_cache:
        concept_cache[ckey] = load_concepts(bank, run.config, concept_template)
    concepts = concept_cache[ckey]
    log(f"explaining {g.label} with {_rel(run.path)} ...")
    try:
        explainer = RunExplainer(run.path, concepts=concepts, device=device, backbones=backbones, load_bank=False)
    except ConceptClipError as exc:  # e.g. a run saved by an older version of its method
        out["card_note"] = f"No per-image cards or t-SNE: the run does not load ({exc})."
        return out
    extra_figs = []
    if tsne and concepts is not None:
        points = prompt_token_points(explainer.method, concepts.names)
        if points is not None:
            extra_figs.append({"src": png_data_url(tsne_png(points.coords, points.kinds, points.labels)),
                               "caption": "t-SNE of the learned context tokens (prompt), the concept phrases' and "
                                          "class names' mean token embeddings, in the text tower's token space."})
    out["figures"] = extra_figs
    if explainer.prompt_nearest:
        out["prompt_text"] = list(explainer.prompt_nearest.items())
        out["concept_source"] = concepts.source if concepts else ""
    if images > 0:
        preds = run.predictions()
        part = next((p for p in ("test", "test_base") if p in preds), None)
        ds, note = datasets.get(run.config)
        if part is None:
            out["card_note"] = "No per-image cards: predictions.csv has no test rows."
        elif ds is not None:
            chosen = select_ids(preds[part], images)
            ids = [i for i in chosen if _has(ds, i)]
            if len(ids) < len(chosen):
                note += (f" {len(chosen) - len(ids)} of the {len(chosen)} chosen test images are not in dataset "
                         f"{ds.name!r} (pass the --dataset the run was trained on).")
            out["cards"], kind = make_cards(explainer, ds, preds[part], ids)
            if kind == "method":
                csrc = "concept bars: the method's own concept scores"
            elif kind == "cosine":
                csrc = (f"concept bars: cosine similarity of the image with each concept prompt of {concepts.source}, "
                        "bar length relative to the image's lowest and highest concept")
            else:
                csrc = "no concept bank for this dataset (pass --concepts BANK)"
            out["card_note"] = (f"{len(ids)} images of the {part} part, classes in turn; {csrc}; the heat maps "
                                "explain the predicted class." + note)
        else:
            out["card_note"] = note
    return out


def _has(ds: Any, sid: str) -> bool:
    try:
        ds.by_id(sid)
        return True
    except ConceptClipError:
        return False
