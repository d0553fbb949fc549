"""Input checks shared by the metrics: convert array-likes to tensors and fail with a one-line
`ConfigError` that names the argument, instead of a deep torch stack trace."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from conceptclip.errors import ConfigError

ArrayLike = Any  # torch.Tensor | np.ndarray | nested sequences of numbers


def as_tensor(x: ArrayLike, name: str, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`x` as a detached tensor (numpy arrays and lists accepted); optional dtype cast."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    elif isinstance(x, (np.ndarray, list, tuple, int, float, bool, np.generic)):
        try:
            t = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{name}: expected a numeric array, got {type(x).__name__} ({exc})") from None
    else:
        raise ConfigError(f"{name}: expected a torch tensor or numpy array, got {type(x).__name__}")
    if t.dtype == torch.bool and dtype is None:
        return t
    if not (t.is_floating_point() or t.dtype in _INT_DTYPES or t.dtype == torch.bool):
        raise ConfigError(f"{name}: expected a real-valued array, got dtype {t.dtype}")
    return t.to(dtype) if dtype is not None else t


_INT_DTYPES = {torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64}


def is_integer(t: torch.Tensor) -> bool:
    """True for integer and bool tensors (hard decisions / labels rather than scores)."""
    return t.dtype in _INT_DTYPES or t.dtype == torch.bool


def shape_str(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def check_ndim(t: torch.Tensor, name: str, ndims: Sequence[int], what: str) -> None:
    if t.ndim not in ndims:
        raise ConfigError(f"{name}: expected {what}, got shape {shape_str(t.shape)}")


def check_same_shape(a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str) -> None:
    if a.shape != b.shape:
        raise ConfigError(
            f"{b_name}: expected shape {shape_str(a.shape)} to match {a_name}, got {shape_str(b.shape)}"
        )


def check_len(t: torch.Tensor, name: str, n: int, ref_name: str) -> None:
    if t.ndim == 0 or t.shape[0] != n:
        raise ConfigError(
            f"{name}: expected {n} rows to match {ref_name}, got shape {shape_str(t.shape)}"
        )


def check_finite(t: torch.Tensor, name: str) -> None:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ConfigError(f"{name}: expected finite values, found NaN or inf")


def check_nonempty(t: torch.Tensor, name: str) -> None:
    if t.numel() == 0:
        raise ConfigError(f"{name}: expected at least one element, got shape {shape_str(t.shape)}")


def check_binary(t: torch.Tensor, name: str) -> torch.Tensor:
    """`t` as a bool tensor; raises unless every value is 0 or 1."""
    if t.dtype == torch.bool:
        return t
    if not bool(((t == 0) | (t == 1)).all()):
        raise ConfigError(f"{name}: expected binary values 0/1")
    return t != 0


def check_labels(t: torch.Tensor, name: str, num_classes: int) -> torch.Tensor:
    """`t` as an int64 label tensor; raises unless integral and within [0, num_classes)."""
    if t.is_floating_point():
        if not bool((t == t.round()).all()):
            raise ConfigError(f"{name}: expected integer class labels, got non-integral values")
    t = t.long()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise ConfigError(
            f"{name}: expected class labels in [0, {num_classes}), got range "
            f"[{int(t.min())}, {int(t.max())}]"
        )
    return t


def check_probabilities(t: torch.Tensor, name: str) -> None:
    check_finite(t, name)
    if t.numel() and (float(t.min()) < 0.0 or float(t.max()) > 1.0):
        raise ConfigError(f"{name}: expected probabilities in [0, 1], got range [{float(t.min()):.4g}, {float(t.max()):.4g}]")


def check_positive_int(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name}: expected a positive integer, got {value!r}")


def check_fraction(value: float, name: str, *, open_low: bool = True) -> None:
    low_ok = value > 0 if open_low else value >= 0
    if not (low_ok and value <= 1):
        bound = "(0, 1]" if open_low else "[0, 1]"
        raise ConfigError(f"{name}: expected a value in {bound}, got {value!r}")


def check_choice(value: Any, name: str, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}: expected one of {list(choices)}, got {value!r}")


def nanmean(t: torch.Tensor) -> float:
    """Mean over the defined (non-NaN) entries; NaN when none is defined (no warning)."""
    valid = ~torch.isnan(t)
    if not bool(valid.any()):
        return float("nan")
    return float(t[valid].mean())
