"""Evaluate a method on a part: logits for every image (no gradient), then the classification metrics."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from conceptclip.engine.data import Part
from conceptclip.metrics.calibration import expected_calibration_error
from conceptclip.metrics.classification import accuracy, auc, balanced_accuracy, f1_score


@torch.no_grad()
def predict(method, part: Part, batch_size: int = 256, device: torch.device | str | None = None) -> torch.Tensor:
    """Probabilities (N, C) of every image of `part`, in part order."""
    was_training = method.training
    method.eval()
    device = device or next(method.buffers(), torch.zeros(0)).device
    out = []
    for batch in part.batches(batch_size):
        batch = {k: v.to(device) for k, v in batch.items()}
        out.append(method.probabilities(method.logits(batch)).float().cpu())
    method.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, len(method.classnames))


def _clean(x: Any) -> Any:
    if torch.is_tensor(x):
        x = x.tolist()
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, classnames: Sequence[str],
                           multilabel: bool = False) -> dict[str, Any]:
    """accuracy, balanced accuracy, macro F1, ECE, macro AUC and AUC per class (one-vs-rest)."""
    targets = labels if multilabel else labels.long()
    per_class = auc(probs, targets, average="none") if probs.shape[1] > 2 or multilabel else None
    if per_class is None:  # two classes: AUC of class 1 vs 0; class 0's is the same
        a = auc(probs[:, 1], targets)
        per_class = torch.tensor([a, a])
    out = {
        "n": int(labels.shape[0]),
        "accuracy": accuracy(probs, targets),
        "balanced_accuracy": _clean(balanced_accuracy(probs, targets, num_classes=len(classnames))
                                    if not multilabel else balanced_accuracy(probs, targets)),
        "f1_macro": _clean(f1_score(probs, targets, num_classes=None if multilabel else len(classnames))),
        "ece": _clean(expected_calibration_error(probs, targets)),
        "auc_macro": _clean(float(torch.nanmean(per_class.double())) if not torch.isnan(per_class).all() else float("nan")),
        "auc_per_class": {c: _clean(float(v)) for c, v in zip(classnames, per_class)},
    }
    return out
