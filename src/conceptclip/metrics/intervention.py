"""Intervention faithfulness: how much a prediction depends on a concept, measured by the
change in the target's probability and the prediction flips when the concept is removed or
replaced in the prompts (XCoOp's knowledge intervention)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from conceptclip.errors import ConfigError
from conceptclip.metrics._validate import (
    ArrayLike,
    as_tensor,
    check_choice,
    check_finite,
    check_labels,
    check_len,
    check_probabilities,
    shape_str,
)

Activation = Literal["softmax", "sigmoid", "none"]


@dataclass
class InterventionEffect:
    """Per sample (N,): target index, its probability before and after, delta = after - before,
    and whether the prediction flipped."""

    target: torch.Tensor
    p_before: torch.Tensor
    p_after: torch.Tensor
    delta: torch.Tensor
    flipped: torch.Tensor

    def summary(self) -> dict[str, float]:
        """{"mean_delta", "mean_abs_delta", "flip_rate", "n"}."""
        return {
            "mean_delta": float(self.delta.mean()),
            "mean_abs_delta": float(self.delta.abs().mean()),
            "flip_rate": float(self.flipped.double().mean()),
            "n": int(self.delta.shape[0]),
        }


def _probs(x: torch.Tensor, activation: Activation, name: str) -> torch.Tensor:
    if activation == "softmax":
        return x.softmax(dim=1)
    if activation == "sigmoid":
        return x.sigmoid()
    check_probabilities(x, name)
    return x


def intervention_effect(
    logits_before: ArrayLike,
    logits_after: ArrayLike,
    targets: ArrayLike | None = None,
    *,
    activation: Activation = "softmax",
) -> InterventionEffect:
    """Change caused by an intervention on a concept, per sample.

    With p = activation(logits) (N, C) and target t_i (`targets`, default the class predicted
    before the intervention, argmax_c p_before_ic):

        delta_i = p_after_{i,t_i} - p_before_{i,t_i}
        softmax / none (multi-class):  flipped_i = [argmax_c p_before_ic != argmax_c p_after_ic]
        sigmoid (multi-label):         flipped_i = [(p_before_{i,t_i} >= 0.5) != (p_after_{i,t_i} >= 0.5)]

    activation="none" takes probabilities as given.
    """
    check_choice(activation, "activation", ("softmax", "sigmoid", "none"))
    b = as_tensor(logits_before, "logits_before")
    a = as_tensor(logits_after, "logits_after")
    if b.ndim != 2 or b.numel() == 0:
        raise ConfigError(f"logits_before: expected a non-empty (N, C) array, got {shape_str(b.shape)}")
    if a.shape != b.shape:
        raise ConfigError(f"logits_after: expected shape {shape_str(b.shape)} to match logits_before, got {shape_str(a.shape)}")
    check_finite(b, "logits_before")
    check_finite(a, "logits_after")
    pb = _probs(b.double(), activation, "logits_before")
    pa = _probs(a.double().to(b.device), activation, "logits_after")
    if targets is None:
        t = pb.argmax(dim=1)
    else:
        t = as_tensor(targets, "targets")
        if t.ndim != 1:
            raise ConfigError(f"targets: expected shape ({b.shape[0]},), got {shape_str(t.shape)}")
        check_len(t, "targets", b.shape[0], "logits_before")
        t = check_labels(t, "targets", b.shape[1]).to(b.device)
    before = pb.gather(1, t[:, None])[:, 0]
    after = pa.gather(1, t[:, None])[:, 0]
    if activation == "sigmoid":
        flipped = (before >= 0.5) != (after >= 0.5)
    else:
        flipped = pb.argmax(dim=1) != pa.argmax(dim=1)
    return InterventionEffect(t, before, after, after - before, flipped)


def intervention_summary(
    logits_before: ArrayLike,
    logits_after: ArrayLike,
    targets: ArrayLike | None = None,
    *,
    activation: Activation = "softmax",
) -> dict[str, float]:
    """`intervention_effect(...).summary()`: mean change of the target probability, its mean
    absolute value and the prediction flip rate."""
    return intervention_effect(logits_before, logits_after, targets, activation=activation).summary()
