"""Classification metrics: AUC, accuracy, balanced accuracy, F1 and the confusion matrix.

All take `scores` and `targets` in the shapes described in `conceptclip.metrics._tasks`
(binary (N,), multi-class (N, C) + labels (N,), multi-label (N, C) + (N, C), or integer label
predictions (N,)). `average="macro"` returns a float, the mean over the classes where the metric
is defined; `average="none"` returns a float64 tensor (C,) with NaN for undefined classes
(e.g. AUC of a class without positives), never an exception.
"""

from __future__ import annotations

from typing import Literal

import torch

from conceptclip.metrics._tasks import counts, prepare_decisions, prepare_scores, safe_div
from conceptclip.metrics._validate import ArrayLike, check_choice, nanmean

Average = Literal["macro", "none"]


def _reduce(per_class: torch.Tensor, average: Average) -> float | torch.Tensor:
    check_choice(average, "average", ("macro", "none"))
    return nanmean(per_class) if average == "macro" else per_class


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks along dim 0 with ties given their average rank (as scipy's rankdata).

    For a value v in a column: rank = (#{< v} + 1 + #{<= v}) / 2.
    """
    cols = x.T.contiguous()
    srt = cols.sort(dim=1).values
    less = torch.searchsorted(srt, cols, right=False).double()
    leq = torch.searchsorted(srt, cols, right=True).double()
    return ((less + 1.0 + leq) / 2.0).T


def auc(scores: ArrayLike, targets: ArrayLike, *, average: Average = "macro") -> float | torch.Tensor:
    """Area under the ROC curve, per class (one-vs-rest) then macro-averaged.

    For each class/label c with n_pos positives and n_neg negatives, by the Mann-Whitney
    statistic with average ranks r_i of the scores (ties count 1/2):

        AUC_c = (sum_{i: y_ic = 1} r_ic - n_pos (n_pos + 1) / 2) / (n_pos * n_neg)
              = P(s_pos > s_neg) + 0.5 P(s_pos = s_neg)

    AUC_c is NaN when the class has no positives or no negatives; the macro average is over the
    defined classes only (NaN if none is defined). Binary scores give one value.
    """
    s = prepare_scores(scores, targets)
    ranks = average_ranks(s.scores)
    y = s.truth.double()
    n_pos = y.sum(0)
    n_neg = y.shape[0] - n_pos
    u = (ranks * y).sum(0) - n_pos * (n_pos + 1) / 2
    return _reduce(safe_div(u, n_pos * n_neg), average)


def accuracy(
    scores: ArrayLike,
    targets: ArrayLike,
    *,
    threshold: float = 0.5,
    multilabel: Literal["subset", "label"] = "subset",
) -> float:
    """Fraction of correct predictions.

    Multi-class: mean_i [argmax_c s_ic == y_i]. Binary: mean_i [(s_i >= threshold) == y_i].
    Multi-label: "subset" (default, as scikit-learn) = mean_i [all_c (s_ic >= t) == y_ic];
    "label" = mean_{i,c} [(s_ic >= t) == y_ic] (one minus the Hamming loss).
    """
    check_choice(multilabel, "multilabel", ("subset", "label"))
    d = prepare_decisions(scores, targets, threshold)
    if d.task == "multiclass":
        return float((d.pred == d.true).double().mean())
    eq = d.pred == d.true
    if multilabel == "subset":
        return float(eq.all(dim=1).double().mean())
    return float(eq.double().mean())


def balanced_accuracy(
    scores: ArrayLike,
    targets: ArrayLike,
    *,
    threshold: float = 0.5,
    average: Average = "macro",
    num_classes: int | None = None,
) -> float | torch.Tensor:
    """Balanced accuracy: the mean recall over classes.

    Multi-class: per class recall_c = TP_c / (TP_c + FN_c) (NaN for a class absent from the
    targets); macro = mean over present classes, as scikit-learn's balanced_accuracy_score.
    Binary / multi-label, per label: (TPR + TNR) / 2 with TPR = TP / (TP + FN),
    TNR = TN / (TN + FP), using only the defined one if a label has no positives or no negatives.
    """
    d = prepare_decisions(scores, targets, threshold, num_classes)
    tp, fp, fn, tn = counts(d)
    tpr = safe_div(tp, tp + fn)
    if d.task == "multiclass":
        return _reduce(tpr, average)
    both = torch.stack([tpr, safe_div(tn, tn + fp)])
    defined = (~torch.isnan(both)).sum(0)
    per_label = safe_div(torch.nan_to_num(both, nan=0.0).sum(0), defined.double())
    return _reduce(per_label, average)


def f1_score(
    scores: ArrayLike,
    targets: ArrayLike,
    *,
    threshold: float = 0.5,
    average: Average = "macro",
    num_classes: int | None = None,
) -> float | torch.Tensor:
    """F1 per class/label, then macro-averaged.

        F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c)

    NaN when TP + FP + FN = 0 (the class is neither predicted nor present), excluded from the
    macro mean (scikit-learn's zero_division=nan). Multi-class decisions are argmax; binary and
    multi-label decisions are score >= threshold; binary gives the positive-class F1 only, for
    float scores, bool decisions and integer 0/1 decisions alike (scikit-learn's
    average="binary"); integer 0/1 decisions with `num_classes` are class labels (macro over them).
    """
    d = prepare_decisions(scores, targets, threshold, num_classes)
    tp, fp, fn, _ = counts(d)
    return _reduce(safe_div(2 * tp, 2 * tp + fp + fn), average)


def confusion_matrix(
    scores: ArrayLike, targets: ArrayLike, *, threshold: float = 0.5, num_classes: int | None = None
) -> torch.Tensor:
    """Confusion counts (int64).

    Multi-class (or integer labels): M (C, C) with M[i, j] = #{true class i, predicted j}.
    Binary: M (2, 2) = [[TN, FP], [FN, TP]]. Multi-label: (C, 2, 2), that matrix per label (as
    scikit-learn's multilabel_confusion_matrix).
    """
    d = prepare_decisions(scores, targets, threshold, num_classes)
    if d.task == "multiclass":
        c = d.num_classes
        return torch.bincount(d.true * c + d.pred, minlength=c * c).reshape(c, c)
    tp, fp, fn, tn = counts(d)
    per_label = torch.stack([tn, fp, fn, tp], dim=1).reshape(-1, 2, 2).long()
    return per_label[0] if d.task == "binary" else per_label
