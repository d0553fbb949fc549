"""ContextPrompt built from a method config, and prompts that do not fit the text context."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from conceptclip.methods.cocoop import CoCoOpConfig
from conceptclip.methods.coop import CoOpConfig
from conceptclip.prompts import ContextPrompt

CLASSES = ["melanoma", "common nevus"]


def test_from_config_reads_every_coop_field(tiny_clip):
    config = CoOpConfig(n_ctx=3, class_token_position="front", class_specific=True, init_std=0.5)
    torch.manual_seed(0)
    p = ContextPrompt.from_config(tiny_clip, CLASSES, config)
    torch.manual_seed(0)
    direct = ContextPrompt(tiny_clip, CLASSES, n_ctx=3, position="front", class_specific=True, init_std=0.5)
    assert p.n_ctx == 3 and p.position == "front" and p.class_specific
    assert p.prompts == ["melanoma X X X.", "common nevus X X X."]
    assert p.ctx.shape == (2, 3, tiny_clip.text_width) and torch.equal(p.ctx.data, direct.ctx.data)


def test_from_config_keeps_constructor_defaults_for_missing_fields(tiny_clip):
    # CoCoOp has no class_token_position / class_specific: class at the end, one shared context
    p = ContextPrompt.from_config(tiny_clip, CLASSES, CoCoOpConfig())
    assert p.n_ctx == 4 and p.position == "end" and not p.class_specific
    assert p.prompts == ["X X X X melanoma.", "X X X X common nevus."]
    ids = tiny_clip.tokenize(["a photo of a"]).input_ids[0, 1:5]
    assert torch.equal(p.ctx.data, tiny_clip.token_embedding(ids))  # ctx_init "a photo of a"
    bare = ContextPrompt.from_config(tiny_clip, CLASSES, SimpleNamespace(ctx_init=""))  # "" = random init
    assert bare.n_ctx == 16 and bare.ctx.shape == (16, tiny_clip.text_width)
    assert 0.01 < float(bare.ctx.std()) < 0.03  # N(0, 0.02^2) default
