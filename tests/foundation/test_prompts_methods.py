"""Prompt splicing, CoOp gradients, zero-shot and linear probe on hand-checkable cases."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conceptclip.errors import ConfigError
from conceptclip.methods import available_methods, create_method
from conceptclip.prompts import ContextPrompt

CLASSES = ["melanoma", "common nevus", "x ray artefact"]  # a class name containing the placeholder word


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_splicing_the_placeholder_embeddings_reproduces_the_stock_text_path(tiny_clip, position):
    prompt = ContextPrompt(tiny_clip, CLASSES, n_ctx=4, position=position)
    x_id = tiny_clip.tokenize(["X"]).input_ids[0, 1]
    ctx = tiny_clip.token_embedding(x_id).expand(4, -1)  # context vectors = the embedding of "X"
    expected = tiny_clip.encode_texts(prompt.prompts)
    assert torch.allclose(prompt(ctx), expected, atol=1e-6)
    assert prompt.ctx_positions.shape == (3, 4)


def test_class_specific_and_batched_contexts(tiny_clip):
    csc = ContextPrompt(tiny_clip, CLASSES, n_ctx=3, class_specific=True)
    assert csc.ctx.shape == (3, 3, tiny_clip.text_width) and csc().shape == (3, tiny_clip.embed_dim)
    shared = ContextPrompt(tiny_clip, CLASSES, n_ctx=3)
    batched = shared(shared.ctx.unsqueeze(0).repeat(2, 1, 1) + torch.randn(2, 1, 1))
    assert batched.shape == (2, 3, tiny_clip.embed_dim)


def test_ctx_init_uses_word_embeddings(tiny_clip):
    p = ContextPrompt(tiny_clip, CLASSES, ctx_init="a photo of a")
    ids = tiny_clip.tokenize(["a photo of a"]).input_ids[0, 1:5]
    assert p.n_ctx == 4 and torch.equal(p.ctx.data, tiny_clip.token_embedding(ids))
    assert torch.allclose(p(), tiny_clip.encode_texts([f"a photo of a {c}." for c in CLASSES]), atol=1e-6)


def test_too_long_prompt_is_a_clear_error(tiny_clip):
    with pytest.raises(ConfigError, match="context length"):
        ContextPrompt(tiny_clip, CLASSES, n_ctx=tiny_clip.context_length)


def test_coop_gradients_reach_only_the_context(tiny_clip):
    coop = create_method("coop", tiny_clip, CLASSES, {"n_ctx": 4})
    assert [n for n, p in coop.named_parameters() if p.requires_grad] == ["prompt.ctx"]
    feats = torch.randn(5, tiny_clip.embed_dim)
    terms = coop.loss({"features": feats, "labels": torch.tensor([0, 1, 2, 0, 1])})
    terms["loss"].backward()
    assert coop.prompt.ctx.grad is not None and coop.prompt.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_clip.parameters())
    # Eq. 3: CE of logit_scale * cos(f(x), g(t_i))
    text = F.normalize(coop.prompt(), dim=-1)
    logits = tiny_clip.logit_scale * F.normalize(feats, dim=-1) @ text.t()
    assert torch.allclose(terms["loss"], F.cross_entropy(logits, torch.tensor([0, 1, 2, 0, 1])), atol=1e-6)


def test_zeroshot_is_cosine_to_class_prompts(tiny_clip):
    zs = create_method("zeroshot", tiny_clip, CLASSES, template="a photo of a {}.")
    text = F.normalize(tiny_clip.encode_texts([f"a photo of a {c}." for c in CLASSES]), dim=-1)
    feats = torch.randn(4, tiny_clip.embed_dim)
    expected = tiny_clip.logit_scale * F.normalize(feats, dim=-1) @ text.t()
    assert torch.allclose(zs.logits({"features": feats}), expected, atol=1e-5)
    assert zs.trainable_parameters() == []


def test_linear_probe_selects_c_on_validation_and_separates_classes(tiny_clip):
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, tiny_clip.embed_dim, generator=g) * 3
    y = torch.arange(3).repeat(10)
    x = centers[y] + torch.randn(30, tiny_clip.embed_dim, generator=g) * 0.3
    lp = create_method("linear_probe", tiny_clip, CLASSES)
    chosen = lp.fit_closed_form({"features": x, "labels": y}, {"features": x[:9], "labels": y[:9]})
    assert chosen["C"] in lp.config.c_grid and chosen["val_accuracy"] == 1.0
    assert (lp.logits({"features": x}).argmax(1) == y).all()


def test_method_registry_and_config_errors(tiny_clip):
    assert {"zeroshot", "linear_probe", "coop"} <= set(available_methods())
    with pytest.raises(ConfigError, match="unknown method 'koop'"):
        create_method("koop", tiny_clip, CLASSES)
    with pytest.raises(ConfigError, match="unknown option"):
        create_method("coop", tiny_clip, CLASSES, {"nctx": 4})
    with pytest.raises(ConfigError, match="n_ctx='four': expected a number"):
        create_method("coop", tiny_clip, CLASSES, {"n_ctx": "four"})
