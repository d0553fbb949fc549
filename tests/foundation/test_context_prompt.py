"""ContextPrompt built from a method config, and prompts that do not fit the text context."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from conceptclip.errors import ConfigError, PromptLengthError
from conceptclip.methods import create_method
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
    assert 0.01 < float(bare.ctx.detach().std()) < 0.03  # N(0, 0.02^2) default


def test_the_largest_fitting_n_ctx_keeps_class_name_and_suffix(tiny_clip):
    # tiny-clip: 32 tokens; "<sot> X*28 melanoma . <eot>" = 28 + 4 = 32 exactly
    assert tiny_clip.context_length == 32
    p = ContextPrompt(tiny_clip, ["melanoma", "nevus"], n_ctx=28)
    assert p.attention_mask.sum(1).tolist() == [32, 32] and p.eot_index.tolist() == [31, 31]
    words = [tiny_clip.tokenizer.convert_ids_to_tokens(row[-3:].tolist()) for row in p.input_ids]
    assert words == [["melanoma", ".", "<eot>"], ["nevus", ".", "<eot>"]]
    assert p.ctx_positions[0].tolist() == list(range(1, 29))


@pytest.mark.parametrize("n_ctx", [29, 30, 40])  # 29 would cut the ".", 30 the class name (prompts identical)
def test_a_prompt_cut_by_the_context_length_is_refused(tiny_clip, n_ctx):
    msg = (f"class 'melanoma': the prompt needs {n_ctx + 4} tokens \\({n_ctx} context \\+ 4 for the class name, "
           "'.' and start/end tokens\\) but only 32 are available .* use n_ctx <= 28")
    with pytest.raises(PromptLengthError, match=msg):
        ContextPrompt(tiny_clip, ["melanoma", "nevus"], n_ctx=n_ctx)


@pytest.mark.parametrize("position", ["middle", "front"])
def test_the_longest_class_name_sets_the_limit_at_every_position(tiny_clip, position):
    # "x ray artefact": x, ray, a ##r ##t ##e ##f ##a ##c ##t (10) + "." + <sot>/<eot> = 13 -> n_ctx <= 19
    ContextPrompt(tiny_clip, ["nevus", "x ray artefact"], n_ctx=19, position=position)
    with pytest.raises(ConfigError, match="class 'x ray artefact': .* 13 for the class name.* use n_ctx <= 19"):
        ContextPrompt(tiny_clip, ["nevus", "x ray artefact"], n_ctx=20, position=position)


def test_the_error_names_ctx_init_or_the_class_name_when_those_are_too_long(tiny_clip):
    with pytest.raises(ConfigError, match="use a ctx_init of at most 28 tokens"):
        ContextPrompt(tiny_clip, ["melanoma"], ctx_init="a photo of a " * 8)  # 32 context tokens
    with pytest.raises(ConfigError, match="needs at least 34 tokens .* shorten the class name"):
        ContextPrompt(tiny_clip, ["blue " * 40], n_ctx=2)
    with pytest.raises(ConfigError, match="class 'melanoma'.* use n_ctx <= 28"):  # through a method config
        create_method("kgcoop", tiny_clip, ["melanoma", "nevus"], {"n_ctx": 30, "ctx_init": ""})


def test_lite_minilm_prompts_are_checked_the_same_way(lite):
    # MiniLM WordPiece, 77 tokens: "[CLS] X*72 les ##ion . [SEP]" = 72 + 5 = 77 exactly
    p = ContextPrompt(lite, ["skin", "lesion"], n_ctx=72)
    assert p.attention_mask.sum(1).tolist() == [76, 77] and p.eot_index.tolist() == [75, 76]
    assert lite.tokenizer.convert_ids_to_tokens(p.input_ids[1, -4:].tolist()) == ["les", "##ion", ".", "[SEP]"]
    with pytest.raises(ConfigError, match="class 'lesion': the prompt needs 78 tokens .* only 77 .* n_ctx <= 72"):
        ContextPrompt(lite, ["skin", "lesion"], n_ctx=73)
