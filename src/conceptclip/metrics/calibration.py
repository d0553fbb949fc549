"""Calibration: expected calibration error (ECE) with equal-width confidence bins."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from conceptclip.metrics._tasks import prepare_scores, safe_div
from conceptclip.metrics._validate import (
    ArrayLike,
    check_choice,
    check_positive_int,
    check_probabilities,
    nanmean,
)


@dataclass
class ReliabilityBins:
    """Per-bin statistics of a reliability diagram, each (C, n_bins) (C = 1 for multi-class).

    count: samples in the bin; confidence: mean confidence in it; accuracy: mean correctness
    (fraction of positives for binary/multi-label); NaN for empty bins. `edges` (n_bins + 1,).
    """

    count: torch.Tensor
    confidence: torch.Tensor
    accuracy: torch.Tensor
    edges: torch.Tensor


def bin_index(conf: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Equal-width bin of each confidence: bin b covers (b/M, (b+1)/M], and 0 falls in bin 0."""
    return (torch.ceil(conf * n_bins).long() - 1).clamp(0, n_bins - 1)


def reliability_bins(probs: ArrayLike, targets: ArrayLike, *, n_bins: int = 15) -> ReliabilityBins:
    """Bin confidences into `n_bins` equal-width bins of [0, 1] and average each bin.

    Multi-class probs (N, C) + labels (N,): confidence = max_c p_ic, correct = [argmax == y].
    Binary probs (N,) / multi-label (N, C): per label, confidence = p_ic (the probability of
    the positive) and correctness = y_ic, i.e. the reliability of p as a probability.
    """
    check_positive_int(n_bins, "n_bins")
    s = prepare_scores(probs, targets)
    check_probabilities(s.scores, "probs")
    if s.task == "multiclass":
        conf, pred = s.scores.max(dim=1)
        conf, hit = conf[:, None], (pred == s.labels).double()[:, None]
    else:
        conf, hit = s.scores, s.truth.double()
    n, c = conf.shape
    flat = (torch.arange(c)[None, :] * n_bins + bin_index(conf, n_bins)).reshape(-1)
    size = c * n_bins

    def total(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(size, dtype=torch.float64).index_add_(0, flat, values.reshape(-1)).reshape(c, n_bins)

    count = total(torch.ones_like(conf))
    return ReliabilityBins(
        count=count,
        confidence=safe_div(total(conf), count),
        accuracy=safe_div(total(hit), count),
        edges=torch.linspace(0, 1, n_bins + 1, dtype=torch.float64),
    )


def expected_calibration_error(
    probs: ArrayLike,
    targets: ArrayLike,
    *,
    n_bins: int = 15,
    average: Literal["macro", "none"] = "macro",
) -> float | torch.Tensor:
    """Expected calibration error (Guo et al., 2017) with M = `n_bins` equal-width bins:

        ECE = sum_{b=1}^{M} (|B_b| / N) * |acc(B_b) - conf(B_b)|

    where B_b holds the samples whose confidence lies in ((b-1)/M, b/M]. Multi-class uses the
    max probability and argmax correctness (one value); binary / multi-label compute it per
    label on the positive probability (macro mean, or per label with average="none").
    """
    check_choice(average, "average", ("macro", "none"))
    bins = reliability_bins(probs, targets, n_bins=n_bins)
    n = bins.count.sum(dim=1)
    gap = torch.nan_to_num((bins.accuracy - bins.confidence).abs(), nan=0.0)
    per_label = (bins.count * gap).sum(dim=1) / n
    return nanmean(per_label) if average == "macro" else per_label
