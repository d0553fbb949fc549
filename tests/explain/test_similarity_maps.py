"""Similarity maps, concept scores (plain and MONET-style) and the map helpers, on hand-computed
values, plus the tiny-clip patch tokens of a prompt method."""

from __future__ import annotations

import math

import pytest
import torch

from conceptclip.backbones.base import ImageFeatures
from conceptclip.errors import ConfigError
from conceptclip.explain import (
    center_crop_geometry,
    center_gaussian_maps,
    concept_scores,
    method_similarity_maps,
    normalize_maps,
    random_maps,
    similarity_maps,
    top_concepts,
    upsample_maps,
)
from conceptclip.metrics import resize_maps

R = 1 / math.sqrt(2)


def test_similarity_maps_hand_computed():
    # patches on a 2x2 grid: (1,0) (0,1) / (1,1) (-1,0); texts (1,0) and (0,2)
    patches = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]]])
    text = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    maps = similarity_maps(patches, text, grid=(2, 2))
    assert maps.shape == (1, 2, 2, 2)
    assert torch.allclose(maps[0, 0], torch.tensor([[1.0, 0.0], [R, -1.0]]))
    assert torch.allclose(maps[0, 1], torch.tensor([[0.0, 1.0], [R, 0.0]]))
    feats = ImageFeatures(global_=patches.mean(1), patches=patches, grid=(2, 2))
    assert torch.equal(similarity_maps(feats, text), maps)


def test_similarity_maps_reject_bad_input():
    with pytest.raises(ConfigError, match="no patch tokens"):
        similarity_maps(ImageFeatures(global_=torch.zeros(1, 2)), torch.zeros(1, 2))
    with pytest.raises(ConfigError, match="does not hold"):
        similarity_maps(torch.zeros(1, 4, 2), torch.ones(1, 2), grid=(3, 3))
    with pytest.raises(ConfigError, match="width 3"):
        similarity_maps(torch.zeros(1, 4, 2), torch.ones(1, 3), grid=(2, 2))


def test_prompt_similarity_maps_of_a_method(tiny_clip, tiny_coop, pixels):
    maps = method_similarity_maps(tiny_coop, pixels)
    feats = tiny_clip.encode_image(pixels, patches=True)
    text = tiny_coop.text_features().detach()
    # patch (row 1, col 2) = token 1 * 4 + 2 = 6 of image 3 against class 2
    expected = torch.nn.functional.cosine_similarity(feats.patches[3, 6], text[2], dim=0)
    assert maps.shape == (4, 3, 4, 4)
    assert torch.allclose(maps[3, 2, 1, 2], expected, atol=1e-6)


def test_concept_scores_cosine_and_monet():
    x = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    concepts = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    assert torch.allclose(concept_scores(x, concepts), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    # reference (1, 1): r = 1/sqrt2 = 0.70711 for both images; scale 10:
    # image 0: sigmoid(10 (1 - 0.70711)) = sigmoid(2.9289) = 0.94926; sigmoid(-7.0711) = 0.000848
    ref = torch.tensor([1.0, 1.0])
    s = concept_scores(x, concepts, ref, scale=10.0)
    assert torch.allclose(s, torch.tensor([[0.94926, 0.000848], [0.000848, 0.94926]]), atol=1e-5)
    # the two-way softmax form of MONET gives the same numbers
    sm = torch.softmax(torch.tensor([10.0, 10 * R]), dim=0)[0]
    assert abs(float(s[0, 0]) - float(sm)) < 1e-6


def test_concept_scores_average_prompt_ensembles():
    x = torch.tensor([[1.0, 0.0]])
    concepts = torch.tensor([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 1.0], [0.0, 2.0]]])  # (K=2, P=2, D)
    # concept 0: mean(1, 1/sqrt2) = 0.85355; concept 1: mean(0, 0) = 0
    assert torch.allclose(concept_scores(x, concepts), torch.tensor([[(1 + R) / 2, 0.0]]))
    with pytest.raises(ConfigError, match="concept features"):
        concept_scores(x, torch.zeros(2, 3))
    assert top_concepts(torch.tensor([[0.25, 0.75, 0.5]]), ["a", "b", "c"], k=2) == [[("b", 0.75), ("c", 0.5)]]


def test_upsample_matches_metrics_resize_and_keeps_gradients():
    maps = torch.rand(2, 3, 4, 4, requires_grad=True)
    up = upsample_maps(maps, 9)
    assert up.shape == (2, 3, 9, 9)
    assert torch.allclose(up, resize_maps(maps.detach(), (9, 9)))
    up.sum().backward()
    assert maps.grad is not None and maps.grad.abs().sum() > 0


def test_normalize_and_baselines():
    m = torch.tensor([[[2.0, 4.0], [6.0, 10.0]], [[3.0, 3.0], [3.0, 3.0]]])
    assert torch.allclose(normalize_maps(m), torch.tensor([[[0.0, 0.25], [0.5, 1.0]], [[0.0, 0.0], [0.0, 0.0]]]))
    g = center_gaussian_maps(2, 5, sigma=0.25)
    # centre pixel 1; pixel (2, 4): x = (4.5 - 2.5) / 5 = 0.4 -> exp(-0.16 / 0.125) = exp(-1.28) = 0.27804
    assert g.shape == (2, 5, 5) and float(g[0, 2, 2]) == 1.0
    assert abs(float(g[1, 2, 4]) - 0.27804) < 1e-5
    assert torch.equal(random_maps(3, 7, seed=1), random_maps(3, 7, seed=1))
    assert not torch.equal(random_maps(3, 7, seed=1), random_maps(3, 7, seed=2))


def test_center_crop_geometry_takes_the_middle_square():
    from PIL import Image

    im = Image.new("L", (40, 20))
    for x in range(40):
        for y in range(20):
            im.putpixel((x, y), x * 6)
    # 40x20 -> 20x10 (nearest: column c samples source x = floor(2 (c + 0.5)) = 2c + 1) -> crop
    # columns 5..14 -> source columns 11..29
    crop = center_crop_geometry(im, 10, Image.NEAREST)
    assert crop.size == (10, 10)
    assert [crop.getpixel((c, 0)) for c in (0, 9)] == [11 * 6, 29 * 6]


def test_load_masks_follow_the_preprocessing_geometry(tmp_path):
    import numpy as np
    from PIL import Image

    from conceptclip.errors import DataError
    from conceptclip.explain import load_masks

    # a 40 x 20 mask, white in its right half: resized to 16 x 8 then centre-cropped to 8 x 8 (columns 4..11)
    arr = np.zeros((20, 40), dtype=np.uint8)
    arr[:, 20:] = 255
    Image.fromarray(arr).save(tmp_path / "m.png")
    masks = load_masks([tmp_path / "m.png"], 8)
    assert masks.shape == (1, 8, 8) and masks.dtype == torch.bool
    assert masks[0, :, 4:].all() and not masks[0, :, :4].any()
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="bad.png: cannot read mask"):
        load_masks([tmp_path / "bad.png"], 8)
