"""Causal faithfulness of saliency maps: insertion and deletion curves and their AUC
(Petsiuk et al., RISE, 2018), batched over images.

Pixels are ranked by saliency, most salient first. Deletion replaces them, in that order, by a
canvas (zeros by default, as RISE) and watches the target probability fall; insertion reveals
them, in that order, on a blurred copy of the image and watches it rise. A faithful map gives a
high insertion AUC and a low deletion AUC.

The defaults are RISE's evaluation code (github.com/eclique/RISE, `evaluation.py` and
`Evaluation.ipynb`; the paper does not give them): the blur is `gkern(11, 5)` — scipy's
`gaussian_filter(sigma=5)` (reflect mode, truncate 4) of a centred impulse on an 11 x 11 grid,
applied per channel with zero padding, so borders darken; tied pixels go in the reverse of
raster order (RISE flips an ascending argsort); H steps of W pixels each (RISE: 224 px per step
on 224 x 224 images). Ours, as named options: `blur="sampled"` (a sampled, normalised Gaussian
with replicate padding, so a constant image stays constant) and `ties="raster"`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F

from conceptclip.errors import ConfigError
from conceptclip.metrics._validate import (
    ArrayLike,
    as_tensor,
    check_choice,
    check_finite,
    check_positive_int,
    shape_str,
)
from conceptclip.metrics.grounding import resize_maps

Model = Callable[[torch.Tensor], torch.Tensor]
Canvas = Literal["blur", "zero", "mean"]
Blur = Literal["rise", "sampled"]
Ties = Literal["rise", "raster"]


@dataclass
class PerturbationCurve:
    """fractions (S+1,): fraction of pixels inserted/deleted at each step (0 ... 1);
    scores (B, S+1): target probability at each step; auc (B,): trapezoid area under it."""

    fractions: torch.Tensor
    scores: torch.Tensor
    auc: torch.Tensor

    @property
    def mean_auc(self) -> float:
        return float(self.auc.mean())


def gaussian_kernel1d(kernel_size: int, sigma: float) -> torch.Tensor:
    """Sampled Gaussian g(x) ∝ exp(-x² / 2σ²), x = -r..r (r = kernel_size // 2), summing to 1."""
    check_positive_int(kernel_size, "blur_kernel")
    if kernel_size % 2 == 0:
        raise ConfigError(f"blur_kernel: expected an odd kernel size, got {kernel_size}")
    if not sigma > 0:
        raise ConfigError(f"blur_sigma: expected a positive sigma, got {sigma!r}")
    r = kernel_size // 2
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def rise_kernel1d(kernel_size: int, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """1-D factor of RISE's `gkern`: the response of scipy's `gaussian_filter1d` (weights
    exp(-x² / 2σ²), x = -R..R, R = int(truncate·σ + 0.5), normalised; mode "reflect", i.e.
    ... c b a | a b c ... | c b a ...) to an impulse at the centre of `kernel_size` samples. The 2-D
    kernel is its outer product with itself; it sums to 1."""
    check_positive_int(kernel_size, "blur_kernel")
    if kernel_size % 2 == 0:
        raise ConfigError(f"blur_kernel: expected an odd kernel size, got {kernel_size}")
    if not sigma > 0:
        raise ConfigError(f"blur_sigma: expected a positive sigma, got {sigma!r}")
    radius = int(truncate * float(sigma) + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * x**2 / float(sigma) ** 2)
    w = w / w.sum()
    n, centre = kernel_size, kernel_size // 2
    out = torch.zeros(n, dtype=torch.float64)
    for i in range(n):  # out[i] = sum_x w[x] * impulse[reflect(i + x)]
        j = (torch.arange(-radius, radius + 1) + i) % (2 * n)
        j = torch.where(j < n, j, 2 * n - 1 - j)
        out[i] = w[j == centre].sum()
    return out


def gaussian_blur(images: ArrayLike, kernel_size: int = 11, sigma: float = 5.0, *, blur: Blur = "rise") -> torch.Tensor:
    """Gaussian blur of images (B, C, H, W), each channel on its own, separably.

    `blur="rise"` (default): RISE's kernel (`rise_kernel1d`) with zero padding, as RISE's
    `conv2d(x, gkern(11, 5), padding=5)`. `blur="sampled"`: the sampled normalised Gaussian
    (`gaussian_kernel1d`) with replicate padding (so a constant image stays constant)."""
    check_choice(blur, "blur", ("rise", "sampled"))
    x = as_tensor(images, "images")
    if x.ndim != 4:
        raise ConfigError(f"images: expected shape (B, C, H, W), got {shape_str(x.shape)}")
    x = x if x.is_floating_point() else x.float()
    if blur == "rise":
        g = rise_kernel1d(kernel_size, sigma).to(x)
    else:
        g = gaussian_kernel1d(kernel_size, sigma).to(x)
    c, r = x.shape[1], kernel_size // 2
    x = F.pad(x, (r, r, r, r), mode="constant" if blur == "rise" else "replicate")
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, kernel_size), groups=c)
    return F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, kernel_size, 1), groups=c)


def _canvas(images: torch.Tensor, canvas: Canvas | ArrayLike, kernel: int, sigma: float, blur: Blur) -> torch.Tensor:
    if isinstance(canvas, str):
        check_choice(canvas, "canvas", ("blur", "zero", "mean"))
        if canvas == "blur":
            return gaussian_blur(images, kernel, sigma, blur=blur)
        if canvas == "zero":
            return torch.zeros_like(images)
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    c = as_tensor(canvas, "canvas").to(images)
    try:
        return c.expand_as(images)
    except RuntimeError:
        raise ConfigError(
            f"canvas: expected a shape broadcastable to images {shape_str(images.shape)}, got {shape_str(c.shape)}"
        ) from None


def perturbation_curve(
    model: Model,
    images: ArrayLike,
    saliency: ArrayLike,
    *,
    mode: Literal["insertion", "deletion"],
    n_steps: int | None = None,
    canvas: Canvas | ArrayLike = "blur",
    blur_kernel: int = 11,
    blur_sigma: float = 5.0,
    blur: Blur = "rise",
    ties: Ties = "rise",
) -> PerturbationCurve:
    """Insertion or deletion curve of each image, and its area.

    With pixels ordered by decreasing saliency (ties: "rise" = reverse raster order, RISE's
    flipped argsort; "raster" = raster order) and k_s = round(s·HW / S) for s = 0..S (S =
    `n_steps`, default H: W pixels a step, as RISE's 224 px on 224 x 224 images), step s
    shows the image with its top-k_s pixels taken from the image (insertion; rest from the
    canvas) or from the canvas (deletion; rest from the image); y_s = model(x_s) is the
    probability of the target. With x_s = k_s / HW:

        AUC = sum_{s=1}^{S} (x_s - x_{s-1}) (y_s + y_{s-1}) / 2     in [0, 1] for y in [0, 1]

    `model` maps a batch (B, C, H, W) to the target probabilities (B,), always receiving the
    B images in the given order (so it can look up each image's target by position); it is
    called S + 1 times under torch.no_grad(). `saliency` is (B, h, w) or (B, 1, h, w), resized
    bilinearly to (H, W). `canvas` is "blur" (Gaussian `blur` "rise" or "sampled", see
    `gaussian_blur`, with `blur_kernel`, `blur_sigma`), "zero", "mean" (per-image channel mean) or
    a tensor broadcastable to the images. With S = H (or S dividing HW) the defaults give exactly
    RISE's curve and AUC, (sum_s y_s - y_0 / 2 - y_S / 2) / S.
    """
    check_choice(mode, "mode", ("insertion", "deletion"))
    check_choice(ties, "ties", ("rise", "raster"))
    if n_steps is not None:
        check_positive_int(n_steps, "n_steps")
    x = as_tensor(images, "images")
    if x.ndim != 4 or x.numel() == 0:
        raise ConfigError(f"images: expected a non-empty batch of shape (B, C, H, W), got {shape_str(x.shape)}")
    x = x if x.is_floating_point() else x.float()
    check_finite(x, "images")
    b, _, h, w = x.shape
    s = as_tensor(saliency, "saliency").to(x.device)
    if s.ndim == 4 and s.shape[1] == 1:
        s = s[:, 0]
    if s.ndim != 3 or s.shape[0] != b:
        raise ConfigError(f"saliency: expected shape ({b}, h, w) or ({b}, 1, h, w), got {shape_str(s.shape)}")
    check_finite(s, "saliency")
    s = resize_maps(s, (h, w)).reshape(b, h * w)
    base = _canvas(x, canvas, blur_kernel, blur_sigma, blur)
    n_steps = h if n_steps is None else n_steps

    if ties == "rise":  # descending, ties last raster index first: a flipped stable ascending sort
        order = torch.argsort(s, dim=1, stable=True).flip(1)
    else:
        order = torch.argsort(s, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(h * w, device=x.device).expand(b, -1))
    ks = [(step * h * w + n_steps // 2) // n_steps for step in range(n_steps + 1)]
    ys = []
    with torch.no_grad():
        for k in ks:
            chosen = (rank < k).reshape(b, 1, h, w)
            batch = torch.where(chosen, x, base) if mode == "insertion" else torch.where(chosen, base, x)
            ys.append(_model_scores(model, batch, b))
    scores = torch.stack(ys, dim=1)
    fractions = torch.tensor(ks, dtype=torch.float64, device=scores.device) / (h * w)
    dx = fractions[1:] - fractions[:-1]
    area = (dx * (scores[:, 1:] + scores[:, :-1]) / 2).sum(dim=1)
    return PerturbationCurve(fractions=fractions, scores=scores, auc=area)


def _model_scores(model: Model, batch: torch.Tensor, b: int) -> torch.Tensor:
    out = model(batch)
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"model: expected it to return a tensor of shape ({b},), got {type(out).__name__}")
    if out.ndim == 2 and out.shape[1] == 1:
        out = out[:, 0]
    if out.shape != (b,):
        raise ConfigError(f"model: expected target probabilities of shape ({b},), got {shape_str(out.shape)}")
    check_finite(out, "model output")
    return out.detach().double()


def insertion_auc(
    model: Model,
    images: ArrayLike,
    saliency: ArrayLike,
    *,
    n_steps: int | None = None,
    canvas: Canvas | ArrayLike = "blur",
    blur_kernel: int = 11,
    blur_sigma: float = 5.0,
    blur: Blur = "rise",
    ties: Ties = "rise",
) -> PerturbationCurve:
    """Insertion curve onto a blurred canvas (default: RISE's) and its AUC; see
    `perturbation_curve`."""
    return perturbation_curve(
        model, images, saliency, mode="insertion", n_steps=n_steps, canvas=canvas,
        blur_kernel=blur_kernel, blur_sigma=blur_sigma, blur=blur, ties=ties,
    )


def deletion_auc(
    model: Model,
    images: ArrayLike,
    saliency: ArrayLike,
    *,
    n_steps: int | None = None,
    canvas: Canvas | ArrayLike = "zero",
    blur_kernel: int = 11,
    blur_sigma: float = 5.0,
    blur: Blur = "rise",
    ties: Ties = "rise",
) -> PerturbationCurve:
    """Deletion curve onto a zero canvas (default, as RISE; "blur" also works) and its AUC; see
    `perturbation_curve`."""
    return perturbation_curve(
        model, images, saliency, mode="deletion", n_steps=n_steps, canvas=canvas,
        blur_kernel=blur_kernel, blur_sigma=blur_sigma, blur=blur, ties=ties,
    )
