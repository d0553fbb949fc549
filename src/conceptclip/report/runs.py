"""Reading results folders for the report: find runs, read their files, group them by method and
shots, and summarise metrics as mean ± std over seeds.

A results folder (see `engine.run`) holds config.json, split.json, history.jsonl, predictions.csv
and metrics.json; metrics.json marks a finished run. Folders given to the report may be single
runs or trees of runs (the demo folder, a bench output folder), searched recursively.
"""

from __future__ import annotations

import csv
import hashlib
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from conceptclip.errors import ConfigError

SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "auc_macro", "f1_macro", "ece")
# config keys that differ between replicates (runs that differ only in their seed) or do not change
# the result: the seed, the split drawn with it, where files came from, progress display and workers
NOT_CONFIG = ("train.seed", "train.progress", "train.num_workers", "split_params.seed", "split_sha256",
              "method.trainable_parameters")
NOT_CONFIG_SUFFIXES = (".source", ".path")  # of "files" records: the sha256 names the content


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts -> {"a.b.c": JSON of the leaf}; lists are leaves."""
    if isinstance(value, dict) and value:
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: json.dumps(value, sort_keys=True, ensure_ascii=False)}


def _not_config(key: str) -> bool:
    return key in NOT_CONFIG or (key.startswith("files.") and key.endswith(NOT_CONFIG_SUFFIXES))
MAX_DEPTH = 6  # how deep below a given folder runs are searched


@dataclass
class PartPredictions:
    """One test part of predictions.csv: ids, labels ((N,) class indices, or (N, C) multi-hot) and
    probabilities (N, C) over `classnames`."""

    ids: list[str]
    labels: np.ndarray
    probs: np.ndarray
    classnames: list[str]


@dataclass
class RunRecord:
    """One results folder, read."""

    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any] | None
    history: list[dict[str, Any]] = field(default_factory=list)
    split: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.metrics is not None

    @property
    def method(self) -> str:
        return str(self.config.get("method", {}).get("method", "?"))

    @property
    def shots(self) -> int:
        """K shots per class of the split (0: the whole train pool)."""
        return int((self.config.get("split_params") or {}).get("shots", 0) or 0)

    @property
    def seed(self) -> int | None:
        seed = (self.config.get("train") or {}).get("seed")
        return int(seed) if seed is not None else None

    @property
    def split_kind(self) -> str:
        return str(self.config.get("split_kind", "?"))

    @property
    def method_config_id(self) -> str:
        """A short hash of the method's config: runs with other options form other groups."""
        cfg = json.dumps(self.config.get("method", {}).get("config", {}), sort_keys=True)
        return hashlib.sha256(cfg.encode()).hexdigest()[:6]

    @property
    def replicate_config(self) -> dict[str, str]:
        """The run's whole configuration, flattened to "dotted.key" -> JSON value, less what differs
        between replicates of one experiment (the seed and what derives from it; see NOT_CONFIG)."""
        flat = flatten(self.config)
        return {k: v for k, v in flat.items() if not _not_config(k)}

    @property
    def group_key(self) -> tuple:
        return (self.method, json.dumps(self.replicate_config, sort_keys=True))

    def test_parts(self) -> list[str]:
        return [k for k in (self.metrics or {}) if k.startswith("test") and isinstance(self.metrics[k], dict)]

    def predictions(self) -> dict[str, PartPredictions]:
        """predictions.csv by test part; novel-class rows are read against the split's novel classes."""
        return read_predictions(self.path / "predictions.csv", list(self.config.get("classnames", [])),
                                (self.split or {}).get("classes", {}), bool(self.config.get("multilabel")))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read results file ({type(exc).__name__}: {exc})") from None


def read_run(path: str | Path) -> RunRecord:
    """Read one results folder (metrics None for an unfinished run)."""
    path = Path(path)
    cfg = _read_json(path / "config.json")
    if not isinstance(cfg, dict) or "method" not in cfg:
        raise ConfigError(f"{path / 'config.json'}: not a run config (no 'method')")
    metrics = _read_json(path / "metrics.json") if (path / "metrics.json").is_file() else None
    history = []
    if (path / "history.jsonl").is_file():
        for line in (path / "history.jsonl").read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    history.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a run killed mid-write leaves a partial last line
    split = _read_json(path / "split.json") if (path / "split.json").is_file() else None
    return RunRecord(path, cfg, metrics, history, split)


def find_runs(paths: Sequence[str | Path]) -> list[RunRecord]:
    """Every results folder (a folder with config.json) at or below `paths`, in path order,
    each once; a run's label-shuffled sanity twin (`engine.sanity.TWIN_DIR`) is part of its run,
    not a run of its own."""
    from conceptclip.engine.sanity import TWIN_DIR

    if not paths:
        raise ConfigError("report: expected at least one run folder")
    found: dict[Path, None] = {}
    for p in paths:
        p = Path(p)
        if not p.is_dir():
            raise ConfigError(f"{p}: run folder not found")
        if (p / "config.json").is_file():
            found[p.resolve()] = None
            continue
        hits = sorted(c.parent for c in p.rglob("config.json") if len(c.relative_to(p).parts) <= MAX_DEPTH + 1
                      and TWIN_DIR not in c.relative_to(p).parts)
        for h in hits:
            found[h.resolve()] = None
    if not found:
        raise ConfigError(f"report: no results folders (with config.json) under {', '.join(map(str, paths))}")
    return [read_run(p) for p in found]


def read_predictions(path: Path, classnames: list[str], split_classes: dict[str, list[str]],
                     multilabel: bool) -> dict[str, PartPredictions]:
    """Parse predictions.csv (`part,id,label,p_<class>...`, see `engine.predictions`): labels are
    class names (multi-label: ";"-joined), or class indices in files written before (`[i; j]`)."""
    if not path.is_file():
        return {}
    rows: dict[str, list[list[str]]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        next(reader, None)
        for row in reader:
            if len(row) >= 4:
                rows.setdefault(row[0], []).append(row)
    out = {}
    for part, prow in rows.items():
        names = split_classes.get("novel", []) if part == "test_novel" else classnames
        probs = np.array([[float(x) for x in r[3:]] for r in prow], dtype=np.float64)
        if names and probs.shape[1] != len(names):
            names = [f"class {i}" for i in range(probs.shape[1])]
        index = {n: i for i, n in enumerate(names)}

        def indices(text: str) -> list[int]:
            parts = [p for p in (text.split(";") if multilabel else [text]) if p != ""]
            if all(p in index for p in parts):
                return [index[p] for p in parts]
            try:  # files written before labels were names: class indices, "2" or "[0; 2]"
                got = json.loads(text.replace(";", ","))
                return [int(j) for j in (got if isinstance(got, list) else [got])]
            except (json.JSONDecodeError, TypeError, ValueError):
                raise ConfigError(f"{path}: label {text!r} is not one of the classes {names}") from None

        if multilabel:
            labels = np.zeros_like(probs, dtype=np.int64)
            for i, r in enumerate(prow):
                for j in indices(r[2]):
                    labels[i, j] = 1
        else:
            labels = np.array([indices(r[2])[0] for r in prow], dtype=np.int64)
        out[part] = PartPredictions([r[1] for r in prow], labels, probs, list(names))
    return out


def mean_std(values: Sequence[float | None]) -> tuple[float, float, int]:
    """(mean, sample std, n) of the finite values; std is 0 for one value, NaN for none."""
    vals = [float(v) for v in values if v is not None and np.isfinite(v)]
    if not vals:
        return float("nan"), float("nan"), 0
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals)


def format_mean_std(mean: float, std: float, scale: float = 1.0, digits: int = 3) -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


@dataclass
class RunGroup:
    """Finished runs that differ only in their seed (replicates of one configuration)."""

    key: tuple
    runs: list[RunRecord]
    differs: str = ""  # what sets this group apart from others of the same method, split and K

    @property
    def method(self) -> str:
        return self.runs[0].method

    @property
    def base_label(self) -> str:
        shots = self.runs[0].shots
        return f"{self.method} · {self.runs[0].split_kind} · K={shots if shots else 'all'}"

    @property
    def label(self) -> str:
        return f"{self.base_label} · {self.differs}" if self.differs else self.base_label

    @property
    def seeds(self) -> list[int | None]:
        return [r.seed for r in self.runs]

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """{part: {metric: {"mean", "std", "n"}}} over the group's runs (+ "harmonic_mean")."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        parts = list(dict.fromkeys(p for r in self.runs for p in r.test_parts()))
        for part in parts:
            out[part] = {}
            for m in SUMMARY_METRICS:
                mu, sd, n = mean_std([(r.metrics or {}).get(part, {}).get(m) for r in self.runs])
                out[part][m] = {"mean": mu, "std": sd, "n": n}
        hm = [(r.metrics or {}).get("harmonic_mean") for r in self.runs]
        if any(h is not None for h in hm):
            mu, sd, n = mean_std(hm)
            out["harmonic_mean"] = {"harmonic_mean": {"mean": mu, "std": sd, "n": n}}
        return out


def _short(key: str, value: str, limit: int = 40) -> str:
    name = key.rsplit(".", 1)[-1] if not key.startswith("files.") else key.split(".")[1] + " file"
    if key.startswith("files."):
        value = value.strip('"')[:8]
    elif len(value) > limit:
        value = value[:limit - 1] + "…"
    return f"{name}={value}"


def group_runs(runs: Sequence[RunRecord]) -> list[RunGroup]:
    """Finished runs grouped by their full configuration (less the seed, see `NOT_CONFIG`), in
    first-seen order, each group's runs sorted by seed. Runs of one configuration with the same seed
    are not replicates: each repeat opens another group ("copy 2", ...). Groups that would share a
    label (method, split, K) are labelled by the config keys whose values differ among them."""
    by_key: dict[tuple, list[list[RunRecord]]] = {}
    for r in runs:
        if not r.finished:
            continue
        copies = by_key.setdefault(r.group_key, [[]])
        for copy in copies:  # the first copy of this configuration that lacks this seed
            if all(o.seed != r.seed for o in copy):
                copy.append(r)
                break
        else:
            copies.append([r])
    groups = [RunGroup(k + (i,), sorted(v, key=lambda r: (r.seed is None, r.seed or 0, str(r.path))))
              for k, copies in by_key.items() for i, v in enumerate(copies)]
    by_label: dict[str, list[RunGroup]] = {}
    for g in groups:
        by_label.setdefault(g.base_label, []).append(g)
    for same in by_label.values():
        if len(same) < 2:
            continue
        configs = [g.runs[0].replicate_config for g in same]
        keys = sorted({k for c in configs for k in c})
        differ = [k for k in keys if len({c.get(k, "–") for c in configs}) > 1]
        # the method's own options first, then training, then the rest
        differ.sort(key=lambda k: (not k.startswith("method.config."), not k.startswith("train."), k))
        for g, c in zip(same, configs):
            g.differs = ", ".join(_short(k, c.get(k, "–")) for k in differ[:4]) + (
                f" (+{len(differ) - 4} more)" if len(differ) > 4 else "")
        copies: dict[str, int] = {}
        for g in same:
            n = copies[g.label] = copies.get(g.label, 0) + 1
            if n > 1:
                g.differs = f"{g.differs}, copy {n}" if g.differs else f"copy {n}"
    return groups
