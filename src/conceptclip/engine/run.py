"""Run one experiment end to end and write its results folder.

`run_prepared` is the one writer of a results folder: `run_experiment` (a dataset and a split)
and RC-TPL's text-only training (`rctpl.train`, encoded reports) both hand it their prepared
parts: the built method (`build_method`), its train config, config.json and the data parts.

    out/
      config.json        method, its config, train config, backbone spec and weights id, dataset fingerprint
      split.json         the split manifest the run read (its sha256 is in config.json)
      checkpoint.safetensors   resumable training state (after every epoch)
      model.safetensors  the selected learned state
      history.jsonl      one line per epoch (loss terms, lr, validation metric)
      predictions.csv    per test image: part, id, true label (class name), p_<class> (engine.predictions)
      metrics.json       test metrics (written last: its presence marks a finished run)
      .conceptclip-run   marker: this folder was made by conceptclip (with config.json, what --overwrite may replace)

Nothing is created before the options are validated; a run that fails before its first checkpoint
removes the folder it created, and `--overwrite` moves the old folder aside until the new run
finished (restoring it when the new run fails).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from conceptclip.data.dataset import Dataset
from conceptclip.data.feature_cache import FeatureCache
from conceptclip.data.splits import Split, write_split
from conceptclip.engine.config import RESUME_CHANGEABLE, TrainConfig
from conceptclip.engine.data import Part, build_parts
from conceptclip.engine.evaluate import classification_metrics, predict
from conceptclip.engine.files import bundle_files, sha256_file
from conceptclip.engine.predictions import labelled_rows, write_labelled
from conceptclip.engine.trainer import FitResult, fit, make_fabric, seed_everything
from conceptclip.errors import ConfigError
from conceptclip.io import save_tensors, write_json, write_text
from conceptclip.methods import create_method


RUN_MARKER = ".conceptclip-run"


def is_results_folder(path: str | Path, kind: str = "run") -> bool:
    """Whether `path` is a folder conceptclip made: its RUN_MARKER names `kind` ("run": a results folder,
    which also holds config.json; "demo": a demo folder)."""
    path = Path(path)
    try:
        doc = json.loads((path / RUN_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("kind") == kind and (kind != "run" or (path / "config.json").is_file())


def check_run_dir(out: str | Path, overwrite: bool = False, resume: bool = False, kind: str = "run") -> str:
    """What `out` allows, touching nothing: "new" (absent or empty), "resume" or "replace"; else a ConfigError.
    `overwrite` only ever replaces a folder conceptclip recognises as its own (`is_results_folder`)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder; -o/--out expects a results folder")
    if not out.exists() or all(p.name == RUN_MARKER for p in out.iterdir()):
        return "new"  # absent, empty, or claimed by a run killed before it wrote anything
    if overwrite:
        if not is_results_folder(out, kind):
            raise ConfigError(f"{out}: not a conceptclip {kind} folder (no {RUN_MARKER} marker"
                              f"{' and config.json' if kind == 'run' else ''}); --overwrite replaces only folders "
                              "conceptclip made: choose another -o or remove it yourself")
        return "replace"
    if resume:
        if (out / "metrics.json").exists():
            raise ConfigError(f"{out}: this run already finished (metrics.json exists); use --overwrite to redo it")
        if not (out / "config.json").is_file():
            raise ConfigError(f"{out}: not a conceptclip results folder (config.json missing); nothing to resume")
        return "resume"
    raise ConfigError(f"{out}: results folder already exists; pass --resume to continue it or "
                      "--overwrite to replace it")


@contextlib.contextmanager
def claim_run_dir(out: str | Path, mode: str, kind: str = "run",
                  keep: Callable[[Path], bool] = lambda p: (p / "checkpoint.safetensors").exists()) -> Iterator[Path]:
    """Create (mode "new"), continue ("resume") or replace ("replace") the results folder `out` for the
    `with` body. "replace" moves the old folder aside and deletes it only when the body succeeded.
    When the body fails: a replaced folder is restored; a folder this call created is removed unless
    `keep(out)` (by default: it holds a checkpoint that --resume can continue)."""
    out = Path(out)
    full = out.resolve()
    aside = None
    created = mode != "resume"
    empty_before = out.is_dir()
    if mode == "replace":
        aside = full.with_name(f".{full.name}.replaced-{os.getpid()}")
        os.replace(full, aside)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if aside is not None:
            os.replace(aside, full)
        raise ConfigError(f"{out}: cannot create the results folder ({exc.strerror or exc})") from None
    if not (out / RUN_MARKER).exists():
        write_json(out / RUN_MARKER, {"kind": kind, "format": 1})
    try:
        yield out
    except BaseException:
        if aside is not None:
            shutil.rmtree(full, ignore_errors=True)
            os.replace(aside, full)
        elif created and not keep(out):
            shutil.rmtree(out, ignore_errors=True)
            if empty_before:
                out.mkdir(exist_ok=True)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def prepare_run_dir(out: str | Path, overwrite: bool = False, resume: bool = False) -> Path:
    """Create the results folder; never overwrite an existing one unless asked, and then only one
    conceptclip made (`check_run_dir`). Prefer `check_run_dir` + `claim_run_dir`, which also clean up."""
    out = Path(out)
    mode = check_run_dir(out, overwrite=overwrite, resume=resume)
    if mode == "replace":
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / RUN_MARKER).exists():
        write_json(out / RUN_MARKER, {"kind": "run", "format": 1})
    return out


def _flat(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in doc.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resume_config(out: Path, config: dict[str, Any], cfg: TrainConfig) -> dict[str, Any]:
    """The config.json of a resumed run: refused (naming the keys) when it differs from the run's
    config.json beyond RESUME_CHANGEABLE training options or asks for fewer epochs than the
    checkpoint finished; allowed changes are recorded under "resumed" (from which epoch, old -> new)."""
    from conceptclip.engine.checkpoint import checkpoint_epoch

    path = out / "config.json"
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(old, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the run's config to resume it ({exc})") from None
    new = json.loads(json.dumps(config))
    a, b = _flat({k: v for k, v in old.items() if k != "resumed"}), _flat(new)
    missing = object()
    differ = {k: (a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b))
              if a.get(k, missing) != b.get(k, missing)}
    show = lambda v: "(absent)" if v is missing else json.dumps(v)  # noqa: E731
    refused = [k for k in differ if not (k.startswith("train.") and k[6:] in RESUME_CHANGEABLE)]
    if refused:
        raise ConfigError(f"{out}: --resume with options that differ from the run's config.json ("
                          + "; ".join(f"{k} {show(differ[k][0])} -> {show(differ[k][1])}" for k in refused)
                          + "); resume with the same options, or start a new run (another -o, or --overwrite)")
    ckpt = out / "checkpoint.safetensors"
    done = checkpoint_epoch(ckpt) + 1 if ckpt.exists() else 0
    if done > cfg.epochs:
        raise ConfigError(f"{out}: --resume with epochs={cfg.epochs}, but the checkpoint has {done} finished epochs; "
                          f"expected epochs >= {done}")
    new["resumed"] = list(old.get("resumed") or [])
    if differ:
        new["resumed"].append({"from_epoch": done, "changed": {k[6:]: {"from": differ[k][0], "to": differ[k][1]}
                                                                for k in differ}})
    return new


def build_method(method_name: str, backbone, classnames: Sequence[str], method_config: dict[str, Any] | None,
                 train_config: dict[str, Any] | None, *, shots: int | None = None, **kwargs: Any):
    """(method, TrainConfig) of a run: seed first (parameter init is seeded too), build the method,
    then its training config: the method's (paper's) defaults for `shots` overridden by `train_config`."""
    seed_everything(int((train_config or {}).get("seed", TrainConfig.seed)))
    method = create_method(method_name, backbone, classnames, method_config, **kwargs)
    return method, TrainConfig.from_dict({**method.train_defaults_for(shots), **(train_config or {})})


def backbone_entry(backbone) -> tuple[str, str | None]:
    """(the backbone spec config.json records, the lite heads file the folder gets a copy of, or None)."""
    heads = getattr(backbone, "heads_path", None)
    return ("lite:lite_heads.safetensors" if heads else backbone.name), heads


Finish = Callable[[Path, Any, dict[str, Part], FitResult, Any], dict[str, Any]]


def run_prepared(out: str | Path, mode: str, method, cfg: TrainConfig, config: dict[str, Any],
                 parts: dict[str, Part] | Callable[[], dict[str, Part]], finish: Finish, *,
                 heads: str | None = None, prepare: Callable[[Path], None] | None = None,
                 steps: bool = False) -> dict[str, Any]:
    """The one writer of a results folder, from prepared parts: an already-built `method` (see
    `build_method`), its training config `cfg`, the `config` that config.json holds, and the data
    `parts` ("train", optional "val" for validation and selection, any others for `finish`), or a
    function building them once the folder is claimed.

    `mode` is `check_run_dir`'s answer (checked before anything was built); a "resume" config is
    checked against the run's (`resume_config`). In the claimed folder: `prepare(out)` (files that
    go with the config), a copy of the lite `heads`, config.json, then the fit (checkpoint.safetensors
    after every epoch), model.safetensors, history.jsonl, with `steps` the loss terms of every
    training step (steps.jsonl), and last metrics.json: what `finish(out, method, parts, result,
    fabric)` returns (it may write further files, e.g. predictions.csv)."""
    out = Path(out)
    if mode == "resume":
        config = resume_config(out, config, cfg)
    with claim_run_dir(out, mode) as out:
        if prepare is not None:
            prepare(out)
        if heads:
            shutil.copyfile(heads, out / "lite_heads.safetensors")
        write_json(out / "config.json", config)
        if callable(parts):
            parts = parts()
        fabric = make_fabric(cfg)
        records: list[dict[str, float]] = []
        hook = method.register_forward_hook(  # the loss terms of every training step (a finer loss curve)
            lambda _m, _i, terms: records.append({k: round(float(v.detach()), 6) for k, v in terms.items()})
            if method.training else None) if steps else None
        try:
            result = fit(method, parts["train"], parts.get("val"), cfg, checkpoint=out / "checkpoint.safetensors",
                         fabric=fabric)
        finally:
            if hook is not None:
                hook.remove()
        save_tensors(out / "model.safetensors", method.learned_state(), metadata={"method": method.name})
        write_text(out / "history.jsonl", "".join(json.dumps(r) + "\n" for r in result.history))
        if records:
            write_text(out / "steps.jsonl", "".join(json.dumps(r) + "\n" for r in records))
        metrics = finish(out, method, parts, result, fabric)
        write_json(out / "metrics.json", metrics)
        return metrics


def run_experiment(method_name: str, dataset: Dataset, split: Split, backbone, out: str | Path, *,
                   method_config: dict[str, Any] | None = None, train_config: dict[str, Any] | None = None,
                   overwrite: bool = False, resume: bool = False, cache: FeatureCache | None = None,
                   method_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train `method_name` on `split.parts["train"]`, select on "val", test once on every test part.

    Every option is validated before `out` is touched; see `claim_run_dir` for what a failure leaves."""
    out = Path(out)
    mode = check_run_dir(out, overwrite=overwrite, resume=resume)
    cache = cache or FeatureCache()
    classnames = dataset.classnames
    if split.classes.get("base"):
        classnames = split.classes["base"]
    # knowledge counted from per-image annotations (e.g. PH2 criteria per diagnosis) never reads the
    # tested images (load_run derives the same list from split.json)
    method_kwargs = {"knowledge_exclude": split.tested_ids(), **(method_kwargs or {})}
    method, cfg = build_method(method_name, backbone, classnames, method_config, train_config,
                               shots=split.params.get("shots"), template=dataset.template,
                               multilabel=dataset.multilabel, dataset=dataset, **method_kwargs)
    # a self-contained folder: files named by the method's options and the aligned lite heads are
    # copied into it, with their sha256 (engine.files); copied once the folder is claimed
    described = method.describe()
    raw_method_config = described.get("config", {})
    described["config"], files = bundle_files(raw_method_config, out, copy=False)
    backbone_spec, heads = backbone_entry(backbone)
    if heads:
        files["backbone"] = {"path": "lite_heads.safetensors", "sha256": sha256_file(heads),
                             "source": str(Path(heads).resolve())}
    config = {"method": described, "train": dataclasses.asdict(cfg), "backbone": backbone_spec, "files": files,
              "classnames": list(classnames), "template": dataset.template, "multilabel": dataset.multilabel,
              "backbone_weights": backbone.weights_id(), "dataset": dataset.name,
              "dataset_fingerprint": dataset.fingerprint(), "split_sha256": split.sha256(), "split_kind": split.kind,
              "split_params": split.params}

    def prepare(out: Path) -> None:
        write_split(split, out / "split.json")
        bundle_files(raw_method_config, out)

    def parts() -> dict[str, Part]:  # views are seeded apart from the run: one cache for all seeds
        return build_parts(dataset, split.parts, method.inputs, backbone, cache, num_workers=cfg.num_workers,
                           views=cfg.augment_views)

    def finish(out: Path, method, parts: dict[str, Part], result: FitResult, fabric) -> dict[str, Any]:
        return _test(out, method, method_name, dataset, split, backbone, parts, result, fabric, method_config,
                     method_kwargs)

    return run_prepared(out, mode, method, cfg, config, parts, finish, heads=heads, prepare=prepare)


def _test(out: Path, method, method_name: str, dataset: Dataset, split: Split, backbone, parts: dict[str, Part],
          result: FitResult, fabric, method_config, method_kwargs) -> dict[str, Any]:
    """`run_experiment`'s metrics: the fit's summary and each test part once (predictions.csv)."""
    metrics: dict[str, Any] = {"method": method_name, "fit_seconds": round(result.seconds, 3),
                               "best_epoch": result.best_epoch, "val_score": result.best_score,
                               "selection": result.selection,
                               "closed_form": result.closed_form, "resumed_from_epoch": result.resumed_from}
    rows: list[list[str]] = []
    for name in [p for p in split.parts if p.startswith("test")]:
        part = parts[name]
        if name == "test_novel":  # novel classes: a fresh method head over the novel class names
            novel = create_method(method_name, backbone, split.classes["novel"], method_config,
                                  template=dataset.template, multilabel=dataset.multilabel, dataset=dataset,
                                  **(method_kwargs or {}))
            novel.load_learned_state(_shared_state(method, novel))
            novel.to(fabric.device)
            labels = part.labels - len(split.classes["base"])
            probs = predict(novel, part, device=fabric.device)
            names = split.classes["novel"]
        else:
            probs = predict(method, part, device=fabric.device)
            labels, names = part.labels, method.classnames
        metrics[name] = classification_metrics(probs, labels, names, dataset.multilabel)
        rows += labelled_rows(name, part.ids, labels, probs, names, dataset.multilabel)
    if "test_base" in metrics and "test_novel" in metrics:
        b, n = metrics["test_base"]["accuracy"], metrics["test_novel"]["accuracy"]
        metrics["harmonic_mean"] = 2 * b * n / (b + n) if b + n > 0 else 0.0
    write_labelled(out / "predictions.csv", method.classnames, rows)
    return metrics


def _shared_state(trained, fresh) -> dict[str, torch.Tensor]:
    """The trained state minus class-specific tensors whose shapes differ for the novel classes."""
    target = fresh.learned_state()
    return {k: (v if k in target and target[k].shape == v.shape else target[k])
            for k, v in trained.learned_state().items() if k in target} | {
        k: v for k, v in target.items() if k not in trained.learned_state()}
