"""ECOR's factorised probability, max voting and losses, and DROR's flat joint, on hand-made logits.

Worked example A (two classes, three single rationales r0, r1, r2; the bank links class 0 to
{r0, r1} and class 1 to {r1, r2}, so the candidate pairs are (0,r0), (0,r1), (1,r1), (1,r2)):

    rationale logits log(1, 2, 3)      -> P(R | I) = (1/6, 2/6, 3/6)
    pair logits (5, 0, log 3, -2)      -> P(c | R, I) = 1 (r0 has one class), 1/4 and 3/4 (r1), 1 (r2)
    joint P(c, R | I) = (1/6, 1/12, 1/4, 1/2), summing to 1.
"""

from __future__ import annotations

import math

import pytest
import torch

from conceptclip.errors import ConfigError
from conceptclip.methods.ecor import (
    factorised_log_joint,
    grouped_log_softmax,
    grouped_logsumexp,
    marginal_decision,
    multi_positive_nll,
    positive_pairs,
    top_k_vote,
)
from conceptclip.metrics.rationale import rationale_grid

PAIR_CLASS = torch.tensor([0, 0, 1, 1])
PAIR_SET = torch.tensor([0, 1, 1, 2])
R_LOGITS = torch.log(torch.tensor([[1.0, 2.0, 3.0]]))
P_LOGITS = torch.tensor([[5.0, 0.0, math.log(3.0), -2.0]])


def test_grouped_log_softmax_normalises_within_each_rationale():
    out = grouped_log_softmax(P_LOGITS, PAIR_SET, 3).exp()
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.25, 0.75, 1.0]]))
    # invariant to a constant added to one group only
    shifted = P_LOGITS + torch.tensor([[0.0, 7.0, 7.0, 0.0]])
    torch.testing.assert_close(grouped_log_softmax(shifted, PAIR_SET, 3), grouped_log_softmax(P_LOGITS, PAIR_SET, 3))


def test_factorised_joint_worked_example():
    joint = factorised_log_joint(R_LOGITS, P_LOGITS, PAIR_SET).exp()
    torch.testing.assert_close(joint, torch.tensor([[1 / 6, 1 / 12, 1 / 4, 1 / 2]]))
    assert float(joint.sum()) == pytest.approx(1.0)
    # AB1: uniform prior 1/3 instead of P(R | I)
    flat = factorised_log_joint(R_LOGITS, P_LOGITS, PAIR_SET, use_rationale_prior=False).exp()
    torch.testing.assert_close(flat, torch.tensor([[1 / 3, 1 / 12, 1 / 4, 1 / 3]]))


def test_joint_is_a_distribution_for_random_logits():
    gen = torch.Generator().manual_seed(0)
    r, p = torch.randn(5, 3, generator=gen) * 4, torch.randn(5, 4, generator=gen) * 4
    joint = factorised_log_joint(r, p, PAIR_SET).exp()
    torch.testing.assert_close(joint.sum(1), torch.ones(5))
    # the marginal over categories of a rationale is P(R | I)
    per_set = torch.zeros(5, 3).index_add(1, PAIR_SET, joint)
    torch.testing.assert_close(per_set, r.softmax(-1))


def test_top1_vote_on_the_worked_example():
    lj = factorised_log_joint(R_LOGITS, P_LOGITS, PAIR_SET)
    d = top_k_vote(lj, PAIR_CLASS, 2, k=1)
    assert d.pred.tolist() == [1] and d.pair.tolist() == [3]
    assert d.votes.tolist() == [[0.0, 1.0]]
    # k = 3: pairs (1,r2) 1/2, (1,r1) 1/4, (0,r0) 1/6 -> votes 1 : 2
    d3 = top_k_vote(lj, PAIR_CLASS, 2, k=3)
    assert d3.votes.tolist() == [[1.0, 2.0]] and d3.pred.tolist() == [1]
    torch.testing.assert_close(d3.scores, torch.tensor([[1 + (1 / 6) / 2, 2 + (1 / 2) / 2]]))


# Example B: class 0 has one strong pair, class 1 three weaker ones.
B_CLASS = torch.tensor([0, 1, 1, 1])
B_LOGJ = torch.log(torch.tensor([[0.4, 0.2, 0.2, 0.2]]))


def test_voting_beats_the_single_best_pair():
    assert top_k_vote(B_LOGJ, B_CLASS, 2, k=1).pred.tolist() == [0]
    d = top_k_vote(B_LOGJ, B_CLASS, 2, k=3)  # top 3: (0) 0.4, (1) 0.2, (2) 0.2 -> votes 1 : 2
    assert d.votes.tolist() == [[1.0, 2.0]] and d.pred.tolist() == [1]
    assert d.pair.tolist() == [1]  # class 1's best pair: ties 0.2/0.2/0.2 go to the lowest index


def test_vote_ties_go_to_the_highest_joint_probability():
    d = top_k_vote(B_LOGJ, B_CLASS, 2, k=2)  # votes 1 : 1; max joint 0.4 vs 0.2
    assert d.votes.tolist() == [[1.0, 1.0]] and d.pred.tolist() == [0]
    # swap the strong pair's class: the tie then goes to class 1
    assert top_k_vote(B_LOGJ, torch.tensor([1, 0, 0, 0]), 2, k=2).pred.tolist() == [1]


def test_k_larger_than_the_pairs_counts_every_pair_and_k0_is_an_error():
    d = top_k_vote(B_LOGJ, B_CLASS, 2, k=50)
    assert d.votes.tolist() == [[1.0, 3.0]]
    with pytest.raises(ConfigError, match="top_k"):
        top_k_vote(B_LOGJ, B_CLASS, 2, k=0)


def test_marginal_decision_sums_the_joint():
    d = marginal_decision(B_LOGJ, B_CLASS, 2)
    torch.testing.assert_close(d.scores.exp(), torch.tensor([[0.4, 0.6]]))
    assert d.pred.tolist() == [1] and d.pair.tolist() == [1]
    torch.testing.assert_close(grouped_logsumexp(B_LOGJ, B_CLASS, 3)[:, 2], torch.tensor([float("-inf")]))


def test_ecor_loss_terms_by_hand():
    """Eq. 4 on example A: label 1 with true rationale r1: L_R = -log 2/6, L_C = -log 3/4, sum log 4."""
    truth_sets = torch.tensor([[False, True, False]])
    l_r = multi_positive_nll(R_LOGITS.log_softmax(-1), truth_sets)
    pos = positive_pairs(torch.tensor([1]), truth_sets, PAIR_CLASS, PAIR_SET)
    assert pos.tolist() == [[False, False, True, False]]
    l_c = multi_positive_nll(grouped_log_softmax(P_LOGITS, PAIR_SET, 3), pos)
    assert float(l_r) == pytest.approx(math.log(3.0))
    assert float(l_c) == pytest.approx(-math.log(0.75))
    assert float(l_r + l_c) == pytest.approx(math.log(4.0))


def test_several_true_rationales_average_and_the_category_term_falls_back():
    truth = torch.tensor([[False, True, True], [False, False, True]])
    labels = torch.tensor([1, 0])
    l_r = multi_positive_nll(R_LOGITS.expand(2, -1).log_softmax(-1), truth)
    expected_r = (-(math.log(2 / 6) + math.log(3 / 6)) / 2 - math.log(3 / 6)) / 2
    assert float(l_r) == pytest.approx(expected_r)
    pos = positive_pairs(labels, truth, PAIR_CLASS, PAIR_SET)
    # image 2 is class 0 but shows only r2, which class 0 lacks: every class-0 pair trains
    assert pos.tolist() == [[False, False, True, True], [True, True, False, False]]
    l_c = multi_positive_nll(grouped_log_softmax(P_LOGITS.expand(2, -1), PAIR_SET, 3), pos)
    expected_c = (-(math.log(0.75) + 0.0) / 2 - (0.0 + math.log(0.25)) / 2) / 2
    assert float(l_c) == pytest.approx(expected_c)


def test_rows_without_a_positive_are_skipped():
    lp = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]]))
    assert float(multi_positive_nll(lp, torch.tensor([[True, False], [False, False]]))) == pytest.approx(math.log(2))
    assert float(multi_positive_nll(lp, torch.zeros(2, 2, dtype=torch.bool))) == 0.0


def test_dror_flat_joint_and_its_decision():
    """DROR: one softmax over all pairs. logits log(1, 2, 3, 4) -> P = (0.1, 0.2, 0.3, 0.4)."""
    logits = torch.log(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    lj = logits.log_softmax(-1)
    torch.testing.assert_close(lj.exp(), torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    d = top_k_vote(lj, PAIR_CLASS, 2, k=1)
    assert d.pred.tolist() == [1] and PAIR_SET[d.pair].tolist() == [2]
    pos = positive_pairs(torch.tensor([1]), torch.tensor([[False, True, False]]), PAIR_CLASS, PAIR_SET)
    assert float(multi_positive_nll(lj, pos)) == pytest.approx(-math.log(0.3))


def test_predictions_fill_the_doubly_right_grid():
    """Three images of example A's space: the predicted rationale is the predicted class's best pair."""
    r = torch.log(torch.tensor([[1.0, 2.0, 3.0], [6.0, 2.0, 1.0], [1.0, 2.0, 3.0]]))
    p = P_LOGITS.expand(3, -1)
    d = top_k_vote(factorised_log_joint(r, p, PAIR_SET), PAIR_CLASS, 2, k=1)
    assert d.pred.tolist() == [1, 0, 1] and PAIR_SET[d.pair].tolist() == [2, 0, 2]
    pred_r = torch.nn.functional.one_hot(PAIR_SET[d.pair], 3)
    truth = torch.tensor([[0, 0, 1], [0, 1, 0], [1, 0, 0]])
    grid = rationale_grid(d.pred, torch.tensor([1, 0, 0]), pred_r, truth)
    # image 1: right class, r2 present (RR); image 2: right class, r0 absent (RW); image 3: wrong, wrong (WW)
    assert grid == {"RR": 1 / 3, "RW": 1 / 3, "WR": 0.0, "WW": 1 / 3, "n": 3}
