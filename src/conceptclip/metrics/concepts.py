"""Concept-explanation metrics of DEAL (Sec. 4.2): disentanglability of concept maps (in [0, 1]),
localisability (normalised insertion AUC of a concept's own score), the concept-averaged prediction
accuracy of Eq. 6; and part mIoU of thresholded concept maps and the per-slot concept accuracy (ours)."""

from __future__ import annotations

from typing import Literal

import torch

from conceptclip.errors import ConfigError
from conceptclip.metrics._tasks import safe_div
from conceptclip.metrics._validate import (
    ArrayLike,
    as_tensor,
    check_binary,
    check_choice,
    check_finite,
    check_labels,
    check_nonempty,
    is_integer,
    nanmean,
    shape_str,
)
from conceptclip.metrics.faithfulness import Canvas, Model, PerturbationCurve, insertion_auc
from conceptclip.metrics.grounding import align, binarize_maps


def disentanglability(
    maps: ArrayLike, *, reduction: Literal["mean", "none"] = "mean"
) -> float | torch.Tensor:
    """DEAL's disentanglability: -R_disen (Eq. 3) normalised to [0, 1] (Sec. 4.2), per image.

    Maps (..., K, H, W) are clipped at 0 (negative evidence dropped, as Grad-CAM's ReLU) and
    normalised to sum 1, p_k = relu(m_k) / sum relu(m_k), so that ||p_j - p_k||_1 <= 2 and

        D = 1 / (2 K (K - 1)) * sum_k sum_{j != k} ||p_j - p_k||_1      in [0, 1]

    0 means identical maps, 1 means maps with disjoint support (perfectly disentangled).
    A map that is zero everywhere has no distribution: its pairs are NaN and skipped; an image
    with no defined pair is NaN. reduction="none" returns one value per image (...,).
    """
    check_choice(reduction, "reduction", ("mean", "none"))
    m = as_tensor(maps, "maps")
    if m.ndim < 3 or m.shape[-3] < 2:
        raise ConfigError(f"maps: expected shape (..., K, H, W) with K >= 2 concepts, got {shape_str(m.shape)}")
    check_nonempty(m, "maps")
    check_finite(m, "maps")
    m = m.double().clamp_min(0)
    lead, k = m.shape[:-3], m.shape[-3]
    flat = m.reshape(-1, k, m.shape[-2] * m.shape[-1])
    total = flat.sum(dim=-1, keepdim=True)
    p = flat / total.clamp_min(1e-300)
    dist = torch.cdist(p, p, p=1)  # (B, K, K)
    defined = (total > 0)[..., 0]
    pair_ok = defined[:, :, None] & defined[:, None, :]
    j, i = torch.triu_indices(k, k, offset=1)
    d = dist[:, j, i]
    ok = pair_ok[:, j, i]
    per_image = safe_div((d * ok).sum(dim=1), 2 * ok.sum(dim=1).double()).reshape(lead)
    return nanmean(per_image) if reduction == "mean" else per_image


def localisability(
    score: Model,
    images: ArrayLike,
    saliency: ArrayLike,
    *,
    n_steps: int = 100,
    canvas: Canvas | ArrayLike = "blur",
    blur_kernel: int = 11,
    blur_sigma: float = 5.0,
    blur: str = "rise",
    ties: str = "rise",
) -> PerturbationCurve:
    """DEAL's localisability (Sec. 4.2): the insertion curve of a concept's own predictive score,
    normalised to [0, 1], and its area.

    `score` maps images (B, C, H, W) to the concept's score (B,) (e.g. cos(f(x), t_k)); pixels are
    inserted in the order of `saliency` onto a blurred canvas (`insertion_auc`). With y_0 the score
    on the canvas and y_S on the full image, each step is normalised as in the reference code
    (tangli-udel/DEAL, exp_localizability.ipynb):  y'_s = clip(|y_s - y_0| / |y_S - y_0|, 0, 1);
    auc = trapezoid area of y' (NaN where y_S = y_0). `blur`/`ties`: the canvas and tie order of
    `insertion_auc` (default RISE's; "sampled"/"raster" is the earlier canvas)."""
    curve = insertion_auc(score, images, saliency, n_steps=n_steps, canvas=canvas, blur_kernel=blur_kernel,
                          blur_sigma=blur_sigma, blur=blur, ties=ties)
    y = curve.scores
    span = (y[:, -1:] - y[:, :1]).abs()
    norm = ((y - y[:, :1]).abs() / span.where(span > 0, torch.full_like(span, float("nan")))).clamp(0, 1)
    dx = curve.fractions[1:] - curve.fractions[:-1]
    return PerturbationCurve(curve.fractions, norm, (dx * (norm[:, 1:] + norm[:, :-1]) / 2).sum(dim=1))


def concept_prediction_accuracy(
    scores: ArrayLike, targets: ArrayLike, mask: ArrayLike | None = None
) -> float:
    """DEAL's prediction accuracy (Eq. 6): class c scores s(I, c) = (1/K_c) sum_k sim(I, C_{c,k}),
    the mean similarity over its real concepts; accuracy of argmax_c s(I, c).

    scores (N, C, K): similarity of image n with concept k of class c; mask (C, K) marks real
    concepts (default all); targets (N,) class labels."""
    s = as_tensor(scores, "scores")
    if s.ndim != 3 or s.numel() == 0:
        raise ConfigError(f"scores: expected shape (N, C, K), got {shape_str(s.shape)}")
    check_finite(s, "scores")
    m = torch.ones(s.shape[1:], dtype=torch.bool) if mask is None else as_tensor(mask, "mask").bool()
    if tuple(m.shape) != tuple(s.shape[1:]):
        raise ConfigError(f"mask: expected shape {shape_str(s.shape[1:])} (C, K), got {shape_str(m.shape)}")
    y = check_labels(as_tensor(targets, "targets"), "targets", s.shape[1])
    if y.shape != (s.shape[0],):
        raise ConfigError(f"targets: expected shape ({s.shape[0]},), got {shape_str(y.shape)}")
    w = m.to(s.device).double()
    class_scores = (s.double() * w).sum(-1) / w.sum(-1).clamp_min(1.0)
    return float((class_scores.argmax(1) == y.to(s.device)).double().mean())


def part_miou(
    maps: ArrayLike,
    part_masks: ArrayLike,
    *,
    threshold: float | None = None,
    top_fraction: float | None = None,
    normalize: bool = True,
    valid: ArrayLike | None = None,
    mode: Literal["dataset", "sample"] = "dataset",
    average: Literal["macro", "none"] = "macro",
) -> float | torch.Tensor:
    """Part mIoU: concept map k of image n, thresholded (`binarize_maps`), against the mask of
    the part that concept k names.

    maps (N, K, h, w) are resized bilinearly to part_masks (N, K, H, W). With I_nk, U_nk the
    pixel intersection and union, over the images n where part k is `valid` (default all):

        mode="dataset":  IoU_k = sum_n I_nk / sum_n U_nk     (semantic-segmentation convention)
        mode="sample":   IoU_k = mean_n I_nk / U_nk          (images with U_nk = 0 skipped)
        mIoU = mean_k IoU_k                                  (over parts where IoU_k is defined)
    """
    check_choice(mode, "mode", ("dataset", "sample"))
    check_choice(average, "average", ("macro", "none"))
    m, t = align(maps, part_masks)
    if m.ndim != 4:
        raise ConfigError(f"maps: expected shape (N, K, h, w) matching part_masks (N, K, H, W), got {shape_str(m.shape)}")
    pred = binarize_maps(m, threshold=threshold, top_fraction=top_fraction, normalize=normalize)
    inter = (pred & t).sum(dim=(-2, -1)).double()
    union = (pred | t).sum(dim=(-2, -1)).double()
    if valid is None:
        keep = torch.ones_like(inter, dtype=torch.bool)
    else:
        v = as_tensor(valid, "valid")
        if v.shape != inter.shape:
            raise ConfigError(f"valid: expected shape {shape_str(inter.shape)} (N, K), got {shape_str(v.shape)}")
        keep = check_binary(v, "valid").to(inter.device)
    if mode == "dataset":
        per_part = safe_div((inter * keep).sum(0), (union * keep).sum(0))
    else:
        iou = safe_div(inter, union)
        iou = torch.where(keep, iou, torch.full_like(iou, float("nan")))
        ok = ~torch.isnan(iou)
        per_part = safe_div(torch.nan_to_num(iou, nan=0.0).sum(0), ok.sum(0).double())
    return nanmean(per_part) if average == "macro" else per_part


def concept_slot_accuracy(
    predictions: ArrayLike,
    targets: ArrayLike,
    *,
    threshold: float = 0.5,
    average: Literal["macro", "none"] = "macro",
) -> float | torch.Tensor:
    """Per-slot concept accuracy (ours, not DEAL's Eq. 6): accuracy of each concept slot k, averaged:

        acc_k = mean_n [pred_nk == y_nk],     result = mean_k acc_k

    predictions: (N, K) integer labels, (N, K, C) scores (argmax over C), or (N, K) float
    scores thresholded at `threshold` (concept presence). targets: (N, K), or (N,) class
    labels shared by every concept (e.g. the class each concept-level prompt predicts).
    """
    check_choice(average, "average", ("macro", "none"))
    p = as_tensor(predictions, "predictions")
    y = as_tensor(targets, "targets")
    if p.ndim not in (2, 3) or p.numel() == 0:
        raise ConfigError(f"predictions: expected shape (N, K) or (N, K, C), got {shape_str(p.shape)}")
    check_finite(p, "predictions")
    n, k = p.shape[:2]
    if y.ndim == 1 and y.shape[0] == n:
        y = y[:, None].expand(n, k)
    if tuple(y.shape) != (n, k):
        raise ConfigError(f"targets: expected shape ({n},) or ({n}, {k}) to match predictions, got {shape_str(y.shape)}")
    if p.ndim == 3:
        pred = p.argmax(dim=2)
        y = check_labels(y, "targets", p.shape[2])
    elif is_integer(p):
        pred = p.long()
        y = check_labels(y, "targets", 2**62)
    else:
        pred = (p >= threshold).long()
        y = check_binary(y, "targets").long()
    per_concept = (pred == y.to(pred.device)).double().mean(dim=0)
    return float(per_concept.mean()) if average == "macro" else per_concept
