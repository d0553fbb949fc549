"""XCoOp's terms against values computed here from the paper's formulas with explicit loops and
plain math (never the module's helpers): L_T (Eqs. 1-2), L_P (Eq. 3), L_PPA, L_IPA and the
prediction score (Eq. 4), the total; and the named options that keep our earlier reading."""

from __future__ import annotations

import math

import pytest
import torch

from conceptclip.methods.xcoop import (
    ipa_logits, prompt_alignment_loss, token_contrastive_loss, token_distance_loss,
)

CLASSES = ["melanoma", "nevus"]  # as in conftest.py
PROMPTS = {"melanoma": "a photo of melanoma, which has blue veil.", "nevus": "a photo of nevus, which has round shape."}
TAU, LAM = 0.9, 0.1


# -- plain-math helpers (lists of floats) ------------------------------------------------------
def cos(a, b) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def neg_log_softmax(scores: list[float], target: int) -> float:
    return -(scores[target] - math.log(sum(math.exp(s) for s in scores)))


def l_t(V, Q, tau=TAU) -> float:
    """Eqs. 1-2: V[d][l], Q[k][l] token vectors; cos(Q_k, V_d) = sum_l cos(q_kl, v_dl); mean over d."""
    D = len(V)
    out = 0.0
    for d in range(D):
        scores = [sum(cos(Q[k][l], V[d][l]) for l in range(len(V[d]))) / tau for k in range(D)]
        out += neg_log_softmax(scores, d)
    return out / D


def l_p(G_V, G_Q, tau=TAU) -> float:
    """Eq. 3: sum over d of CE(softmax_k(cos(g(Q_k), g(V_d)) / tau), y_d)."""
    D = len(G_V)
    return sum(neg_log_softmax([cos(G_Q[k], G_V[d]) / tau for k in range(D)], d) for d in range(D))


def ipa_scores(p, F, G_V, s, lam=LAM) -> list[float]:
    """Eq. 4's score per class: s [cos(p, g(V_d)) + lam (1/M) sum_m cos(f_m, g(V_d))]."""
    return [s * (cos(p, w) + lam * sum(cos(f, w) for f in F) / len(F)) for w in G_V]


def rows(t: torch.Tensor):
    return t.detach().double().tolist()


# -- the pure functions ---------------------------------------------------------------------
def test_token_level_alignment_hand_computed():
    V = [[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, 0.0]]]  # 2 classes, 2 positions, width 2
    Q = [[[2.0, 0.0], [1.0, 1.0]], [[0.0, 3.0], [1.0, 0.0]]]
    # cos(Q_0, V_0) = 1 + 1/sqrt2, cos(Q_1, V_0) = 0 + 0; cos(Q_0, V_1) = 1/sqrt2 + 1/sqrt2, cos(Q_1, V_1) = 1/sqrt2 + 1
    r = 1 / math.sqrt(2)
    row0 = math.log(1 + math.exp(-(1 + r) / TAU))
    row1 = math.log(1 + math.exp((2 * r - (r + 1)) / TAU))
    assert math.isclose(l_t(V, Q), (row0 + row1) / 2, rel_tol=1e-12)
    got = token_contrastive_loss(torch.tensor(V), torch.tensor(Q))  # the paper's tau = 0.9 by default
    assert math.isclose(float(got), (row0 + row1) / 2, rel_tol=1e-6)
    # per-token cosines: rescaling any token changes nothing; the temperature does
    scaled = torch.tensor(V) * torch.tensor([[[3.0], [0.5]], [[2.0], [7.0]]])
    assert math.isclose(float(token_contrastive_loss(scaled, torch.tensor(Q), TAU)), (row0 + row1) / 2, rel_tol=1e-6)
    assert math.isclose(float(token_contrastive_loss(torch.tensor(V), torch.tensor(Q), 0.5)), l_t(V, Q, 0.5),
                        rel_tol=1e-6)


def test_prompt_level_alignment_sums_over_classes():
    soft = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    hard = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    # cosines: w0.h0 = 0.6, w0.h1 = 0, w1.h0 = 1.0, w1.h1 = 0.8
    row0 = math.log(1 + math.exp(-0.6 / TAU))  # 0.414370
    row1 = math.log(1 + math.exp(0.2 / TAU))  # 0.810418
    assert math.isclose(l_p(rows(soft), rows(hard)), row0 + row1, rel_tol=1e-7)
    assert math.isclose(float(prompt_alignment_loss(soft, hard)), 1.224788, abs_tol=1e-6)  # tau 0.9, sum
    # option prompt_reduction="mean" (our earlier reading): divided by the number of classes
    assert math.isclose(float(prompt_alignment_loss(soft, hard, TAU, "mean")), 0.612394, abs_tol=1e-6)
    assert math.isclose(float(prompt_alignment_loss(3 * soft, 0.5 * hard, TAU)), row0 + row1, rel_tol=1e-6)


def test_image_prompt_score_hand_computed():
    text = [[1.0, 0.0], [0.6, 0.8]]
    p, F = [3.0, 4.0], [[1.0, 0.0], [0.0, 2.0]]  # one image: global feature and two patches
    # cos(p, w) = 0.6 / 1.0; patch cosines with w0: 1, 0 (mean 0.5), with w1: 0.6, 0.8 (mean 0.7)
    want = [10 * (0.6 + 0.1 * 0.5), 10 * (1.0 + 0.1 * 0.7)]
    assert ipa_scores(p, F, text, 10.0) == pytest.approx(want)
    got = ipa_logits(torch.tensor([p]), torch.tensor([F]), torch.tensor(text), 10.0)  # lambda = 0.1 by default
    assert got[0].tolist() == pytest.approx(want, rel=1e-6)
    maxed = ipa_logits(torch.tensor([p]), torch.tensor([F]), torch.tensor(text), 10.0, 0.1, "max")
    assert maxed[0].tolist() == pytest.approx([10 * (0.6 + 0.1 * 1.0), 10 * (1.0 + 0.1 * 0.8)], rel=1e-6)


def test_squared_token_distance_option():
    context = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    targets = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 3.0]])
    # ||(1,0)||^2 = 1, ||(0,2)||^2 = 4, ||(1,-2)||^2 = 5 -> (1 + 4 + 5) / 3
    assert math.isclose(float(token_distance_loss(context, targets)), 10 / 3, rel_tol=1e-6)
    assert float(token_distance_loss(targets, targets)) == 0.0


# -- the method, recomputed from the backbone's own tokens -------------------------------------
def _sequences(tiny_clip):
    """V at initialisation (the token embeddings of "a photo of a [class]."), Q (the clinical prompts),
    both padded with the tokenizer's pad token to one length, as lists."""
    soft = tiny_clip.tokenize([f"a photo of a {c}." for c in CLASSES])
    clin = tiny_clip.tokenize([PROMPTS[c] for c in CLASSES])
    length = max(soft.input_ids.shape[1], clin.input_ids.shape[1])
    pad = tiny_clip.tokenizer.pad_token_id

    def embed(ids):
        ids = torch.cat([ids, torch.full((ids.shape[0], length - ids.shape[1]), pad)], 1)
        return rows(tiny_clip.token_embedding(ids))

    return embed(soft.input_ids), embed(clin.input_ids)


def test_method_terms_and_total_recomputed_from_the_paper(make_xcoop, batch, tiny_clip):
    method = make_xcoop()
    terms = method.loss(batch)
    V, Q = _sequences(tiny_clip)
    G_V = rows(tiny_clip.encode_texts([f"a photo of a {c}." for c in CLASSES]))  # the soft prompt starts there
    G_Q = rows(tiny_clip.encode_texts([PROMPTS[c] for c in CLASSES]))
    s = float(tiny_clip.logit_scale)
    lt, lp = l_t(V, Q), l_p(G_V, G_Q)
    feats, patches, labels = rows(batch["features"]), rows(batch["patches"]), batch["labels"].tolist()
    ipa = sum(neg_log_softmax(ipa_scores(feats[i], patches[i], G_V, s), labels[i]) for i in range(len(labels)))
    ipa /= len(labels)
    ce = sum(neg_log_softmax(ipa_scores(feats[i], patches[i], G_V, s, lam=0.0), labels[i])
             for i in range(len(labels))) / len(labels)
    for name, want in (("token", lt), ("prompt", lp), ("ipa", ipa), ("ce", ce), ("ppa", (lt + lp) / 2),
                       ("loss", (lt + lp) / 2 + ipa)):
        assert math.isclose(float(terms[name]), want, rel_tol=2e-5, abs_tol=1e-6), name
    # prediction: the same global + local score (Sec. 2.3)
    got = method.logits(batch)
    for i in range(len(labels)):
        for d, want in enumerate(ipa_scores(feats[i], patches[i], G_V, s)):
            assert math.isclose(float(got[i, d]), want, rel_tol=1e-5, abs_tol=1e-5)


def test_options_of_our_earlier_reading(make_xcoop, batch, tiny_clip):
    s = float(tiny_clip.logit_scale)
    G_V = rows(tiny_clip.encode_texts([f"a photo of a {c}." for c in CLASSES]))
    feats, patches, labels = rows(batch["features"]), rows(batch["patches"]), batch["labels"].tolist()
    n = len(labels)

    def mean_ce(score) -> float:
        return sum(neg_log_softmax(score(i), labels[i]) for i in range(n)) / n

    ce = mean_ce(lambda i: [s * cos(feats[i], w) for w in G_V])
    local = mean_ce(lambda i: [s * sum(cos(f, w) for f in patches[i]) / len(patches[i]) for w in G_V])
    local_max = mean_ce(lambda i: [s * max(cos(f, w) for f in patches[i]) for w in G_V])
    base = make_xcoop()
    t = base.loss(batch)
    two = make_xcoop(ipa="two_ce", weight_token=1.0, weight_prompt=1.0, prompt_reduction="mean").loss(batch)
    assert math.isclose(float(two["ipa"]), ce + LAM * local, rel_tol=2e-5)
    assert math.isclose(float(two["prompt"]), float(t["prompt"]) / 2, rel_tol=1e-5)
    assert math.isclose(float(two["loss"]), ce + LAM * local + float(t["token"]) + float(t["prompt"]) / 2, rel_tol=2e-5)
    maxed = make_xcoop(local_pool="max", ipa="two_ce").loss(batch)
    assert math.isclose(float(maxed["local"]), local_max, rel_tol=2e-5)
    squared = make_xcoop(token_loss="squared").loss(batch)
    V, _ = _sequences(tiny_clip)
    targets = base.token_targets  # the clinical token at each soft token's position (pinned in test_method)
    want = sum(sum((a - b) ** 2 for a, b in zip(V[c][1 + j], rows(targets[4 * c + j])))
               for c in range(2) for j in range(4)) / 8
    assert math.isclose(float(squared["token"]), want, rel_tol=1e-5)
    heavy = make_xcoop(weight_token=2.0, weight_prompt=0.25, weight_ipa=3.0).loss(batch)
    assert math.isclose(float(heavy["loss"]), 2 * float(t["token"]) + 0.25 * float(t["prompt"]) + 3 * float(t["ipa"]),
                        rel_tol=2e-5)
    glob = make_xcoop(inference="global").logits(batch)
    for i in range(n):
        for d, w in enumerate(G_V):
            assert math.isclose(float(glob[i, d]), s * cos(feats[i], w), rel_tol=1e-5, abs_tol=1e-5)


@pytest.mark.parametrize("switch, name", [("token_alignment", "token"), ("prompt_alignment", "prompt"),
                                          ("local_alignment", "local")])
def test_switched_off_terms_are_reported_but_not_in_the_total_nor_the_gradient(make_xcoop, batch, switch, name):
    full, off = make_xcoop(), make_xcoop(**{switch: False})
    t_full, t_off = full.loss(batch), off.loss(batch)
    torch.testing.assert_close(t_off[name], t_full[name])  # still monitored
    if name == "local":  # L_IPA falls back to the global CE, and prediction to the global score
        torch.testing.assert_close(t_off["ipa"], t_off["ce"])
        torch.testing.assert_close(t_off["loss"], t_full["ppa"] + t_full["ce"])
        torch.testing.assert_close(off.logits(batch), make_xcoop(inference="global").logits(batch))
    else:
        torch.testing.assert_close(t_off["loss"], t_full["loss"] - 0.5 * t_full[name], rtol=1e-5, atol=1e-6)
    t_off["loss"].backward()
    t_full["loss"].backward()
    assert float((off.prompt.ctx.grad - full.prompt.ctx.grad).abs().max()) > 1e-7, name
