"""RC-TPL's ranking loss (Eq. 3) and the local softmax-weighted aggregation (Eq. 2), against
hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from conceptclip.errors import ConfigError
from conceptclip.rctpl.method import ranking_loss
from conceptclip.prompts.local import softmax_pool


def test_ranking_loss_hand_computed():
    # report 0: positive class 0 (s=2.0), negatives 1 (0.5) and 2 (1.8), margin 1:
    #   max(0, 1 - 2.0 + 0.5) = 0, max(0, 1 - 2.0 + 1.8) = 0.8
    # report 1: positive 0 (s=0.0), negative 1 (1.0), class 2 uncertain (masked out):
    #   max(0, 1 - 0.0 + 1.0) = 2.0
    # mean over the 3 pairs: (0 + 0.8 + 2.0) / 3
    scores = torch.tensor([[2.0, 0.5, 1.8], [0.0, 1.0, 3.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    assert float(ranking_loss(scores, labels, mask, margin=1.0)) == pytest.approx(2.8 / 3, abs=1e-6)
    # without the mask, report 1 has positives {0, 2} and negative {1}: extra pair max(0, 1 - 3 + 1) = 0
    assert float(ranking_loss(scores, labels, None, margin=1.0)) == pytest.approx(2.8 / 4, abs=1e-6)


def test_ranking_loss_margin_and_gradient():
    scores = torch.tensor([[0.3, 0.1, 0.6]], requires_grad=True)
    labels = torch.tensor([[1.0, 0.0, 0.0]])
    # margin 0.5: pairs (0,1): 0.5 - 0.3 + 0.1 = 0.3; (0,2): 0.5 - 0.3 + 0.6 = 0.8 -> mean 0.55
    loss = ranking_loss(scores, labels, margin=0.5)
    assert float(loss.detach()) == pytest.approx(0.55, abs=1e-6)
    loss.backward()
    # both hinges active: d/ds_0 = -2/2, d/ds_1 = +1/2, d/ds_2 = +1/2
    torch.testing.assert_close(scores.grad, torch.tensor([[-1.0, 0.5, 0.5]]))
    # margin 0: (0,1): max(0, -0.3 + 0.1) = 0; (0,2): max(0, -0.3 + 0.6) = 0.3 -> mean 0.15
    assert float(ranking_loss(scores.detach(), labels, margin=0.0)) == pytest.approx(0.15, abs=1e-6)


def test_ranking_loss_without_pairs_is_zero_with_a_graph():
    scores = torch.tensor([[0.3, 0.1], [0.2, 0.9]], requires_grad=True)
    labels = torch.zeros(2, 2)  # normal reports: no positive class, no pair
    loss = ranking_loss(scores, labels)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.equal(scores.grad, torch.zeros(2, 2))


def test_ranking_loss_shape_errors():
    with pytest.raises(ConfigError, match="one shape"):
        ranking_loss(torch.zeros(2, 3), torch.zeros(2, 2))
    with pytest.raises(ConfigError, match="mask"):
        ranking_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(3, 2, dtype=torch.bool))


def test_softmax_pool_hand_computed():
    # two regions with cosines 0.2 and 0.4, tau 0.1: w = softmax(2, 4) = (1/(1+e^2), e^2/(1+e^2))
    sims = torch.tensor([[[0.2], [0.4]]])
    w0 = 1.0 / (1.0 + math.exp(2.0))
    expected = 0.2 * w0 + 0.4 * (1.0 - w0)  # = 0.37615942
    assert float(softmax_pool(sims, 0.1)[0, 0]) == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.37615942, abs=1e-7)


def test_softmax_pool_per_class_and_limits():
    sims = torch.tensor([[[0.1, 0.9], [0.5, 0.3], [0.3, -0.2]]])  # (B=1, N=3, C=2)
    # tau -> 0: the maximum per class; tau -> inf: the mean per class
    torch.testing.assert_close(softmax_pool(sims, 1e-4), torch.tensor([[0.5, 0.9]]))
    torch.testing.assert_close(softmax_pool(sims, 1e4), sims.mean(1), atol=1e-4, rtol=0)
    # tau = 1, class 0: weights e^0.1, e^0.5, e^0.3 over their sum
    e = [math.exp(v) for v in (0.1, 0.5, 0.3)]
    exp0 = sum(w * v for w, v in zip(e, (0.1, 0.5, 0.3))) / sum(e)
    assert float(softmax_pool(sims, 1.0)[0, 0]) == pytest.approx(exp0, abs=1e-6)


def test_softmax_pool_ignores_padding():
    sims = torch.tensor([[[0.2], [0.4], [10.0]], [[0.7], [0.0], [0.0]]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out = softmax_pool(sims, 0.1, mask)
    assert float(out[0, 0]) == pytest.approx(0.37615942, abs=1e-6)  # the padded 10.0 takes no part
    assert float(out[1, 0]) == pytest.approx(0.7, abs=1e-7)  # a single region is its own score
    empty = softmax_pool(sims, 0.1, torch.zeros(2, 3, dtype=torch.bool))
    assert torch.equal(empty, torch.zeros(2, 1))


def test_softmax_pool_errors():
    with pytest.raises(ConfigError, match=r"\(B, N, C\)"):
        softmax_pool(torch.zeros(3, 2), 0.1)
    with pytest.raises(ConfigError, match="temperature"):
        softmax_pool(torch.zeros(1, 3, 2), 0.0)
    with pytest.raises(ConfigError, match="mask"):
        softmax_pool(torch.zeros(1, 3, 2), 0.1, torch.ones(1, 2, dtype=torch.bool))
