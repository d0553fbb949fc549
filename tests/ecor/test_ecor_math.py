"""ECOR's probability model, inference and loss against the paper's formulas, computed here with
explicit loops over categories and rationales (plain `math`, never the module's helpers), and the
shared pair mechanics (grouped softmax, voting, multi-positive CE) on hand-made logits.

Paper (Rasekh et al. 2024), with s = logit scale and cos the cosine of image and prompt features:
  Eq. 4  P(r | I)    = exp(z_r) / sum_{r'} exp(z_r')                 (all rationale prompts)
  Eq. 5  P(c | r, I) = exp(u_{c,r}) / sum_{c', r'} exp(u_{c',r'})    (all conditional prompts,
                                                                      every category x rationale)
  Eq. 11 (c, r) = argmax P(r | I) P(c | r, I); top k pairs, max voting among their categories
  Eqs. 9-10 L = -log P(r* | I) - log P(c* | r*, I)                  (L_CLIP with one positive)
"""

from __future__ import annotations

import math

import pytest
import torch

from conceptclip.errors import ConfigError
from conceptclip.knowledge.schema import Provenance, simple_bank
from conceptclip.methods import create_method
from conceptclip.metrics.rationale import rationale_grid
from conceptclip.prompts.rationales import (
    conditional_log_softmax,
    grouped_log_softmax,
    grouped_logsumexp,
    marginal_decision,
    multi_positive_nll,
    positive_pairs,
    top_k_vote,
)

from torch_threads import single_thread

_one_thread = pytest.fixture(scope="module", autouse=True)(single_thread)

PROV = Provenance(kind="paper", citation="hand-made test bank")
CLASSES = ["melanoma", "nevus"]
# vocabulary r0 "blue veil", r1 "irregular dots", r2 "regular network"; class 0 -> {r0, r1}, class 1 -> {r1, r2}
BANK_A = simple_bank("a", {"melanoma": ["blue veil", "irregular dots"], "nevus": ["irregular dots", "regular network"]},
                     PROV)
# hand logits: 3 rationales; with pairs="all" the 6 pairs are class-major (0,r0) (0,r1) (0,r2) (1,r0) (1,r1) (1,r2)
Z = [0.3, -1.2, 2.0]  # rationale logits z_r
U = [[1.5, 0.2, -0.7], [0.4, 2.2, 0.9]]  # conditional logits u_{c,r}


def _softmax(values: list[float]) -> list[float]:
    m = max(values)
    e = [math.exp(v - m) for v in values]
    return [x / sum(e) for x in e]


def paper_joint(z: list[float], u: list[list[float]]) -> dict[tuple[int, int], float]:
    """P(c, r | I) = P(r | I) P(c | r, I) with Eq. 5's softmax over every (c, r) prompt."""
    p_r = _softmax(z)
    flat = [u[c][r] for c in range(len(u)) for r in range(len(z))]
    p_cond = _softmax(flat)
    return {(c, r): p_r[r] * p_cond[c * len(z) + r] for c in range(len(u)) for r in range(len(z))}


def paper_vote(joint: dict[tuple[int, int], float], k: int) -> int:
    """Top-k pairs by joint probability; the category with most of them (ties: higher best joint)."""
    top = sorted(joint, key=lambda cr: -joint[cr])[:k]
    votes: dict[int, int] = {}
    for c, _ in top:
        votes[c] = votes.get(c, 0) + 1
    best = {c: max(p for (cc, _), p in joint.items() if cc == c) for c in votes}
    return max(votes, key=lambda c: (votes[c], best[c]))


def _method(tiny_clip, **cfg):
    m = create_method("ecor", tiny_clip, CLASSES, {"visual_prompt": "none", **cfg}, bank=BANK_A)
    z, u = torch.tensor([Z]), torch.tensor([[U[c][r] for c in range(2) for r in range(3)]])
    m.similarities = lambda f: {"rationale_logits": z.expand(f.shape[0], -1), "pair_logits": u.expand(f.shape[0], -1)}
    return m


def test_defaults_are_the_papers(tiny_clip):
    m = create_method("ecor", tiny_clip, CLASSES, {}, bank=BANK_A)
    c = m.config
    assert (c.pairs, c.conditional_softmax, c.model, c.train_on, c.top_k, c.decision) == ("all", "all", "ecor",
                                                                                          "model", 5, "vote")
    assert (c.visual_prompt, c.n_prompt_tokens, m.visual.kind) == ("shallow", 3, "shallow")
    assert tuple(m.visual.tokens.shape) == (1, 3, 32)  # Eq. 6: K = 3 tokens at the input layer only
    assert m.pair_texts[1] == "This is a photo of a melanoma because there is irregular dots."
    assert m.rationale_texts[2] == "There are regular network in the photo."
    # every category x rationale permutation is a candidate pair
    assert [(int(a), int(b)) for a, b in zip(m.pair_class, m.pair_set)] == [(c, r) for c in range(2) for r in range(3)]


def test_joint_is_p_r_times_the_all_pairs_softmax(tiny_clip):
    m = _method(tiny_clip)
    got = m.predict_rationales({"features": torch.zeros(1, 32)})["log_joint"].exp()[0]
    want = paper_joint(Z, U)
    for p, (c, r) in enumerate(zip(m.pair_class.tolist(), m.pair_set.tolist())):
        assert float(got[p]) == pytest.approx(want[(c, r)], rel=1e-5), (c, r)
    # Eq. 5's normaliser runs over all six prompts, so the product is not itself normalised
    assert sum(want.values()) != pytest.approx(1.0)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 6])
def test_top_k_max_voting_matches_the_paper_rule(tiny_clip, k):
    gen = torch.Generator().manual_seed(k)
    m = create_method("ecor", tiny_clip, CLASSES, {"visual_prompt": "none", "top_k": k}, bank=BANK_A)
    for _ in range(20):
        z = (torch.randn(3, generator=gen) * 2).tolist()
        u = (torch.randn(2, 3, generator=gen) * 2).tolist()
        zt, ut = torch.tensor([z]), torch.tensor([sum(u, [])])
        m.similarities = lambda f, zt=zt, ut=ut: {"rationale_logits": zt, "pair_logits": ut}
        out = m.predict_rationales({"features": torch.zeros(1, 32)})
        joint = paper_joint(z, u)
        want = paper_vote(joint, k)
        assert out["pred"].tolist() == [want], (z, u, k)
        # the rationale shown is the winning category's most probable pair
        best_r = max(range(3), key=lambda r: joint[(want, r)])
        assert out["rationale_set"].tolist() == [best_r]


def test_loss_is_eq_9_plus_eq_10_by_hand(tiny_clip):
    """Label 1 with true rationale r1: L = -log P(r1 | I) - log P(1 | r1, I), Eq. 5's softmax over 6."""
    m = _method(tiny_clip)
    batch = {"features": torch.zeros(1, 32), "labels": torch.tensor([1]), "rationales": torch.tensor([[0.0, 1.0, 0.0]])}
    terms = m.loss(batch)
    l_r = -math.log(_softmax(Z)[1])
    flat = [U[c][r] for c in range(2) for r in range(3)]
    l_c = -math.log(_softmax(flat)[1 * 3 + 1])
    assert float(terms["l_r"]) == pytest.approx(l_r, rel=1e-5)
    assert float(terms["l_c"]) == pytest.approx(l_c, rel=1e-5)
    assert float(terms["loss"]) == pytest.approx(l_r + l_c, rel=1e-5)
    # two images, two labels: the loss is the mean over images (L_CLIP's 1/N)
    two = {"features": torch.zeros(2, 32), "labels": torch.tensor([1, 0]),
           "rationales": torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])}
    l2 = (l_r + l_c - math.log(_softmax(Z)[0]) - math.log(_softmax(flat)[0])) / 2
    assert float(m.loss(two)["loss"]) == pytest.approx(l2, rel=1e-5)


def test_lambda_weights_only_the_conditional_term(tiny_clip):
    m = _method(tiny_clip, lam=0.25)
    batch = {"features": torch.zeros(1, 32), "labels": torch.tensor([0]), "rationales": torch.tensor([[0.0, 0.0, 1.0]])}
    flat = [U[c][r] for c in range(2) for r in range(3)]
    want = -math.log(_softmax(Z)[2]) - 0.25 * math.log(_softmax(flat)[2])
    assert float(m.loss(batch)["loss"]) == pytest.approx(want, rel=1e-5)


def test_ablations_by_hand(tiny_clip):
    """Table IV on the same logits: AB1 trains Eq. 9 only, AB3 is Eq. 5 alone, AB5 P(c|I) P(r|I),
    AB6 P(c|I) P(r|c,I), AB2 trains P(c|I) only."""
    w = [0.7, -0.3]  # class-prompt logits for P(c | I)
    flat = [U[c][r] for c in range(2) for r in range(3)]
    batch = {"features": torch.zeros(1, 32), "labels": torch.tensor([1]), "rationales": torch.tensor([[0.0, 1.0, 0.0]])}

    def with_class(m):
        base = m.similarities
        m.similarities = lambda f: {**base(f), "class_logits": torch.tensor([w]).expand(f.shape[0], -1)}
        return m

    ab1 = _method(tiny_clip, ablation="AB1")
    t = ab1.loss(batch)
    assert set(t) == {"loss", "l_r"} and float(t["loss"]) == pytest.approx(-math.log(_softmax(Z)[1]), rel=1e-5)
    ab3 = _method(tiny_clip, ablation="AB3")
    lj = ab3.predict_rationales(batch)["log_joint"].exp()[0]
    torch.testing.assert_close(lj, torch.tensor(_softmax(flat)))
    assert float(ab3.loss(batch)["loss"]) == pytest.approx(-math.log(_softmax(flat)[4]), rel=1e-5)
    ab5 = with_class(_method(tiny_clip, ablation="AB5"))
    lj = ab5.predict_rationales(batch)["log_joint"].exp()[0]
    for c in range(2):
        for r in range(3):
            assert float(lj[c * 3 + r]) == pytest.approx(_softmax(w)[c] * _softmax(Z)[r], rel=1e-5)
    assert float(ab5.loss(batch)["loss"]) == pytest.approx(-math.log(_softmax(Z)[1]) - math.log(_softmax(w)[1]),
                                                           rel=1e-5)
    ab6 = with_class(_method(tiny_clip, ablation="AB6"))
    lj = ab6.predict_rationales(batch)["log_joint"].exp()[0]
    for c in range(2):
        for r in range(3):
            assert float(lj[c * 3 + r]) == pytest.approx(_softmax(w)[c] * _softmax(flat)[c * 3 + r], rel=1e-5)
    ab2 = with_class(_method(tiny_clip, ablation="AB2"))
    t = ab2.loss(batch)
    assert set(t) == {"loss", "l_class"} and float(t["loss"]) == pytest.approx(-math.log(_softmax(w)[1]), rel=1e-5)
    ab4 = create_method("ecor", tiny_clip, CLASSES, {"visual_prompt": "none", "ablation": "AB4"}, bank=BANK_A)
    assert ab4.pair_texts[1] == "There is irregular dots because this is a photo of a melanoma."


def test_former_reading_grouped_softmax_over_bank_pairs(tiny_clip):
    """Our variant (pairs="bank", conditional_softmax="grouped"): P(c | r, I) normalised over the
    classes the bank pairs with r, so the joint sums to one; r0 and r2 have one class each."""
    m = create_method("ecor", tiny_clip, CLASSES, {"visual_prompt": "none", "pairs": "bank",
                                                   "conditional_softmax": "grouped"}, bank=BANK_A)
    assert list(zip(m.pair_class.tolist(), m.pair_set.tolist())) == [(0, 0), (0, 1), (1, 1), (1, 2)]
    z, u = [math.log(1.0), math.log(2.0), math.log(3.0)], [5.0, 0.0, math.log(3.0), -2.0]
    m.similarities = lambda f: {"rationale_logits": torch.tensor([z]), "pair_logits": torch.tensor([u])}
    lj = m.predict_rationales({"features": torch.zeros(1, 32)})["log_joint"].exp()
    p_r = _softmax(z)
    want = [p_r[0] * 1.0, p_r[1] * _softmax([u[1], u[2]])[0], p_r[1] * _softmax([u[1], u[2]])[1], p_r[2] * 1.0]
    torch.testing.assert_close(lj, torch.tensor([want]))
    assert float(lj.sum()) == pytest.approx(1.0)
    batch = {"features": torch.zeros(1, 32), "labels": torch.tensor([1]), "rationales": torch.tensor([[0.0, 1.0, 0.0]])}
    assert float(m.loss(batch)["loss"]) == pytest.approx(-math.log(p_r[1]) - math.log(0.75), rel=1e-5)


def test_grouped_and_all_conditional_softmax():
    logits = torch.tensor([[5.0, 0.0, math.log(3.0), -2.0]])
    group = torch.tensor([0, 1, 1, 2])
    torch.testing.assert_close(conditional_log_softmax(logits, group, 3, "grouped").exp(),
                               torch.tensor([[1.0, 0.25, 0.75, 1.0]]))
    e = [math.exp(v) for v in logits[0].tolist()]
    torch.testing.assert_close(conditional_log_softmax(logits, group, 3, "all").exp(),
                               torch.tensor([[x / sum(e) for x in e]]))
    shifted = logits + torch.tensor([[0.0, 7.0, 7.0, 0.0]])  # grouped: invariant to a per-group shift
    torch.testing.assert_close(grouped_log_softmax(shifted, group, 3), grouped_log_softmax(logits, group, 3))
    with pytest.raises(ConfigError, match="conditional_softmax='pairs'"):
        conditional_log_softmax(logits, group, 3, "pairs")


# Example B: class 0 has one strong pair, class 1 three weaker ones.
B_CLASS = torch.tensor([0, 1, 1, 1])
B_LOGJ = torch.log(torch.tensor([[0.4, 0.2, 0.2, 0.2]]))


def test_voting_beats_the_single_best_pair_and_ties_go_to_the_best_joint():
    assert top_k_vote(B_LOGJ, B_CLASS, 2, k=1).pred.tolist() == [0]
    d = top_k_vote(B_LOGJ, B_CLASS, 2, k=3)  # votes 1 : 2
    assert d.votes.tolist() == [[1.0, 2.0]] and d.pred.tolist() == [1] and d.pair.tolist() == [1]
    torch.testing.assert_close(d.scores, torch.tensor([[1 + 0.4 / 2, 2 + 0.2 / 2]]))
    d = top_k_vote(B_LOGJ, B_CLASS, 2, k=2)  # votes 1 : 1; max joint 0.4 vs 0.2
    assert d.votes.tolist() == [[1.0, 1.0]] and d.pred.tolist() == [0]
    assert top_k_vote(B_LOGJ, torch.tensor([1, 0, 0, 0]), 2, k=2).pred.tolist() == [1]
    assert top_k_vote(B_LOGJ, B_CLASS, 2, k=50).votes.tolist() == [[1.0, 3.0]]
    with pytest.raises(ConfigError, match="top_k"):
        top_k_vote(B_LOGJ, B_CLASS, 2, k=0)


def test_marginal_decision_sums_the_joint():
    d = marginal_decision(B_LOGJ, B_CLASS, 2)
    torch.testing.assert_close(d.scores.exp(), torch.tensor([[0.4, 0.6]]))
    assert d.pred.tolist() == [1] and d.pair.tolist() == [1]
    torch.testing.assert_close(grouped_logsumexp(B_LOGJ, B_CLASS, 3)[:, 2], torch.tensor([float("-inf")]))


def test_several_true_rationales_average_and_the_category_term_falls_back():
    pair_class, pair_set = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 2])
    r_logits = torch.log(torch.tensor([[1.0, 2.0, 3.0]]))
    truth = torch.tensor([[False, True, True], [False, False, True]])
    labels = torch.tensor([1, 0])
    l_r = multi_positive_nll(r_logits.expand(2, -1).log_softmax(-1), truth)
    expected_r = (-(math.log(2 / 6) + math.log(3 / 6)) / 2 - math.log(3 / 6)) / 2
    assert float(l_r) == pytest.approx(expected_r)
    pos = positive_pairs(labels, truth, pair_class, pair_set)
    # image 2 is class 0 but shows only r2, which class 0 is not paired with: every class-0 pair trains
    assert pos.tolist() == [[False, False, True, True], [True, True, False, False]]


def test_rows_without_a_positive_are_skipped():
    lp = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]]))
    assert float(multi_positive_nll(lp, torch.tensor([[True, False], [False, False]]))) == pytest.approx(math.log(2))
    assert float(multi_positive_nll(lp, torch.zeros(2, 2, dtype=torch.bool))) == 0.0


def test_dror_one_softmax_over_all_pairs(tiny_clip):
    d = create_method("dror", tiny_clip, CLASSES, {"visual_prompt": "none"}, bank=BANK_A)
    assert d.config.top_k == 1 and d.config.pairs == "all"
    flat = [U[c][r] for c in range(2) for r in range(3)]
    d.similarities = lambda f: {"rationale_logits": torch.zeros(1, 3), "pair_logits": torch.tensor([flat])}
    batch = {"features": torch.zeros(1, 32), "labels": torch.tensor([1]), "rationales": torch.tensor([[0.0, 1.0, 0.0]])}
    assert float(d.loss(batch)["loss"]) == pytest.approx(-math.log(_softmax(flat)[4]), rel=1e-5)
    out = d.predict_rationales(batch)
    best = max(range(6), key=lambda p: flat[p])
    assert out["pred"].tolist() == [best // 3] and out["rationale_set"].tolist() == [best % 3]


def test_predictions_fill_the_doubly_right_grid():
    pair_class, pair_set = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 2])
    lj = torch.log(torch.tensor([[0.1, 0.1, 0.2, 0.6], [0.5, 0.2, 0.2, 0.1], [0.1, 0.1, 0.2, 0.6]]))
    d = top_k_vote(lj, pair_class, 2, k=1)
    assert d.pred.tolist() == [1, 0, 1] and pair_set[d.pair].tolist() == [2, 0, 2]
    pred_r = torch.nn.functional.one_hot(pair_set[d.pair], 3)
    truth = torch.tensor([[0, 0, 1], [0, 1, 0], [1, 0, 0]])
    grid = rationale_grid(d.pred, torch.tensor([1, 0, 0]), pred_r, truth)
    # image 1: right class, r2 present (RR); image 2: right class, r0 absent (RW); image 3: wrong, wrong (WW)
    assert grid == {"RR": 1 / 3, "RW": 1 / 3, "WR": 0.0, "WW": 1 / 3, "n": 3, "truth": "image"}


def test_variants_and_the_inverse_model_by_hand(tiny_clip):
    """uniform_rationale_prior: P(r | I) := 1/3; AB6 with conditional_softmax="grouped": P(r | c, I)
    normalised within each class; the AB6 loss is -log P(c* | I) - log P(r* | c*, I)."""
    flat = [U[c][r] for c in range(2) for r in range(3)]
    w = [0.7, -0.3]
    batch = {"features": torch.zeros(1, 32), "labels": torch.tensor([1]), "rationales": torch.tensor([[0.0, 1.0, 0.0]])}
    uni = _method(tiny_clip, ablation="uniform_rationale_prior")
    lj = uni.predict_rationales(batch)["log_joint"].exp()[0]
    torch.testing.assert_close(lj, torch.tensor([p / 3 for p in _softmax(flat)]))
    for grouped in (False, True):
        m = _method(tiny_clip, ablation="AB6", **({"conditional_softmax": "grouped"} if grouped else {}))
        base = m.similarities
        m.similarities = lambda f, base=base: {**base(f), "class_logits": torch.tensor([w])}
        lj = m.predict_rationales(batch)["log_joint"].exp()[0]
        for c in range(2):
            p_r_c = _softmax(U[c]) if grouped else [_softmax(flat)[c * 3 + r] for r in range(3)]
            for r in range(3):
                assert float(lj[c * 3 + r]) == pytest.approx(_softmax(w)[c] * p_r_c[r], rel=1e-5)
        p_r_c = _softmax(U[1])[1] if grouped else _softmax(flat)[4]
        assert float(m.loss(batch)["loss"]) == pytest.approx(-math.log(_softmax(w)[1]) - math.log(p_r_c), rel=1e-5)


def test_class_prompts_and_training_defaults(tiny_clip):
    from conceptclip.prompts.text_features import encode_prompts

    m = create_method("ecor", tiny_clip, CLASSES, {"visual_prompt": "none", "ablation": "AB5"}, bank=BANK_A)
    want = encode_prompts(tiny_clip, ["This is a photo of a melanoma.", "This is a photo of a nevus."])
    torch.testing.assert_close(m.class_text, want)  # Prompt_c of AB2 / AB5 (Sec. IV-D)
    assert m.learned_state() == {}  # prompt features are recomputed, never checkpointed
    assert not hasattr(create_method("ecor", tiny_clip, CLASSES, {"visual_prompt": "none"}, bank=BANK_A), "class_text")
    # ours (docs/ecor.md): lr 0.3 chosen from {0.03, 0.1, 0.3} on PH2's validation pool (mean RR, seeds 1-3)
    assert m.train_defaults == {"optimizer": "adamw", "lr": 0.3, "weight_decay": 0.0, "batch_size": 32, "epochs": 20,
                                "warmup_epochs": 0}


def test_top_k_ties_at_the_cut_go_to_the_lower_pair_index():
    """Pairs (class 1, 0.3), (class 0, 0.3), (class 0, 0.4): top-2 keeps 0.4 and the first 0.3."""
    lj = torch.log(torch.tensor([[0.3, 0.3, 0.4]]))
    d = top_k_vote(lj, torch.tensor([1, 0, 0]), 2, k=2)
    assert d.votes.tolist() == [[1.0, 1.0]]
    d = top_k_vote(lj, torch.tensor([0, 1, 1]), 2, k=2)
    assert d.votes.tolist() == [[1.0, 1.0]] and d.pred.tolist() == [1]
