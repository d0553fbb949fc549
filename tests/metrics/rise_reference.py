"""An independent insertion/deletion implementation following RISE's evaluation code
(github.com/eclique/RISE, `evaluation.py`: `gkern`, `CausalMetric`, `auc`), written for the
agreement tests only — numpy and scipy, one image at a time, nothing from conceptclip:

* blur kernel: scipy.ndimage.gaussian_filter (defaults: mode "reflect", truncate 4) applied to an
  impulse at the centre of a klen x klen array, each channel blurred on its own, conv2d with zero
  padding klen // 2 (so image borders darken);
* pixel order: ``np.flip(np.argsort(saliency))`` — most salient first, and ties in the reverse of
  argsort's order (we use a stable argsort, so ties go last-raster-index first);
* `step` pixels change per step, n = ceil(HW / step) steps, and
  AUC = (sum(y) - y_0 / 2 - y_n / 2) / n.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


def rise_kernel(klen: int = 11, nsig: float = 5.0) -> np.ndarray:
    impulse = np.zeros((klen, klen))
    impulse[klen // 2, klen // 2] = 1
    return ndimage.gaussian_filter(impulse, nsig)


def rise_blur(img: np.ndarray, klen: int = 11, nsig: float = 5.0) -> np.ndarray:
    """img (C, H, W) -> blurred (C, H, W), RISE's substrate for insertion."""
    c = img.shape[0]
    kern = np.zeros((c, c, klen, klen))
    for i in range(c):
        kern[i, i] = rise_kernel(klen, nsig)
    x = torch.from_numpy(img[None].astype(np.float64))
    return F.conv2d(x, torch.from_numpy(kern), padding=klen // 2)[0].numpy()


def rise_curve(model, img: np.ndarray, saliency: np.ndarray, mode: str, step: int,
               substrate: np.ndarray) -> tuple[np.ndarray, float]:
    """One image (C, H, W), saliency (H, W); `model` maps (1, C, H, W) float64 tensors to a float
    (the target's probability). Returns (scores of the n + 1 steps, AUC)."""
    c, h, w = img.shape
    hw = h * w
    n = (hw + step - 1) // step
    if mode == "ins":
        start, finish = substrate.copy().reshape(c, hw), img.copy().reshape(c, hw)
    else:
        start, finish = img.copy().reshape(c, hw), substrate.copy().reshape(c, hw)
    order = np.flip(np.argsort(saliency.reshape(hw), kind="stable"))
    scores = np.empty(n + 1)
    for i in range(n + 1):
        scores[i] = model(torch.from_numpy(start.reshape(1, c, h, w).copy()))
        if i < n:
            coords = order[step * i: step * (i + 1)]
            start[:, coords] = finish[:, coords]
    auc = (scores.sum() - scores[0] / 2 - scores[-1] / 2) / (scores.shape[0] - 1)
    return scores, float(auc)
