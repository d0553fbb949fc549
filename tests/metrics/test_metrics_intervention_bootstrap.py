"""Intervention faithfulness and the bootstrap confidence interval."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conceptclip.errors import ConfigError
from conceptclip.metrics import accuracy, auc, bootstrap_ci, intervention_effect, intervention_summary


# ---------------------------------------------------------------- intervention
def test_intervention_softmax_hand():
    before = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    after = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    # row 0: target = argmax before = 0 ; p_before = e²/(e²+2) = .78699, p_after = 1/(e+2) = .21194
    #        prediction 0 -> 1: flipped
    # row 1: unchanged: delta 0, not flipped
    e = math.e
    d0 = 1 / (e + 2) - e**2 / (e**2 + 2)
    eff = intervention_effect(before, after)
    assert eff.target.tolist() == [0, 1]
    assert eff.delta.tolist() == pytest.approx([d0, 0.0])
    assert eff.flipped.tolist() == [True, False]
    assert intervention_summary(before, after) == pytest.approx(
        {"mean_delta": d0 / 2, "mean_abs_delta": abs(d0) / 2, "flip_rate": 0.5, "n": 2}
    )
    # an explicit target: class 1 of row 0 rises from 1/(e²+2) to e/(e+2)
    eff = intervention_effect(before, after, targets=[1, 1])
    assert float(eff.delta[0]) == pytest.approx(e / (e + 2) - 1 / (e**2 + 2))


def test_intervention_sigmoid_and_probabilities():
    # sigmoid(2) = .8808 -> sigmoid(-1) = .2689 crosses 0.5: flipped ; label 1 stays at sigmoid(-1)
    eff = intervention_effect(torch.tensor([[2.0, -1.0]]), torch.tensor([[-1.0, -1.0]]), activation="sigmoid")
    s = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert float(eff.delta[0]) == pytest.approx(s(-1) - s(2))
    assert eff.flipped.tolist() == [True]
    # probabilities as given: .6 -> .55 keeps the argmax
    eff = intervention_effect(np.array([[0.6, 0.4]]), np.array([[0.55, 0.45]]), activation="none")
    assert float(eff.delta[0]) == pytest.approx(-0.05) and eff.flipped.tolist() == [False]


def test_intervention_bad_inputs():
    with pytest.raises(ConfigError, match="logits_after"):
        intervention_effect(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ConfigError, match="targets"):
        intervention_effect(torch.zeros(2, 3), torch.zeros(2, 3), targets=[0, 3])
    with pytest.raises(ConfigError, match="logits_before"):
        intervention_effect(torch.full((1, 2), 2.0), torch.zeros(1, 2), activation="none")


# ---------------------------------------------------------------- bootstrap
def test_bootstrap_is_seeded_and_paired():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    s = np.clip(y * 0.3 + rng.random(60) * 0.7, 0, 1)
    a = bootstrap_ci(auc, s, y, n_resamples=200, seed=5)
    b = bootstrap_ci(auc, s, y, n_resamples=200, seed=5)
    c = bootstrap_ci(auc, s, y, n_resamples=200, seed=6)
    assert torch.equal(a.samples, b.samples) and not torch.equal(a.samples, c.samples)
    assert a.estimate == pytest.approx(auc(s, y))
    assert a.low <= a.estimate <= a.high
    # paired resampling keeps predictions with their labels: a perfect classifier stays perfect
    perfect = bootstrap_ci(accuracy, torch.tensor(y).float(), torch.tensor(y), n_resamples=50)
    assert (perfect.low, perfect.high) == (1.0, 1.0)


def test_bootstrap_constant_and_mean_interval():
    const = bootstrap_ci(lambda x: x.mean(), torch.full((30,), 0.7), n_resamples=100)
    assert const.low == pytest.approx(0.7) and const.high == pytest.approx(0.7)
    # mean of 1000 N(0, 1) draws: the 95% interval is about ±1.96/sqrt(1000) = ±.062
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ci = bootstrap_ci(lambda v: v.mean(), x, n_resamples=300, seed=1)
    half = 1.96 * float(x.std()) / math.sqrt(1000)
    assert ci.high - ci.low == pytest.approx(2 * half, rel=0.2)
    assert (ci.low + ci.high) / 2 == pytest.approx(float(x.mean()), abs=0.02)


def test_bootstrap_percentiles_of_samples():
    ci = bootstrap_ci(lambda v: v.double().mean(), torch.arange(10), n_resamples=300, seed=2, confidence=0.9)
    q = np.quantile(ci.samples.numpy(), [0.05, 0.95])  # linear interpolation, as numpy's default
    assert (ci.low, ci.high) == pytest.approx(tuple(q))


def test_bootstrap_skips_undefined_resamples():
    # one positive in 10: a resample misses it with probability .9^10 = .35 -> AUC undefined there
    y = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    s = np.linspace(1, 0, 10)
    ci = bootstrap_ci(auc, s, y, n_resamples=200, seed=0)
    gen = torch.Generator().manual_seed(0)
    has_pos = sum(bool((torch.randint(0, 10, (10,), generator=gen) == 0).any()) for _ in range(200))
    assert ci.n_valid == has_pos and 0 < has_pos < 200
    assert int(torch.isnan(ci.samples).sum()) == 200 - has_pos
    assert ci.low == 1.0 and ci.high == 1.0  # whenever defined, the positive outranks everything


def test_bootstrap_bad_inputs():
    with pytest.raises(ConfigError, match="arrays"):
        bootstrap_ci(auc, np.zeros(5), np.zeros(6))
    with pytest.raises(ConfigError, match="confidence"):
        bootstrap_ci(auc, np.zeros(5), np.zeros(5), confidence=1.5)
    with pytest.raises(ConfigError, match="metric"):
        bootstrap_ci(lambda x: x, torch.zeros(5), n_resamples=2)
