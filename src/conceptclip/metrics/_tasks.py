"""Classification task inference shared by the classification and calibration metrics.

One rule everywhere, from the shapes of `scores` and `targets`:

* binary      scores (N,) float,   targets (N,) in {0, 1}      -> treated as one label (C = 1)
* multi-class scores (N, C),       targets (N,) in [0, C)      -> one-vs-rest per class
* multi-label scores (N, C),       targets (N, C) in {0, 1}    -> each label on its own
* decisions   preds (N,) bool, or integer 0/1 with targets 0/1 -> binary decisions (C = 1)
* labels      preds (N,) integer,  targets (N,) integer        -> multi-class decisions

(integer 0/1 decisions are class labels instead when `num_classes` is given), so the same hard
decisions give the same answer as floats, ints or bools, and a binary problem is exactly a multi-label problem with one label, which fixes what
"per class" and "macro" mean for it (the positive class only, as scikit-learn's
``average="binary"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from conceptclip.errors import ConfigError
from conceptclip.metrics._validate import (
    ArrayLike,
    as_tensor,
    check_binary,
    check_finite,
    check_labels,
    check_len,
    check_nonempty,
    check_same_shape,
    is_integer,
    shape_str,
)

Task = Literal["binary", "multiclass", "multilabel"]


@dataclass
class Scores:
    """Continuous scores with one-hot/multi-hot truth: `scores` (N, C) float64, `truth` (N, C)
    bool; `labels` (N,) for multi-class (else None)."""

    task: Task
    scores: torch.Tensor
    truth: torch.Tensor
    labels: torch.Tensor | None


@dataclass
class Decisions:
    """Hard decisions. Multi-class: `pred`, `true` (N,) int64 and `num_classes`.
    Binary/multi-label: `pred`, `true` (N, C) bool."""

    task: Task
    pred: torch.Tensor
    true: torch.Tensor
    num_classes: int


def _load(scores: ArrayLike, targets: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    # classification inputs are small (N x C): compute on CPU in float64 whatever their device
    s = as_tensor(scores, "scores").cpu()
    t = as_tensor(targets, "targets").cpu()
    check_nonempty(s, "scores")
    if s.ndim not in (1, 2):
        raise ConfigError(f"scores: expected shape (N,) or (N, C), got {shape_str(s.shape)}")
    check_len(t, "targets", s.shape[0], "scores")
    if t.ndim == 2 and s.ndim == 1:
        raise ConfigError(
            f"targets: expected shape ({s.shape[0]},) for 1-D scores, got {shape_str(t.shape)}"
        )
    if t.ndim == 2:
        check_same_shape(s, "scores", t, "targets")
    elif t.ndim != 1:
        raise ConfigError(f"targets: expected shape (N,) or (N, C), got {shape_str(t.shape)}")
    check_finite(s, "scores")
    check_finite(t, "targets")
    return s, t


def task_of(scores: torch.Tensor, targets: torch.Tensor) -> Task:
    if targets.ndim == 2:
        return "multilabel"
    if scores.ndim == 2:
        return "multiclass"
    return "binary"


def prepare_scores(scores: ArrayLike, targets: ArrayLike) -> Scores:
    """Validate continuous scores (rejects integer decisions: ranking metrics need scores)."""
    s, t = _load(scores, targets)
    if is_integer(s):
        raise ConfigError("scores: expected continuous (float) scores, got integer decisions")
    task = task_of(s, t)
    s = s.double()
    if task == "multiclass":
        labels = check_labels(t, "targets", s.shape[1])
        truth = torch.nn.functional.one_hot(labels, s.shape[1]).bool()
        return Scores(task, s, truth, labels)
    truth = check_binary(t, "targets")
    if task == "binary":
        return Scores(task, s[:, None], truth[:, None], None)
    return Scores(task, s, truth, None)


def prepare_decisions(
    scores: ArrayLike, targets: ArrayLike, threshold: float, num_classes: int | None = None
) -> Decisions:
    """Turn scores (argmax / `>= threshold`) or integer decisions into hard decisions."""
    s, t = _load(scores, targets)
    task = task_of(s, t)
    if task == "multilabel":
        pred = check_binary(s, "scores") if is_integer(s) else s >= threshold
        return Decisions(task, pred, check_binary(t, "targets"), s.shape[1])
    if task == "binary" and (not is_integer(s) or _binary_decisions(s, t, num_classes)):
        pred = s != 0 if is_integer(s) else s >= threshold
        return Decisions(task, pred[:, None], check_binary(t, "targets")[:, None], 1)
    if s.ndim == 2:  # multi-class scores -> argmax
        c = s.shape[1]
        if num_classes is not None and num_classes != c:
            raise ConfigError(f"num_classes: expected {c} to match scores' columns, got {num_classes}")
        pred = s.argmax(dim=1)
    else:  # integer label predictions
        if num_classes is None:
            tl = check_labels(t, "targets", 2**62)
            c = int(max(int(s.max()), int(tl.max()))) + 1
        else:
            c = num_classes
        pred = check_labels(s, "scores", c)
    return Decisions("multiclass", pred.long(), check_labels(t, "targets", c), c)


def _binary_decisions(s: torch.Tensor, t: torch.Tensor, num_classes: int | None) -> bool:
    """1-D integer predictions are binary decisions when bool, or 0/1 with 0/1 targets and no
    `num_classes` (as scikit-learn's average="binary" on labels {0, 1})."""
    if s.dtype == torch.bool:
        return True
    return num_classes is None and bool(((s == 0) | (s == 1)).all()) and bool(((t == 0) | (t == 1)).all())


def counts(d: Decisions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per class/label (tp, fp, fn, tn) as float64 tensors of shape (C,)."""
    if d.task == "multiclass":
        c = d.num_classes
        cm = torch.bincount(d.true * c + d.pred, minlength=c * c).reshape(c, c).double()
        tp = cm.diagonal()
        fp = cm.sum(0) - tp
        fn = cm.sum(1) - tp
        tn = cm.sum() - tp - fp - fn
        return tp, fp, fn, tn
    p, y = d.pred, d.true
    tp = (p & y).sum(0).double()
    fp = (p & ~y).sum(0).double()
    fn = (~p & y).sum(0).double()
    tn = (~p & ~y).sum(0).double()
    return tp, fp, fn, tn


def safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den with NaN (undefined) where den == 0."""
    out = num / den.clamp_min(1e-300)
    return torch.where(den > 0, out, torch.full_like(out, float("nan")))
