"""Pointing game and map-vs-mask overlap against hand-worked grids, scikit-learn, scipy, and
real PH2 lesion masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from conceptclip.errors import ConfigError
from conceptclip.metrics import (
    binarize_maps,
    map_grounding_scores,
    overlap_scores,
    pointing_game,
    resize_maps,
)
from conceptclip.paths import shared_data_dir


def grid(points: list[tuple[int, int]], size: int = 4) -> torch.Tensor:
    m = torch.zeros(size, size)
    for y, x in points:
        m[y, x] = 1
    return m


# ---------------------------------------------------------------- pointing game
def test_pointing_game_hits_misses_and_empty_masks():
    maps = torch.zeros(3, 4, 4)
    maps[0, 1, 1] = 5.0  # max at (1,1)
    maps[1, 0, 0] = 5.0  # max at (0,0)
    maps[2, 2, 2] = 5.0
    masks = torch.stack([grid([(1, 1), (1, 2)]), grid([(3, 3)]), grid([])])
    # sample 0 hit, sample 1 miss (distance sqrt(18) = 4.24), sample 2 undefined (empty mask)
    per = pointing_game(maps, masks, reduction="none")
    assert per[:2].tolist() == [1.0, 0.0] and math.isnan(per[2])
    assert pointing_game(maps, masks) == pytest.approx(0.5)
    assert pointing_game(maps, masks, tolerance=4) == pytest.approx(0.5)  # 4.24 > 4
    assert pointing_game(maps, masks, tolerance=5) == pytest.approx(1.0)  # 4.24 <= 5


def test_pointing_game_constant_map_is_a_miss():
    # an all-zero (or any constant) map has no maximum to point with: a miss even when the mask
    # covers the top-left pixel, where a first-argmax rule would land; empty masks stay undefined
    maps = torch.stack([torch.zeros(4, 4), torch.full((4, 4), 0.3), torch.zeros(4, 4)])
    masks = torch.stack([grid([(0, 0)]), torch.ones(4, 4), grid([])])
    per = pointing_game(maps, masks, reduction="none")
    assert per[:2].tolist() == [0.0, 0.0] and math.isnan(per[2])
    assert pointing_game(maps[:2], masks[:2], tolerance=15) == 0.0
    assert pointing_game(maps[:1], masks[:1]) == 0.0
    # one raised pixel is enough to point again
    maps[0, 0, 0] = 1e-6
    assert pointing_game(maps[:1], masks[:1]) == 1.0


def test_pointing_game_tolerance_boundary_15px():
    maps = torch.zeros(1, 32, 32)
    maps[0, 0, 0] = 1.0
    mask = torch.zeros(1, 32, 32)
    mask[0, 9, 12] = 1  # distance sqrt(81 + 144) = 15 exactly
    assert pointing_game(maps, mask, tolerance=15) == 1.0
    assert pointing_game(maps, mask, tolerance=14.9) == 0.0


def test_pointing_game_resizes_low_resolution_map():
    # 2x2 map [[0,1],[0,0]] -> 4x4 bilinear (align_corners=False): output column x samples input
    # column (x + .5)/2 - .5 = -.25, .25, .75, 1.25 (clamped to [0, 1]); row 0 reads input row 0,
    # so row 0 becomes [0, .25, .75, 1] and the unique maximum is at (0, 3)
    small = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
    assert resize_maps(small, (4, 4))[0, 0].tolist() == pytest.approx([0.0, 0.25, 0.75, 1.0])
    assert pointing_game(small, grid([(0, 3)])[None]) == 1.0
    assert pointing_game(small, grid([(0, 2)])[None]) == 0.0


def test_pointing_game_broadcasts_targets_over_one_mask():
    maps = torch.zeros(2, 3, 4, 4)  # 2 images x 3 targets
    maps[0, 0, 0, 0] = maps[0, 1, 3, 3] = maps[0, 2, 0, 1] = 1
    maps[1, :, 3, 3] = 1
    masks = torch.stack([grid([(0, 0), (0, 1)]), grid([(3, 3)])])[:, None]  # (2, 1, 4, 4)
    per = pointing_game(maps, masks, reduction="none")
    assert per.shape == (2, 3)
    assert per.tolist() == [[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]]


# ---------------------------------------------------------------- overlap of masks
def test_overlap_scores_hand_and_sklearn():
    pred = grid([(0, 0), (0, 1), (1, 0), (1, 1), (3, 3)]).bool()
    true = grid([(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]).bool()
    # TP 4, FP 1, FN 2: Dice 8/11, IoU 4/7, precision 4/5, recall 4/6
    s = overlap_scores(pred, true)
    assert s == pytest.approx({"dice": 8 / 11, "iou": 4 / 7, "precision": 0.8, "recall": 2 / 3})
    p, t = pred.flatten().numpy(), true.flatten().numpy()
    assert s["dice"] == pytest.approx(skm.f1_score(t, p))
    assert s["iou"] == pytest.approx(skm.jaccard_score(t, p))
    assert s["precision"] == pytest.approx(skm.precision_score(t, p))
    assert s["recall"] == pytest.approx(skm.recall_score(t, p))


def test_overlap_degenerate_cases_are_nan_not_errors():
    empty = torch.zeros(4, 4, dtype=torch.bool)
    some = grid([(0, 0)]).bool()
    s = overlap_scores(torch.stack([empty, empty]), torch.stack([some, empty]), reduction="none")
    # empty prediction vs a lesion: precision undefined, recall 0, Dice 0, IoU 0
    assert math.isnan(s["precision"][0]) and s["recall"][0] == 0 and s["dice"][0] == 0 and s["iou"][0] == 0
    # both empty: everything undefined
    assert all(math.isnan(v[1]) for v in s.values())


# ---------------------------------------------------------------- thresholding
def test_binarize_by_value_and_top_fraction():
    m = torch.arange(16.0).reshape(4, 4)
    # min-max -> v / 15 ; >= 0.5 means v >= 7.5: rows 2 and 3
    assert binarize_maps(m, threshold=0.5).sum() == 8 and binarize_maps(m, threshold=0.5)[2:].all()
    # raw values (normalize=False): v >= 13 -> 13, 14, 15
    assert binarize_maps(m, threshold=13, normalize=False).sum() == 3
    # top 25% of 16 px -> 4 px = values 12..15 = row 3 ; 10% -> floor(1.6 + .5) = 2 px
    assert binarize_maps(m, top_fraction=0.25)[3].all() and binarize_maps(m, top_fraction=0.25).sum() == 4
    assert binarize_maps(m, top_fraction=0.1).flatten().nonzero().flatten().tolist() == [14, 15]
    # a constant map: ties go to raster order; its normalised values are 0 -> nothing >= 0.5
    c = torch.ones(4, 4)
    assert binarize_maps(c, top_fraction=0.25)[0].all() and binarize_maps(c, top_fraction=0.25).sum() == 4
    assert binarize_maps(c, threshold=0.5).sum() == 0
    with pytest.raises(ConfigError, match="threshold"):
        binarize_maps(m, threshold=0.5, top_fraction=0.1)
    with pytest.raises(ConfigError, match="top_fraction"):
        binarize_maps(m, top_fraction=1.5)


def test_map_grounding_scores_resized_map_hand():
    # delta map 2x2 at (0,0) -> 4x4 bilinear = outer(r, r) with r = [1, .75, .25, 0]:
    #   [[1, .75, .25, 0], [.75, .5625, .1875, 0], [.25, .1875, .0625, 0], [0, 0, 0, 0]]
    small = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    mask = grid([(0, 0), (0, 1), (1, 0), (1, 1)])[None]
    # >= .5 keeps exactly the top-left 2x2 = the mask
    assert map_grounding_scores(small, mask, threshold=0.5) == pytest.approx(
        {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0}
    )
    # >= .7 keeps (0,0), (0,1), (1,0): TP 3, FP 0, FN 1
    assert map_grounding_scores(small, mask, threshold=0.7) == pytest.approx(
        {"dice": 6 / 7, "iou": 3 / 4, "precision": 1.0, "recall": 3 / 4}
    )
    # top 1/16 -> the single pixel (0,0): TP 1, FN 3
    assert map_grounding_scores(small, mask, top_fraction=1 / 16)["recall"] == pytest.approx(1 / 4)


def test_grounding_bad_inputs():
    with pytest.raises(ConfigError, match="masks"):
        pointing_game(torch.rand(3, 4, 4), torch.ones(2, 4, 4))
    with pytest.raises(ConfigError, match="masks"):
        pointing_game(torch.rand(3, 4, 4), torch.full((3, 4, 4), 2.0))
    with pytest.raises(ConfigError, match="maps"):
        pointing_game(torch.tensor([1.0, 2.0]), torch.ones(4, 4))
    with pytest.raises(ConfigError, match="tolerance"):
        pointing_game(torch.rand(1, 4, 4), torch.ones(1, 4, 4), tolerance=-1)
    with pytest.raises(ConfigError, match="true_masks"):
        overlap_scores(torch.ones(2, 4, 4), torch.ones(2, 4, 5))


# ---------------------------------------------------------------- real PH2 lesion masks
PH2_MASKS = shared_data_dir() / "ph2" / "masks"


@pytest.mark.shared_data
def test_ph2_masks_pointing_game_and_dice_against_references():
    if not PH2_MASKS.is_dir():
        pytest.skip(f"PH2 masks not found at {PH2_MASKS}")
    from PIL import Image
    from scipy import ndimage

    # the first 16 masks of the most common size (256 x 192) form one batch
    h, w = 192, 256
    masks = []
    for f in sorted(PH2_MASKS.glob("*.png")):
        m = np.array(Image.open(f)) > 127
        if m.shape == (h, w):
            masks.append(m)
        if len(masks) == 16:
            break
    assert len(masks) == 16
    mask_t = torch.tensor(np.stack(masks))
    # centre-Gaussian baseline map at 16x16, resized to the mask inside the metrics
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    centre = torch.exp(-(yy**2 + xx**2) / 0.5).expand(len(masks), 16, 16)

    # the mask itself as a map: its maximum lies on the lesion, and it overlaps perfectly
    assert pointing_game(mask_t.float(), mask_t) == 1.0
    assert map_grounding_scores(mask_t.float(), mask_t, threshold=0.5)["dice"] == pytest.approx(1.0)

    # pointing game with 15 px tolerance = Euclidean distance transform check
    up = resize_maps(centre, (h, w)).reshape(len(masks), -1).argmax(1)
    for i, m in enumerate(masks):
        dist = ndimage.distance_transform_edt(~m)  # distance of each pixel to the lesion
        y, x = divmod(int(up[i]), w)
        expect = float(dist[y, x] <= 15)
        assert pointing_game(centre[i : i + 1], mask_t[i : i + 1], tolerance=15) == expect

    # Dice of the top-30% centre map per image = scikit-learn F1 on the flattened pixels
    dice = map_grounding_scores(centre, mask_t, top_fraction=0.3, reduction="none")["dice"]
    pred = binarize_maps(resize_maps(centre, (h, w)), top_fraction=0.3)
    for i, m in enumerate(masks):
        assert float(dice[i]) == pytest.approx(skm.f1_score(m.ravel(), pred[i].numpy().ravel()))
