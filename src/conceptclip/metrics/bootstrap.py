"""Percentile bootstrap confidence intervals for any metric."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from conceptclip.errors import ConfigError
from conceptclip.metrics._validate import check_positive_int, shape_str


@dataclass
class BootstrapCI:
    """estimate: metric on the full data; [low, high]: percentile interval at `confidence`;
    samples (n_resamples,): the metric on each resample (NaN where undefined); n_valid: how
    many resamples gave a finite value (the interval uses only those)."""

    estimate: float
    low: float
    high: float
    confidence: float
    n_valid: int
    samples: torch.Tensor

    def as_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high,
                "confidence": self.confidence, "n_valid": self.n_valid}


def _scalar(value: Any) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.reshape(()))
    if isinstance(value, np.ndarray) and value.size == 1:
        return float(value.reshape(()))
    if isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
        return float(value)
    raise ConfigError(f"metric: expected it to return one number, got {type(value).__name__}")


def bootstrap_ci(
    metric: Callable[..., Any],
    *arrays: Any,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    **metric_kwargs: Any,
) -> BootstrapCI:
    """Percentile bootstrap (Efron) of `metric(*arrays, **metric_kwargs)`.

    Each resample draws N indices with replacement (seeded torch.Generator) and indexes every
    array along dim 0 with the same indices (paired resampling: scores stay with their labels).
    With alpha = 1 - confidence, the interval is the [alpha/2, 1 - alpha/2] quantiles (linear
    interpolation) of the finite resampled values; resamples where the metric is undefined
    (NaN, e.g. AUC of a resample with one class) are left out and counted in n_valid.
    Arrays keep their type (torch tensor or numpy array).
    """
    check_positive_int(n_resamples, "n_resamples")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence: expected a value in (0, 1), got {confidence!r}")
    if not arrays:
        raise ConfigError("arrays: expected at least one array to resample")
    lengths = []
    for i, a in enumerate(arrays):
        if not isinstance(a, (torch.Tensor, np.ndarray)) or a.ndim == 0:
            raise ConfigError(f"arrays[{i}]: expected a torch tensor or numpy array with a sample dim, got {type(a).__name__}")
        lengths.append(a.shape[0])
    n = lengths[0]
    if n == 0 or any(m != n for m in lengths):
        raise ConfigError(f"arrays: expected the same non-zero number of samples in each, got {shape_str(lengths)}")

    estimate = _scalar(metric(*arrays, **metric_kwargs))
    gen = torch.Generator().manual_seed(seed)
    samples = torch.empty(n_resamples, dtype=torch.float64)
    for r in range(n_resamples):
        idx = torch.randint(0, n, (n,), generator=gen)
        picked = [a[idx.to(a.device)] if isinstance(a, torch.Tensor) else a[idx.numpy()] for a in arrays]
        samples[r] = _scalar(metric(*picked, **metric_kwargs))
    valid = samples[torch.isfinite(samples)]
    alpha = 1.0 - confidence
    if valid.numel():
        q = torch.quantile(valid, torch.tensor([alpha / 2, 1 - alpha / 2], dtype=torch.float64))
        low, high = float(q[0]), float(q[1])
    else:
        low = high = float("nan")
    return BootstrapCI(estimate, low, high, confidence, int(valid.numel()), samples)
