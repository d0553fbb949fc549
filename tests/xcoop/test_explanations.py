"""XCoOp's explanations as data: textual (distance of each learned class prompt to every clinical
concept, home classes, concept-class agreement, token alignment), visual (similarity maps through
explain/) and the t-SNE coordinates of learned vs concept tokens."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conceptclip.methods import create_method
from conceptclip.methods.xcoop import (
    Knowledge, concept_class_agreement, explain_textually, home_classes, prompt_token_tsne, token_alignment_stats,
)

CLASSES = ["melanoma", "nevus"]  # as in conftest.py (make_xcoop)


def _knowledge() -> Knowledge:
    concepts = {"a": ["x", "shared", "close"], "b": ["y", "shared", "close"]}
    freq = {"a": {"x": 0.9, "shared": 0.5, "close": 0.6}, "b": {"y": 0.3, "shared": 0.9, "close": 0.5}}
    return Knowledge(concepts, freq, {}, "test")


def test_home_classes_need_one_holder_or_a_frequency_margin():
    home = home_classes(_knowledge(), ["a", "b"], ["x", "y", "shared", "close", "absent"], margin=0.2)
    # x, y: one holder; shared: 0.9 vs 0.5 -> b; close: 0.6 vs 0.5 is within the margin; absent: nobody
    assert home == {0: 0, 1: 1, 2: 1}
    assert home_classes(_knowledge(), ["a", "b"], ["close"], margin=0.05) == {0: 0}


def test_concept_class_agreement_hand_computed():
    # class 0 is nearer to everything; centring removes its offset (row means 0.3 and 0.6)
    d = torch.tensor([[0.1, 0.5, 0.3],
                      [0.5, 0.5, 0.8]])
    # centred: [[-0.2, 0.2, 0.0], [-0.1, -0.1, 0.2]] -> nearest class per concept: 0, 1, 0
    assert concept_class_agreement(d, {0: 0, 1: 1, 2: 1}) == pytest.approx(2 / 3)
    assert concept_class_agreement(d, {0: 0, 1: 1}) == 1.0
    assert concept_class_agreement(d, {}) is None


def test_token_alignment_stats_at_the_concepts_and_off_them(make_xcoop):
    for soft in ("paper", "matched"):
        at = token_alignment_stats(make_xcoop(soft_prompt=soft, ctx_init="concepts"))
        for stats in at.values():
            assert stats["matched"] == pytest.approx(0.0, abs=1e-6)
            assert stats["nearest_token_match"] == 1.0
            assert stats["unmatched"] > 0
    method = make_xcoop(soft_prompt="matched", ctx_init="random")
    stats = token_alignment_stats(method)["melanoma"]
    v, e = method.prompt.class_context(0).detach(), method.token_targets[method.prompt.slices[0]]
    assert stats["matched"] == pytest.approx(float((v - e).norm(dim=1).mean()), rel=1e-5)
    # paper prompt at "a photo of a": 3 of its 4 tokens are the clinical tokens "a photo of" at their positions
    paper = token_alignment_stats(make_xcoop())["melanoma"]
    assert paper["nearest_token_match"] == 0.75


def test_textual_explanation_ranks_concepts_by_cosine_distance(tiny_clip, tmp_path):
    from conceptclip.knowledge.schema import Provenance, save_bank, simple_bank

    bank = save_bank(simple_bank("toy", {"melanoma": ["blue veil", "dark dots"], "nevus": ["round shape"]},
                                 Provenance(kind="annotation", citation="hand-written test bank")), tmp_path / "b.json")
    method = create_method("xcoop", tiny_clip, CLASSES, {"bank": str(bank)})
    tex = explain_textually(method)
    assert tex.concepts == ["blue veil", "dark dots", "round shape"]
    text = F.normalize(method.prompt(), dim=-1).detach()
    concepts = F.normalize(tiny_clip.encode_texts([f"a photo with {k}." for k in tex.concepts]), dim=-1)
    want = 1 - text.double() @ concepts.double().t()
    torch.testing.assert_close(tex.distance, want, rtol=1e-5, atol=1e-6)
    assert tex.ranking[0].tolist() == torch.argsort(want[0], stable=True).tolist()
    assert tex.home == {0: 0, 1: 0, 2: 1}  # every concept has exactly one holder
    assert tex.agreement == concept_class_agreement(tex.distance, tex.home)
    d = tex.to_dict(k=2)
    assert len(d["nearest_concepts"]["melanoma"]) == 2 and d["home_class"]["round shape"] == "nevus"
    assert set(d["token_alignment"]) == set(CLASSES)


def test_rationale_names_the_concepts_nearest_to_the_predicted_class_prompt(tiny_clip, tmp_path, batch):
    from conceptclip.knowledge.schema import Provenance, save_bank, simple_bank

    bank = save_bank(simple_bank("toy", {"melanoma": ["blue veil", "dark dots"], "nevus": ["round shape", "pale"]},
                                 Provenance(kind="annotation", citation="hand-written test bank")), tmp_path / "b.json")
    method = create_method("xcoop", tiny_clip, CLASSES, {"bank": str(bank)})
    assert all(len(v) == 3 for v in method.explain(batch)["nearest_concepts"].values())  # k = 3 by default
    out = method.explain(batch, k=2)
    tex = explain_textually(method)
    pred = method.logits(batch).argmax(1)
    assert len(out["rationale"]) == batch["features"].shape[0]
    for i, c in enumerate(pred.tolist()):
        names = [tex.concepts[int(j)] for j in tex.ranking[c, :2]]
        assert out["rationale"][i] == f"{CLASSES[c]}: its learned prompt lies nearest to {', '.join(names)}"


def test_concept_scores_are_cosines_with_the_concept_prompts(tiny_clip, tmp_path, batch):
    from conceptclip.knowledge.schema import Provenance, save_bank, simple_bank

    bank = save_bank(simple_bank("toy", {"melanoma": ["blue veil"], "nevus": ["round shape"]},
                                 Provenance(kind="annotation", citation="hand-written test bank")), tmp_path / "b.json")
    method = create_method("xcoop", tiny_clip, CLASSES, {"bank": str(bank)})
    scores = method.concept_scores(batch)
    concepts = F.normalize(tiny_clip.encode_texts(["a photo with blue veil.", "a photo with round shape."]), dim=-1)
    torch.testing.assert_close(scores, F.normalize(batch["features"], dim=-1) @ concepts.t(), rtol=1e-5, atol=1e-6)


def test_similarity_maps_of_the_learned_prompts(make_xcoop, tiny_clip):
    from conceptclip.explain import method_similarity_maps

    method = make_xcoop()
    pixels = torch.randn(2, 3, tiny_clip.image_size, tiny_clip.image_size, generator=torch.Generator().manual_seed(0))
    maps = method_similarity_maps(method, pixels)
    feats = tiny_clip.encode_image(pixels, patches=True)
    text = F.normalize(method.prompt(), dim=-1).detach()
    want = (F.normalize(feats.patches, dim=-1) @ text.t()).transpose(1, 2).reshape(2, 2, *feats.grid)
    torch.testing.assert_close(maps, want, rtol=1e-5, atol=1e-6)
    # the mean of a class's map is its local score (1/M) sum_m cos(f_m, g(V_d)) of Eq. 4
    from conceptclip.methods.xcoop import local_similarity

    torch.testing.assert_close(maps.flatten(2).mean(-1), local_similarity(feats.patches, text), rtol=1e-5, atol=1e-6)


def test_tsne_coordinates_of_learned_and_concept_tokens(make_xcoop):
    paper = prompt_token_tsne(make_xcoop(), perplexity=2, seed=0)
    assert paper.coords.shape == (16, 2) and paper.token[:5] == ["a", "photo", "of", "melanoma", "a"]
    assert paper.position.tolist() == [0, 1, 2, 3] * 4 and paper.class_index.tolist() == ([0] * 4 + [1] * 4) * 2
    method = make_xcoop(soft_prompt="matched", ctx_init="random")
    ts = prompt_token_tsne(method, perplexity=5, seed=0)
    n = sum(method.prompt.lengths)
    assert ts.coords.shape == (2 * n, 2) and torch.isfinite(ts.coords).all()
    assert ts.kind == ["learned"] * n + ["concept"] * n
    assert ts.class_index.tolist() == [0] * method.prompt.lengths[0] + [1] * method.prompt.lengths[1] + \
        [0] * method.prompt.lengths[0] + [1] * method.prompt.lengths[1]
    assert ts.token[:3] == ["a", "photo", "of"] and ts.token[n:n + 3] == ["a", "photo", "of"]
    # deterministic for a seed
    torch.testing.assert_close(prompt_token_tsne(method, perplexity=5, seed=0).coords, ts.coords)
    # the learned tokens start as a tight N(0, 0.02^2) cloud far from the concept tokens: in the map,
    # learned points are nearer each other than to the concept points
    c = ts.coords
    learned, concept = c[:n], c[n:]
    assert torch.cdist(learned, learned).mean() < torch.cdist(learned, concept).mean()
    assert math.isfinite(float(c.abs().max()))
