"""Insertion/deletion AUC with a toy model whose output is the mean of a region, so every
curve value is countable by hand; Gaussian blur against scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from conceptclip.errors import ConfigError
from conceptclip.metrics import deletion_auc, gaussian_blur, insertion_auc, perturbation_curve
from conceptclip.metrics.faithfulness import gaussian_kernel1d


def region_mean(x: torch.Tensor) -> torch.Tensor:
    """Toy 'probability of the target': mean of channel 0 over the top-left 2x2 region R."""
    return x[:, 0, :2, :2].mean(dim=(1, 2))


IN_R = torch.zeros(4, 4)
IN_R[:2, :2] = 1
IMAGES = torch.ones(2, 3, 4, 4)
# image 0: R is the most salient ; image 1: R is the least salient
SALIENCY = torch.stack([IN_R + 0.01 * torch.arange(16.0).reshape(4, 4).flip(0), 1 - IN_R])


def test_deletion_zero_canvas_hand():
    # 16 px, 4 steps: k = 0, 4, 8, 12, 16 pixels deleted (x = 0, .25, .5, .75, 1)
    # image 0 deletes R first: y = 1, 0, 0, 0, 0 -> AUC = .25 * (1 + 0) / 2 = .125
    # image 1 deletes R last:  y = 1, 1, 1, 1, 0 -> AUC = .25 * (1 + 1 + 1 + .5) = .875
    res = deletion_auc(region_mean, IMAGES, SALIENCY, n_steps=4)
    assert res.fractions.tolist() == pytest.approx([0, 0.25, 0.5, 0.75, 1])
    assert res.scores.tolist() == [[1, 0, 0, 0, 0], [1, 1, 1, 1, 0]]
    assert res.auc.tolist() == pytest.approx([0.125, 0.875])
    assert res.mean_auc == pytest.approx(0.5)
    # 8 steps: y0 = 1, .5, 0, ... -> .125 * (.75 + .25) = .125 (same area, finer curve)
    assert deletion_auc(region_mean, IMAGES, SALIENCY, n_steps=8).auc[0] == pytest.approx(0.125)


def test_uneven_steps_use_the_true_pixel_fractions():
    # 3 steps of 16 px: k = round(s * 16 / 3) = 0, 5, 11, 16 -> x = 0, 5/16, 11/16, 1
    # image 0 deletion: y = 1, 0, 0, 0 -> AUC = (5/16) * (1 + 0) / 2 = 5/32
    res = deletion_auc(region_mean, IMAGES, SALIENCY, n_steps=3)
    assert res.fractions.tolist() == pytest.approx([0, 5 / 16, 11 / 16, 1])
    assert res.auc[0] == pytest.approx(5 / 32)


def test_insertion_zero_and_constant_canvas_hand():
    # insertion on zeros, R first: y = 0, 1, 1, 1, 1 -> .25 * (.5 + 1 + 1 + 1) = .875 ; R last: y = 0,0,0,0,1 -> .125
    res = insertion_auc(region_mean, IMAGES, SALIENCY, n_steps=4, canvas="zero")
    assert res.auc.tolist() == pytest.approx([0.875, 0.125])
    # on a constant 0.5 canvas, R first: y = .5, 1, 1, 1, 1 -> .25 * (.75 + 1 + 1 + 1) = .9375
    res = insertion_auc(region_mean, IMAGES, SALIENCY, n_steps=4, canvas=torch.tensor(0.5))
    assert res.auc[0] == pytest.approx(0.9375)


def test_insertion_blurred_canvas_against_scipy_blur():
    # image = indicator of R on 8x8 ; canvas = its Gaussian blur (kernel 11, sigma 5)
    # inserting R first: y_0 = b = mean of the blurred image over R, then 1 once R (4 px) is in
    # 16 steps of 4 px: y = b, 1, ..., 1 -> AUC = (1/16)(b + 1)/2 + 15/16
    img = torch.zeros(1, 1, 8, 8)
    img[0, 0, :2, :2] = 1
    blurred = ndimage.gaussian_filter(img[0, 0].numpy().astype(np.float64), sigma=5, truncate=1.0, mode="nearest")
    b = blurred[:2, :2].mean()
    sal = img[:, 0] + 0.001 * torch.rand(1, 8, 8)
    res = insertion_auc(region_mean, img, sal, n_steps=16, blur="sampled")
    assert res.scores[0, 0] == pytest.approx(b, abs=1e-6)
    assert res.auc[0] == pytest.approx((b + 1) / 32 + 15 / 16, abs=1e-6)


def test_low_resolution_saliency_is_upsampled():
    # 2x2 saliency [[1,0],[0,0]] -> 4x4 bilinear: top-left 2x2 holds the 4 largest values
    # (1, .75, .75, .5625), so R is deleted first exactly as for image 0 above
    sal = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    res = deletion_auc(region_mean, IMAGES[:1], sal, n_steps=4)
    assert res.auc[0] == pytest.approx(0.125)


def test_batched_equals_per_image():
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(3, 3, 6, 6, generator=g)
    sal = torch.rand(3, 3, 3, generator=g)
    batched = insertion_auc(region_mean, imgs, sal, n_steps=9, blur_kernel=3, blur_sigma=1.0)
    for i in range(3):
        single = insertion_auc(region_mean, imgs[i : i + 1], sal[i : i + 1], n_steps=9, blur_kernel=3, blur_sigma=1.0)
        assert single.scores[0].tolist() == pytest.approx(batched.scores[i].tolist())
    assert bool(((batched.auc >= 0) & (batched.auc <= 1)).all())


def test_gaussian_kernel_and_blur():
    # kernel 3, sigma 1: [e^-.5, 1, e^-.5] / (1 + 2 e^-.5) = [.27407, .45186, .27407]
    e = math.exp(-0.5)
    assert gaussian_kernel1d(3, 1.0).tolist() == pytest.approx([e / (1 + 2 * e), 1 / (1 + 2 * e), e / (1 + 2 * e)])
    g = gaussian_kernel1d(3, 1.0)
    delta = torch.zeros(1, 1, 7, 7)
    delta[0, 0, 3, 3] = 1
    out = gaussian_blur(delta, 3, 1.0, blur="sampled")[0, 0]
    assert out[2:5, 2:5].double() == pytest.approx(torch.outer(g, g), abs=1e-7)
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-6)
    const = torch.full((2, 3, 5, 5), 0.3)
    assert torch.allclose(gaussian_blur(const, blur="sampled"), const)  # replicate padding keeps constants
    rnd = torch.rand(1, 2, 9, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for c in range(2):
        ref = ndimage.gaussian_filter(rnd[0, c].numpy(), sigma=5, truncate=1.0, mode="nearest")
        assert np.allclose(gaussian_blur(rnd, blur="sampled")[0, c].numpy(), ref)


def test_faithfulness_bad_inputs():
    with pytest.raises(ConfigError, match="saliency"):
        deletion_auc(region_mean, IMAGES, SALIENCY[:1])
    with pytest.raises(ConfigError, match="model"):
        deletion_auc(lambda x: x.mean(dim=(2, 3)), IMAGES, SALIENCY)  # (B, C) instead of (B,)
    with pytest.raises(ConfigError, match="images"):
        deletion_auc(region_mean, IMAGES[0], SALIENCY)
    with pytest.raises(ConfigError, match="n_steps"):
        deletion_auc(region_mean, IMAGES, SALIENCY, n_steps=0)
    with pytest.raises(ConfigError, match="blur_kernel"):
        insertion_auc(region_mean, IMAGES, SALIENCY, blur_kernel=4)
    with pytest.raises(ConfigError, match="mode"):
        perturbation_curve(region_mean, IMAGES, SALIENCY, mode="both")
    with pytest.raises(ConfigError, match="canvas"):
        insertion_auc(region_mean, IMAGES, SALIENCY, canvas=torch.zeros(5, 3, 4, 4))
