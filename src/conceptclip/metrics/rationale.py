"""ECOR's doubly-right grid: right/wrong category x right/wrong rationale.

Rationales are indexed 0..R-1 (a rationale vocabulary); sets are multi-hot rows (N, R). When the
truth is per class rather than per image, pass `class_rationales[true_class]`: the grid then says
so (`"truth": "class"` and a `"note"`), since a "right" rationale only means one the bank lists for
the true class, not one the image shows (DROR's banks; with a method that names a rationale of the
predicted class only, RW = 0 and RR = accuracy identically).
"""

from __future__ import annotations

from typing import Literal

import torch

from conceptclip.errors import ConfigError
from conceptclip.metrics._validate import (
    ArrayLike,
    as_tensor,
    check_binary,
    check_choice,
    check_finite,
    check_labels,
    check_len,
    check_ndim,
    check_nonempty,
    check_positive_int,
    check_same_shape,
    is_integer,
)

Rule = Literal["subset", "any", "exact", "topk"]


def right_rationale(
    pred_rationales: ArrayLike, true_rationales: ArrayLike, *, rule: Rule = "subset", k: int = 1
) -> torch.Tensor:
    """Whether each sample's predicted rationale is right, (N,) bool.

    With P_i the predicted set and T_i the true set of sample i:
      "subset": P_i != {} and P_i ⊆ T_i   (every predicted rationale is a true one; default)
      "any":    P_i ∩ T_i != {}           (at least one predicted rationale is true)
      "exact":  P_i = T_i
      "topk":   `pred_rationales` are scores (N, R); P_i = the k highest-scoring rationales
                (ties by lower index) and the rule is P_i ⊆ T_i (k=1: top-1 rationale ∈ T_i).
    """
    check_choice(rule, "rule", ("subset", "any", "exact", "topk"))
    p = as_tensor(pred_rationales, "pred_rationales")
    t = as_tensor(true_rationales, "true_rationales")
    check_ndim(p, "pred_rationales", (2,), "shape (N, R)")
    check_nonempty(p, "pred_rationales")
    check_same_shape(p, "pred_rationales", t, "true_rationales")
    truth = check_binary(t, "true_rationales")
    if rule == "topk":
        check_positive_int(k, "k")
        if k > p.shape[1]:
            raise ConfigError(f"k: expected at most {p.shape[1]} (the number of rationales), got {k}")
        check_finite(p, "pred_rationales")
        top = torch.argsort(p.double(), dim=1, descending=True, stable=True)[:, :k]
        return truth.gather(1, top).all(dim=1)
    pred = check_binary(p, "pred_rationales")
    if rule == "subset":
        return pred.any(dim=1) & ~(pred & ~truth).any(dim=1)
    if rule == "any":
        return (pred & truth).any(dim=1)
    return (pred == truth).all(dim=1)


CLASS_LEVEL_NOTE = ("class-level rationale truth (every image of a class has the same rationales): the grid "
                    "carries no per-image rationale information; a right rationale only means one listed for the "
                    "true class (RW = 0 and RR = accuracy whenever the predicted rationale belongs to the predicted "
                    "class)")


def truth_level(true_class: torch.Tensor, truth: torch.Tensor) -> str:
    """"class" when every image of each class has the same truth row and some class has two or more
    images (the truth is a function of the class), else "image"."""
    repeated = False
    for c in torch.unique(true_class):
        rows = truth[true_class == c]
        if rows.shape[0] > 1:
            repeated = True
            if not bool((rows == rows[0]).all()):
                return "image"
    return "class" if repeated else "image"


def rationale_grid(
    pred_class: ArrayLike,
    true_class: ArrayLike,
    pred_rationales: ArrayLike,
    true_rationales: ArrayLike,
    *,
    rule: Rule = "subset",
    k: int = 1,
) -> dict[str, float | int | str]:
    """Fractions of samples in each cell of the doubly-right grid (they sum to 1):

        RR = mean_i [c_i = y_i and R_i right]     RW = mean_i [c_i = y_i and R_i wrong]
        WR = mean_i [c_i != y_i and R_i right]    WW = mean_i [c_i != y_i and R_i wrong]

    `pred_class` is (N,) labels or (N, C) scores (argmax); "R_i right" follows `rule` of
    `right_rationale`. Returns {"RR", "RW", "WR", "WW", "n", "truth"}: "truth" is `truth_level`, and
    a class-level truth adds "note" (`CLASS_LEVEL_NOTE`): report that instead of the grid.
    """
    pc = as_tensor(pred_class, "pred_class")
    tc = as_tensor(true_class, "true_class")
    check_ndim(tc, "true_class", (1,), "class labels of shape (N,)")
    check_nonempty(tc, "true_class")
    check_ndim(pc, "pred_class", (1, 2), "labels (N,) or scores (N, C)")
    check_len(pc, "pred_class", tc.shape[0], "true_class")
    if pc.ndim == 2:
        check_finite(pc, "pred_class")
        c = pc.shape[1]
        pc = pc.argmax(dim=1)
    else:
        if not is_integer(pc) and not bool((pc == pc.round()).all()):
            raise ConfigError("pred_class: expected integer labels (N,) or scores (N, C), got non-integral 1-D values")
        c = int(max(int(pc.max()), int(tc.max()))) + 1 if pc.numel() else 1
    pc = check_labels(pc, "pred_class", c)
    tc = check_labels(tc, "true_class", c)
    pr = as_tensor(pred_rationales, "pred_rationales")
    check_len(pr, "pred_rationales", tc.shape[0], "true_class")
    good_r = right_rationale(pr, true_rationales, rule=rule, k=k)
    good_c = pc == tc
    n = tc.shape[0]

    def frac(mask: torch.Tensor) -> float:
        return float(mask.sum()) / n

    level = truth_level(tc, check_binary(as_tensor(true_rationales, "true_rationales"), "true_rationales"))
    out: dict[str, float | int | str] = {
        "RR": frac(good_c & good_r),
        "RW": frac(good_c & ~good_r),
        "WR": frac(~good_c & good_r),
        "WW": frac(~good_c & ~good_r),
        "n": n,
        "truth": level,
    }
    if level == "class":
        out["note"] = CLASS_LEVEL_NOTE
    return out
