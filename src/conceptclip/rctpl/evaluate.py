"""Inference with learned RC-TPL prompts: zero-shot classification of a labelled image manifest
(AUC/ACC/F1), and report retrieval precision@K.

The prompts are shared by all classes, so a run trained on report concepts scores any class
list: `load_rctpl(run, classnames)` rebuilds the method for the manifest's classes and loads the
learned context vectors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from conceptclip.errors import ConfigError
from conceptclip.rctpl.corpus import NO_FINDING_KEYS, ReportItem, _key


def load_rctpl(run: str | Path, classnames: Sequence[str] | None = None, *, multilabel: bool = True,
               device: str | None = None, config: dict[str, Any] | None = None):
    """(method, run config): the trained prompts of `run` over `classnames` (default: the run's
    classes); `config` overrides inference options (e.g. {"alpha": 1.0})."""
    from conceptclip.engine.load import load_run
    from conceptclip.methods import create_method

    trained, cfg = load_run(run, device=device)
    if trained.name != "rctpl":
        raise ConfigError(f"{run}: a run of method {trained.name!r}, expected an rctpl run")
    if classnames is None and not config and multilabel:
        return trained, cfg
    mconf = {**cfg["method"]["config"], **(config or {})}
    method = create_method("rctpl", trained.backbone, list(classnames or trained.classnames), mconf,
                           multilabel=multilabel)
    method.load_learned_state(trained.learned_state())
    method.to(trained.backbone.device).eval()
    return method, cfg


def zero_shot_eval(method, dataset, cache=None, batch_size: int = 64) -> dict[str, Any]:
    """Classification metrics of the method's prompts over every image of `dataset` (its classes
    must be the method's): accuracy, balanced accuracy, macro F1, ECE, macro and per-class AUC,
    plus the macro AUC of each branch alone."""
    from conceptclip.data import FeatureCache
    from conceptclip.engine import classification_metrics, predict
    from conceptclip.engine.data import build_part
    from conceptclip.metrics import auc

    if [_key(c) for c in dataset.classnames] != [_key(c) for c in method.classnames]:
        raise ConfigError(f"dataset {dataset.name!r} classes {dataset.classnames} differ from the method's "
                          f"{method.classnames}")
    part = build_part(dataset, [s.id for s in dataset.samples], method.inputs, method.backbone, cache or FeatureCache())
    probs = predict(method, part, batch_size=batch_size)
    out = classification_metrics(probs, part.labels, method.classnames, dataset.multilabel)
    targets = part.labels if dataset.multilabel else part.labels.long()
    with torch.no_grad():
        branches = [method.branch_scores({k: v.to(method.backbone.device) for k, v in b.items()})
                    for b in part.batches(batch_size)]
    for i, name in enumerate(("global", "local")):
        if branches and branches[0][i] is not None:
            s = torch.cat([b[i] for b in branches]).float().cpu()
            s = s if dataset.multilabel or s.shape[1] > 2 else s.softmax(-1)[:, 1]
            value = auc(s, targets)
            out[f"auc_macro_{name}"] = None if value != value else float(value)
    return out


def report_labels(items: Sequence[ReportItem], classnames: Sequence[str]) -> torch.Tensor:
    """Multi-hot (N, C) of reports over `classnames`: concept names match the triplet concepts
    (case/underscore-insensitive); "normal"/"no finding" is set when no concept is positive."""
    out = torch.zeros(len(items), len(classnames))
    keys = [_key(c) for c in classnames]
    for i, it in enumerate(items):
        pos = {_key(c) for c in it.positive}
        for j, k in enumerate(keys):
            out[i, j] = float(not pos) if k in NO_FINDING_KEYS else float(k in pos)
    return out


def with_no_finding(labels: torch.Tensor) -> torch.Tensor:
    """Append a "no finding" column (1 where no label is set), so that relevance by a shared label
    also relates normal items to each other."""
    return torch.cat([labels, (labels.sum(1, keepdim=True) == 0).to(labels.dtype)], dim=1)


def profile_similarity(query: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """Cosine similarity (Q, G) of class-score profiles, each side standardised per class by its
    own mean and std (images and reports score on different scales)."""
    def z(x: torch.Tensor) -> torch.Tensor:
        x = x.double()
        return (x - x.mean(0)) / x.std(0, unbiased=False).clamp_min(1e-8) if x.shape[0] > 1 else x - x.mean(1, keepdim=True)

    return (F.normalize(z(query), dim=1) @ F.normalize(z(gallery), dim=1).t()).float()


def retrieval_scores(query_scores: torch.Tensor, gallery_scores: torch.Tensor, query_labels: torch.Tensor,
                     gallery_labels: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, Any]:
    """precision@K of reports retrieved by profile similarity; a report is relevant when it
    shares a positive label with the query (normal with normal)."""
    from conceptclip.metrics import precision_at_k, relevance_from_labels

    ks = [k for k in ks if k <= gallery_scores.shape[0]]
    if not ks:
        raise ConfigError(f"retrieval: every K exceeds the gallery size {gallery_scores.shape[0]}")
    sim = profile_similarity(query_scores, gallery_scores)
    rel = relevance_from_labels(with_no_finding(query_labels).long(), with_no_finding(gallery_labels).long())
    p = precision_at_k(sim, rel, list(ks))
    chance = float(rel.double().mean())
    return {"n_queries": int(sim.shape[0]), "n_gallery": int(sim.shape[1]),
            **{f"precision@{k}": float(v) for k, v in p.items()}, "chance_precision": chance}


@torch.no_grad()
def image_scores(method, dataset, cache=None, batch_size: int = 64) -> torch.Tensor:
    """Logits (N, C) of every image of `dataset` under the method's prompts."""
    from conceptclip.data import FeatureCache
    from conceptclip.engine.data import build_part

    part = build_part(dataset, [s.id for s in dataset.samples], method.inputs, method.backbone, cache or FeatureCache())
    device = method.backbone.device
    return torch.cat([method.logits({k: v.to(device) for k, v in b.items()}).cpu() for b in part.batches(batch_size)])
