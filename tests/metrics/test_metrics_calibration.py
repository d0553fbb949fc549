"""ECE against hand-worked bins and scikit-learn's calibration_curve."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.calibration import calibration_curve

from conceptclip.errors import ConfigError
from conceptclip.metrics import ece, expected_calibration_error, reliability_bins
from conceptclip.metrics.calibration import bin_index

# Multi-class: confidence = max prob, correct = argmax == y
P_MC = np.array([[0.9, 0.1], [0.7, 0.3], [0.35, 0.65], [0.55, 0.45]])
Y_MC = np.array([0, 1, 1, 0])
# conf .9 right, .7 wrong, .65 right, .55 right


def test_bin_edges_are_right_closed():
    # bins of width 1/5: (0, .2] -> 0, (.2, .4] -> 1, ..., and 0 falls in bin 0
    conf = torch.tensor([0.0, 0.2, 0.2000001, 0.5, 1.0], dtype=torch.float64)
    assert bin_index(conf, 5).tolist() == [0, 0, 1, 2, 4]


def test_ece_multiclass_hand_5_bins():
    # bin (.8, 1]: {.9 right}    -> 1/4 * |1 - .9|     = .025
    # bin (.6, .8]: {.7 wrong, .65 right} -> 2/4 * |.5 - .675| = .0875
    # bin (.4, .6]: {.55 right}  -> 1/4 * |1 - .55|    = .1125
    assert expected_calibration_error(P_MC, Y_MC, n_bins=5) == pytest.approx(0.225)


def test_ece_multiclass_default_15_bins():
    # 15 bins put .9, .7, .65, .55 in bins 13, 10, 9, 8 (one each):
    # ECE = (|1-.9| + |0-.7| + |1-.65| + |1-.55|) / 4 = 1.6 / 4
    assert ece(P_MC, Y_MC) == pytest.approx(0.4)
    bins = reliability_bins(P_MC, Y_MC)
    assert bins.count[0].nonzero().flatten().tolist() == [8, 9, 10, 13]


def test_ece_multilabel_per_label_hand():
    # label 0: p [.2,.4,.8,.9], y [0,1,1,1]; 2 bins:
    #   (0,.5]: conf .3, positives .5 -> 2/4 * .2 = .1 ; (.5,1]: conf .85, positives 1 -> 2/4 * .15 = .075
    # label 1: p [.1,.3,.6,.7], y [0,0,1,1]:
    #   (0,.5]: conf .2, positives 0 -> 2/4 * .2 = .1 ; (.5,1]: conf .65, positives 1 -> 2/4 * .35 = .175
    p = np.array([[0.2, 0.1], [0.4, 0.3], [0.8, 0.6], [0.9, 0.7]])
    y = np.array([[0, 0], [1, 0], [1, 1], [1, 1]])
    per = expected_calibration_error(p, y, n_bins=2, average="none")
    assert per.tolist() == pytest.approx([0.175, 0.275])
    assert expected_calibration_error(p, y, n_bins=2) == pytest.approx(0.225)
    # binary (N,) is the one-label case
    assert expected_calibration_error(p[:, 0], y[:, 0], n_bins=2) == pytest.approx(0.175)


@pytest.mark.parametrize("seed", [0, 1])
def test_binary_ece_matches_sklearn_calibration_curve(seed):
    rng = np.random.default_rng(seed)
    p = rng.random(500) * 0.998 + 0.001
    y = (rng.random(500) < p**1.5).astype(int)
    frac_pos, mean_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    counts = np.histogram(p, bins=np.linspace(0, 1, 11))[0]
    counts = counts[counts > 0]
    ref = float(np.sum(counts / len(p) * np.abs(frac_pos - mean_pred)))
    assert expected_calibration_error(p, y, n_bins=10) == pytest.approx(ref)


def test_multiclass_ece_matches_per_sample_reference():
    rng = np.random.default_rng(7)
    logits = torch.tensor(rng.normal(size=(400, 5)) * 2)
    probs = logits.softmax(1)
    y = torch.tensor(rng.integers(0, 5, 400))
    conf, pred = probs.max(1)
    total = 0.0
    for b in range(15):  # straightforward loop over bins ((b/15, (b+1)/15])
        lo, hi = b / 15, (b + 1) / 15
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            acc = (pred[in_bin] == y[in_bin]).double().mean()
            total += in_bin.double().mean() * abs(acc - conf[in_bin].mean())
    assert ece(probs, y) == pytest.approx(float(total))
    assert ece(probs.float(), y.numpy()) == pytest.approx(float(total), abs=1e-6)


def test_ece_rejects_non_probabilities_and_bad_bins():
    with pytest.raises(ConfigError, match="probs"):
        ece(np.array([[1.2, -0.2]]), np.array([0]))
    with pytest.raises(ConfigError, match="n_bins"):
        ece(P_MC, Y_MC, n_bins=0)
    with pytest.raises(ConfigError, match="targets"):
        ece(P_MC, Y_MC[:3])
