"""Textual explanation of learned prompts and knowledge interventions, on tiny-clip and on
hand-computed logits."""

from __future__ import annotations

import math

import pytest
import torch

from conceptclip.errors import ConfigError
from conceptclip.explain import ConceptEdit, ConceptPromptClassifier, explain_prompt, knowledge_intervention
from conceptclip.prompts import encode_prompts

CLASSES = ["melanoma", "nevus", "keratosis"]


@pytest.fixture(scope="module")
def coop_photo(tiny_clip):
    """CoOp whose context is initialised from 'a photo of a': its prompts are real sentences."""
    from conceptclip.methods import create_method

    return create_method("coop", tiny_clip, CLASSES, {"ctx_init": "a photo of a"}).eval()


def test_context_initialised_from_words_decodes_to_those_words(coop_photo):
    exp = explain_prompt(coop_photo, torch.eye(16)[:2], ["x", "y"], k_tokens=2)
    assert len(exp.context_tokens) == 1  # one shared context
    nearest = [vec[0] for vec in exp.context_tokens[0]]
    assert [t for t, _ in nearest] == ["a", "photo", "of", "a"]
    assert all(d == 0.0 for _, d in nearest)
    assert all(vec[1][1] > 0 for vec in exp.context_tokens[0])  # the second nearest is another word


def test_class_prompt_is_nearest_its_own_sentence(tiny_clip, coop_photo):
    concepts = [f"a photo of a {c}." for c in reversed(CLASSES)] + ["a photo of a blue veil."]
    feats = encode_prompts(tiny_clip, concepts)
    exp = explain_prompt(coop_photo, feats, concepts)
    assert exp.distance.shape == (3, 4)
    # learned prompt of class c == the text "a photo of a c." -> distance 0 and ranked first
    for i, c in enumerate(CLASSES):
        j = concepts.index(f"a photo of a {c}.")
        assert abs(float(exp.distance[i, j])) < 1e-5
        assert int(exp.ranking[i, 0]) == j
        assert exp.nearest_concepts(1)[c][0][0] == concepts[j]
    d = exp.to_dict(k=2)
    assert list(d["nearest_concepts"]) == CLASSES and len(d["nearest_concepts"]["nevus"]) == 2
    assert d["context_tokens"][0][1][0]["token"] == "photo"


def test_class_specific_contexts_are_listed_per_class(tiny_clip):
    from conceptclip.methods import create_method

    m = create_method("coop", tiny_clip, CLASSES, {"n_ctx": 2, "class_specific": True})
    exp = explain_prompt(m, torch.randn(2, 16), ["a", "b"], k_tokens=1)
    assert len(exp.context_tokens) == 3 and all(len(ctx) == 2 for ctx in exp.context_tokens)
    with pytest.raises(ConfigError, match="for 3 concepts"):
        explain_prompt(m, torch.randn(2, 16), ["a", "b", "c"])


# -- interventions ---------------------------------------------------------------------------

SET = {"melanoma": ["blue veil", "irregular streaks"], "nevus": ["regular network"]}


def test_edits_remove_replace_negate():
    assert ConceptEdit("remove", "blue veil").apply(SET) == {"melanoma": ["irregular streaks"],
                                                           "nevus": ["regular network"]}
    assert ConceptEdit("replace", "blue veil", "pink veil").apply(SET)["melanoma"] == ["pink veil", "irregular streaks"]
    assert ConceptEdit("negate", "regular network").apply(SET)["nevus"] == ["no regular network"]
    assert SET["melanoma"] == ["blue veil", "irregular streaks"]  # input untouched
    with pytest.raises(ConfigError, match="in no concept list"):
        ConceptEdit("remove", "dots").apply(SET)
    with pytest.raises(ConfigError, match="needs a replacement"):
        ConceptEdit("replace", "blue veil")
    with pytest.raises(ConfigError, match="expected 'remove'"):
        ConceptEdit("drop", "blue veil")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not classes"):
        ConceptEdit("remove", "blue veil", classes=("lentigo",)).apply(SET)


def test_intervention_effect_hand_computed():
    # logits of one image = number of concepts of each class: before (2, 1), after removing
    # "blue veil" (1, 1). p(melanoma) = e^2 / (e^2 + e) = 0.731059 -> 0.5, delta -0.231059;
    # the argmax stays 0 (a tie resolves to the first class): no flip
    def logits_fn(concepts):
        return torch.tensor([[float(len(concepts["melanoma"])), float(len(concepts["nevus"]))]])

    res = knowledge_intervention(logits_fn, SET, ConceptEdit("remove", "blue veil"))
    p = math.exp(2) / (math.exp(2) + math.exp(1))
    assert abs(float(res.effect.p_before[0]) - p) < 1e-9
    assert abs(float(res.effect.delta[0]) - (0.5 - p)) < 1e-9
    assert not bool(res.effect.flipped[0])
    assert res.concepts_after["melanoma"] == ["irregular streaks"]
    s = res.summary()
    assert s["kind"] == "remove" and s["n"] == 1 and abs(s["mean_delta"] - (0.5 - p)) < 1e-9
    # with a 0.5 bias for melanoma: (2.5, 2) -> melanoma; without "blue veil" (1.5, 2) -> nevus
    both = {"melanoma": ["blue veil", "streaks"], "nevus": ["regular network", "dots"]}
    flip = knowledge_intervention(lambda c: logits_fn(c) + torch.tensor([[0.5, 0.0]]), both,
                                  ConceptEdit("remove", "blue veil"))
    assert bool(flip.effect.flipped[0])


def test_concept_prompt_classifier_rebuilds_text_features(tiny_clip):
    clf = ConceptPromptClassifier(tiny_clip, ["melanoma", "nevus"])
    concepts = {"melanoma": ["blue veil", "streaks"], "nevus": []}
    assert clf.prompts(concepts) == ["an image of a melanoma with blue veil, streaks.", "an image of a nevus."]
    feats = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    edit = ConceptEdit("negate", "streaks")
    res = knowledge_intervention(clf.logits_fn(feats), concepts, edit)
    text = encode_prompts(tiny_clip, ["an image of a melanoma with blue veil, no streaks.", "an image of a nevus."])
    expected = float(tiny_clip.logit_scale) * torch.nn.functional.normalize(feats, dim=-1) @ text.t()
    assert torch.allclose(res.logits_after, expected, atol=1e-5)
    assert not torch.allclose(res.logits_before, res.logits_after)
    assert torch.allclose(res.logits_before[:, 1], res.logits_after[:, 1])  # nevus prompt unchanged
    with pytest.raises(ConfigError, match="no entry for classes"):
        clf.prompts({"melanoma": []})
