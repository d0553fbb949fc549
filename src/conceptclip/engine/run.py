"""Run one experiment end to end and write its results folder.

    out/
      config.json        method, its config, train config, backbone spec and weights id, dataset fingerprint
      split.json         the split manifest the run read (its sha256 is in config.json)
      checkpoint.safetensors   resumable training state (after every epoch)
      model.safetensors  the selected learned state
      history.jsonl      one line per epoch (loss terms, lr, validation metric)
      predictions.csv    per test image: part, id, true label (class name), p_<class> (engine.predictions)
      metrics.json       test metrics (written last: its presence marks a finished run)
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from conceptclip.data.dataset import Dataset
from conceptclip.data.feature_cache import FeatureCache
from conceptclip.data.splits import Split, write_split
from conceptclip.engine.config import TrainConfig
from conceptclip.engine.data import build_parts
from conceptclip.engine.evaluate import classification_metrics, predict
from conceptclip.engine.files import bundle_files, record_file
from conceptclip.engine.predictions import labelled_rows, write_labelled
from conceptclip.engine.trainer import fit, make_fabric, seed_everything
from conceptclip.errors import ConfigError
from conceptclip.io import save_tensors, write_json, write_text
from conceptclip.methods import create_method


def prepare_run_dir(out: str | Path, overwrite: bool = False, resume: bool = False) -> Path:
    """Create the results folder; never overwrite an existing one unless asked."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if overwrite:
            shutil.rmtree(out)
        elif resume:
            if (out / "metrics.json").exists():
                raise ConfigError(f"{out}: this run already finished (metrics.json exists); use --overwrite to redo it")
            return out
        else:
            raise ConfigError(f"{out}: results folder already exists; pass --resume to continue it or "
                              "--overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    return out


def run_experiment(method_name: str, dataset: Dataset, split: Split, backbone, out: str | Path, *,
                   method_config: dict[str, Any] | None = None, train_config: dict[str, Any] | None = None,
                   overwrite: bool = False, resume: bool = False, cache: FeatureCache | None = None,
                   method_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train `method_name` on `split.parts["train"]`, select on "val", test once on every test part."""
    out = prepare_run_dir(out, overwrite=overwrite, resume=resume)
    cache = cache or FeatureCache()
    write_split(split, out / "split.json")
    classnames = dataset.classnames
    if split.classes.get("base"):
        classnames = split.classes["base"]
    seed_everything(int((train_config or {}).get("seed", TrainConfig.seed)))  # parameter init is seeded too
    # knowledge counted from per-image annotations (e.g. PH2 criteria per diagnosis) never reads the
    # tested images (load_run derives the same list from split.json)
    method_kwargs = {"knowledge_exclude": split.tested_ids(), **(method_kwargs or {})}
    method = create_method(method_name, backbone, classnames, method_config, template=dataset.template,
                           multilabel=dataset.multilabel, dataset=dataset, **method_kwargs)
    cfg = TrainConfig.from_dict({**method.train_defaults_for(split.params.get("shots")), **(train_config or {})})
    backbone_spec = backbone.name
    # a self-contained folder: files named by the method's options and the aligned lite heads are
    # copied into it, with their sha256 (engine.files)
    described = method.describe()
    described["config"], files = bundle_files(described.get("config", {}), out)
    heads = getattr(backbone, "heads_path", None)
    if heads:
        shutil.copyfile(heads, out / "lite_heads.safetensors")
        backbone_spec = "lite:lite_heads.safetensors"
        files["backbone"] = record_file(out, "lite_heads.safetensors", heads)
    config = {"method": described, "train": dataclasses.asdict(cfg), "backbone": backbone_spec, "files": files,
              "classnames": list(classnames), "template": dataset.template, "multilabel": dataset.multilabel,
              "backbone_weights": backbone.weights_id(), "dataset": dataset.name,
              "dataset_fingerprint": dataset.fingerprint(), "split_sha256": split.sha256(), "split_kind": split.kind,
              "split_params": split.params}
    write_json(out / "config.json", config)

    parts = build_parts(dataset, split.parts, method.inputs, backbone, cache, num_workers=cfg.num_workers,
                        views=cfg.augment_views)  # views are seeded apart from the run: one cache for all seeds
    fabric = make_fabric(cfg)
    result = fit(method, parts["train"], parts.get("val"), cfg, checkpoint=out / "checkpoint.safetensors",
                 fabric=fabric)
    save_tensors(out / "model.safetensors", method.learned_state(), metadata={"method": method_name})
    write_text(out / "history.jsonl", "".join(json.dumps(r) + "\n" for r in result.history))

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
    write_json(out / "metrics.json", metrics)
    return metrics


def _shared_state(trained, fresh) -> dict[str, torch.Tensor]:
    """The trained state minus class-specific tensors whose shapes differ for the novel classes."""
    target = fresh.learned_state()
    return {k: (v if k in target and target[k].shape == v.shape else target[k])
            for k, v in trained.learned_state().items() if k in target} | {
        k: v for k, v in target.items() if k not in trained.learned_state()}
