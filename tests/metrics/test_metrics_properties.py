"""Identities the metrics must satisfy on any input (hypothesis), and device agnosticism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from conceptclip import metrics as M

FAST = settings(max_examples=30, deadline=None)

scores_st = arrays(np.float64, st.integers(4, 40), elements=st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9, 1.0]))


@FAST
@given(scores_st, st.integers(0, 2**31 - 1))
def test_auc_flips_under_negation_and_ignores_monotone_maps(s, seed):
    y = np.random.default_rng(seed).integers(0, 2, s.shape[0])
    a = M.auc(s, y)
    if np.isnan(a):
        assert y.min() == y.max()  # undefined only when one class is missing
        return
    # AUC(-s) = 1 - AUC(s) (ties count 1/2 both ways); a strictly increasing map changes nothing
    assert M.auc(-s, y) == pytest.approx(1 - a)
    assert M.auc(np.exp(3 * s), y) == pytest.approx(a)


@FAST
@given(st.integers(0, 2**31 - 1), st.integers(2, 20))
def test_ece_bounds_and_perfect_calibration(seed, n_bins):
    rng = np.random.default_rng(seed)
    p = rng.random((50, 3))
    y = rng.integers(0, 2, (50, 3))
    e = M.expected_calibration_error(p, y, n_bins=n_bins, average="none")
    assert bool(((e >= 0) & (e <= 1)).all())
    # certain and right -> 0 ; certain and wrong -> 1 (0 and 1 fall in different bins)
    assert M.expected_calibration_error(y.astype(float), y, n_bins=n_bins) == pytest.approx(0.0)
    assert M.expected_calibration_error(1.0 - y, y, n_bins=n_bins) == pytest.approx(1.0)
    # one bin: ECE = |mean(p) - mean(y)| per label
    one = M.expected_calibration_error(p, y, n_bins=1, average="none")
    assert one.numpy() == pytest.approx(np.abs(p.mean(0) - y.mean(0)))


@FAST
@given(st.integers(0, 2**31 - 1))
def test_overlap_identities(seed):
    rng = np.random.default_rng(seed)
    pred = torch.tensor(rng.random((6, 5, 5)) < 0.5)
    true = torch.tensor(rng.random((6, 5, 5)) < 0.5)
    s = M.overlap_scores(pred, true, reduction="none")
    ok = ~torch.isnan(s["iou"])
    # Dice = 2 IoU / (1 + IoU); Dice is the harmonic mean of precision and recall
    assert torch.allclose(s["dice"][ok], (2 * s["iou"] / (1 + s["iou"]))[ok])
    both = ok & ~torch.isnan(s["precision"]) & (s["precision"] + s["recall"] > 0)
    hm = 2 * s["precision"] * s["recall"] / (s["precision"] + s["recall"])
    assert torch.allclose(s["dice"][both], hm[both])


@FAST
@given(st.integers(0, 2**31 - 1), st.integers(2, 6))
def test_disentanglability_range_and_perfect_insertion(seed, k):
    rng = np.random.default_rng(seed)
    d = M.disentanglability(rng.random((3, k, 4, 4)), reduction="none")
    assert bool(((d >= 0) & (d <= 1)).all())
    # insertion/deletion AUC stays in [0, 1] for probabilities
    imgs = torch.tensor(rng.random((2, 1, 4, 4)))
    res = M.insertion_auc(lambda x: x[:, 0].mean(dim=(1, 2)), imgs, torch.tensor(rng.random((2, 4, 4))), n_steps=5)
    assert bool(((res.auc >= 0) & (res.auc <= 1)).all())


@FAST
@given(st.integers(0, 2**31 - 1))
def test_precision_at_full_gallery_is_relevant_fraction(seed):
    rng = np.random.default_rng(seed)
    sim = rng.normal(size=(4, 7))
    rel = rng.random((4, 7)) < 0.4
    p = M.precision_at_k(sim, rel, 7, reduction="none")
    assert np.allclose(p.numpy(), rel.mean(1))
    r = M.recall_at_k(sim, rel, 7, reduction="none")
    assert bool((r[torch.tensor(rel.any(1))] == 1).all())


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_metrics_accept_tensors_on_any_device(device):
    g = torch.Generator().manual_seed(0)
    s = torch.rand(40, 3, generator=g).softmax(1)
    y = torch.randint(0, 3, (40,), generator=g)
    maps = torch.rand(4, 2, 7, 7, generator=g)
    masks = torch.rand(4, 2, 14, 14, generator=g) > 0.5
    imgs = torch.rand(4, 3, 8, 8, generator=g)
    to = lambda t: t.to(device)  # noqa: E731

    def run(t):
        return [
            M.auc(t(s), t(y)),
            M.f1_score(t(s), t(y)),
            M.expected_calibration_error(t(s), t(y)),
            M.pointing_game(t(maps), t(masks), tolerance=2),
            M.map_grounding_scores(t(maps), t(masks), top_fraction=0.2)["dice"],
            M.part_miou(t(maps), t(masks)),
            M.disentanglability(t(maps)),
            M.precision_at_k(t(s), t(s > 0.4), 2),
            M.insertion_auc(lambda x: x[:, 0].mean(dim=(1, 2)), t(imgs), t(maps[:, 0]), n_steps=4).mean_auc,
            M.intervention_summary(t(s), t(s.flip(1)))["flip_rate"],
        ]

    assert run(to) == pytest.approx(run(lambda v: v))
