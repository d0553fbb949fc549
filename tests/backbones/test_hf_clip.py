"""`hf:` / `tiny-clip` backbone: equality with transformers' stock CLIP paths, tokenisation,
preprocessing, loading errors, gradients, attention maps and visual prompt tokens."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image

from conceptclip.backbones import create_backbone
from conceptclip.backbones.base import TokenBatch
from conceptclip.backbones.hf_clip import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    HFCLIPBackbone,
    _image_processor,
    tiny_vocab,
)
from conceptclip.errors import BackboneError

MEAN = np.array(OPENAI_CLIP_MEAN)
STD = np.array(OPENAI_CLIP_STD)
TEXTS = ["a photo of melanoma", "a dermoscopy image of a benign nevus with regular pigment network", "Zebra"]


def _pixels(b: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# -- text -------------------------------------------------------------------------------------


def test_encode_text_equals_stock_get_text_features(tiny_clip):
    tok = tiny_clip.tokenize(TEXTS + ["melanoma " * 60])  # the last one is truncated
    stock = tiny_clip.model.get_text_features(input_ids=tok.input_ids, attention_mask=tok.attention_mask)
    stock = getattr(stock, "pooler_output", stock)
    ours = tiny_clip.encode_text(tok)
    spliced = tiny_clip.encode_text(tok, inputs_embeds=tiny_clip.token_embedding(tok.input_ids))
    assert ours.shape == (4, tiny_clip.embed_dim) == (4, 16)
    torch.testing.assert_close(ours, stock, atol=1e-6, rtol=0)
    torch.testing.assert_close(spliced, stock, atol=1e-6, rtol=0)


def test_inputs_embeds_are_read_causally_up_to_the_end_token(tiny_clip):
    tok = tiny_clip.tokenize(["a photo of melanoma", "a photo of a benign nevus"])  # eot at 5 and 7
    emb = tiny_clip.token_embedding(tok.input_ids).detach()
    base = tiny_clip.encode_text(tok, emb)
    bump = torch.randn(32, generator=torch.Generator().manual_seed(0))  # not constant: LayerNorm removes that
    after = emb.clone()
    after[0, 6] += bump  # a padding position after row 0's end token: invisible to it
    out = tiny_clip.encode_text(tok, after)
    torch.testing.assert_close(out[0], base[0], atol=1e-6, rtol=0)
    before = emb.clone()
    before[0, 2] += bump  # a context position before the end token changes the embedding
    assert (tiny_clip.encode_text(tok, before)[0] - base[0]).abs().max() > 1e-3
    torch.testing.assert_close(tiny_clip.encode_text(tok, before)[1], base[1], atol=1e-6, rtol=0)


def test_tokenize_ids_eot_and_padding(tiny_clip):
    v = tiny_vocab()
    tok = tiny_clip.tokenize(["A photo of Melanoma", "zebra"])
    want0 = [v["<sot>"], v["a"], v["photo"], v["of"], v["melanoma"], v["<eot>"]]
    want1 = [v["<sot>"], v["z"], v["##e"], v["##b"], v["##r"], v["##a"], v["<eot>"]]  # spelled out
    assert tok.input_ids.shape == (2, 7)  # padded to the longest text
    assert tok.input_ids[0].tolist() == want0 + [v["<pad>"]]
    assert tok.input_ids[1].tolist() == want1
    assert tok.attention_mask.tolist() == [[1] * 6 + [0], [1] * 7]
    assert tok.eot_index.tolist() == [5, 6]
    cafe = tiny_clip.tokenize(["Café"]).input_ids[0].tolist()  # accents stripped
    assert cafe == [v["<sot>"], v["c"], v["##a"], v["##f"], v["##e"], v["<eot>"]]


def test_tokenize_truncation_keeps_the_end_token(tiny_clip):
    v = tiny_vocab()
    tok = tiny_clip.tokenize(["lesion " * 100, "mass"])
    assert tok.input_ids.shape == (2, tiny_clip.context_length) == (2, 32)
    assert tok.input_ids[0, 0] == v["<sot>"] and tok.input_ids[0, -1] == v["<eot>"]
    assert (tok.input_ids[0, 1:-1] == v["lesion"]).all()
    assert tok.eot_index.tolist() == [31, 2]


@pytest.mark.parametrize("bad", ["just one string", [], ["ok", 3]])
def test_tokenize_rejects_bad_input(tiny_clip, bad):
    with pytest.raises(BackboneError, match="tokenize"):
        tiny_clip.tokenize(bad)


def test_encode_text_rejects_wrong_inputs_embeds_shape(tiny_clip):
    tok = tiny_clip.tokenize(["a photo"])
    with pytest.raises(BackboneError, match=r"inputs_embeds must be \(T, L, text_width\)"):
        tiny_clip.encode_text(tok, torch.zeros(1, tok.input_ids.shape[1], 7))


def test_gradients_reach_inputs_embeds_but_no_frozen_parameter(tiny_clip):
    tok = tiny_clip.tokenize(["a photo of melanoma"])
    emb = tiny_clip.token_embedding(tok.input_ids).detach().requires_grad_(True)
    tiny_clip.encode_text(tok, emb).sum().backward()
    assert emb.grad is not None and emb.grad[0, :6].abs().sum(-1).min() > 0  # every position to eot
    assert all(not p.requires_grad and p.grad is None for p in tiny_clip.parameters())


def test_unfrozen_backbone_does_train(tiny_clip):
    bb = create_backbone("tiny-clip", freeze=False)
    bb.encode_text(bb.tokenize(["a photo"])).sum().backward()
    assert bb.model.text_projection.weight.grad is not None
    assert bb.model.visual_projection.weight.grad is None  # the image tower was not used


# -- images -----------------------------------------------------------------------------------


def test_encode_image_global_equals_stock_and_patches_are_projected_tokens(tiny_clip):
    px = _pixels()
    feats = tiny_clip.encode_image(px, patches=True)
    m = tiny_clip.model
    stock = m.get_image_features(pixel_values=px)
    torch.testing.assert_close(feats.global_, getattr(stock, "pooler_output", stock), atol=1e-6, rtol=0)
    hidden = m.vision_model(pixel_values=px).last_hidden_state  # (B, 1 + 16, 32)
    want = m.visual_projection(m.vision_model.post_layernorm(hidden[:, 1:]))
    assert feats.grid == (4, 4) and feats.patches.shape == (3, 16, 16)
    torch.testing.assert_close(feats.patches, want, atol=1e-6, rtol=0)
    assert feats.patch_map().shape == (3, 16, 4, 4)
    assert tiny_clip.encode_image(px).patches is None


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (3, 32, 32), (2, 1, 32, 32)])
def test_encode_image_rejects_wrong_pixel_shape(tiny_clip, shape):
    with pytest.raises(BackboneError, match=r"expects pixels \(B, 3, 32, 32\)"):
        tiny_clip.encode_image(torch.zeros(shape))


def test_preprocess_matches_hand_pipeline_on_mixed_images(tiny_clip, pil_images):
    px = tiny_clip.preprocess(pil_images)
    assert px.shape == (4, 3, 32, 32) and px.dtype == torch.float32
    # RGB 64x40: shortest side 40 -> 32, long side int(32 * 64 / 40) = 51, centre crop from x = 9
    im = pil_images[0].resize((51, 32), Image.BICUBIC).crop((9, 0, 41, 32))
    want = (np.asarray(im, dtype=np.float64) / 255 - MEAN) / STD
    torch.testing.assert_close(px[0], torch.tensor(want.transpose(2, 0, 1), dtype=torch.float32), atol=1e-5, rtol=0)
    # already 32x32: only normalisation
    want3 = (np.asarray(pil_images[3], dtype=np.float64) / 255 - MEAN) / STD
    torch.testing.assert_close(px[3], torch.tensor(want3.transpose(2, 0, 1), dtype=torch.float32), atol=1e-5, rtol=0)
    # grey image: the three channels carry the same intensity, normalised per channel
    grey = px[2] * torch.tensor(STD)[:, None, None].float() + torch.tensor(MEAN)[:, None, None].float()
    torch.testing.assert_close(grey[0], grey[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(grey[0], grey[2], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("image", "value"),
    [
        (Image.new("RGBA", (20, 30), (10, 20, 30, 0)), 1.0),  # transparent -> composited on white
        (Image.new("L", (33, 70), 128), 128 / 255),
        (Image.fromarray(np.full((40, 40), 65535, dtype=np.uint16)), 1.0),  # 16-bit full scale
        (Image.fromarray(np.full((40, 40), 257 * 51, dtype=np.uint16)), 51 / 255),
    ],
)
def test_preprocess_constant_images_give_hand_computed_values(tiny_clip, image, value):
    px = tiny_clip.preprocess([image])[0]
    want = torch.tensor((value - MEAN) / STD, dtype=torch.float32)
    torch.testing.assert_close(px, want[:, None, None].expand(3, 32, 32), atol=1e-5, rtol=0)


def test_preprocess_rejects_non_images(tiny_clip):
    with pytest.raises(BackboneError, match="item 1 is a ndarray"):
        tiny_clip.preprocess([Image.new("RGB", (8, 8)), np.zeros((8, 8, 3))])
    with pytest.raises(BackboneError, match="no images"):
        tiny_clip.preprocess([])


# -- loading and errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("hf:/nonexistent/clip-folder", "folder /nonexistent/clip-folder not found"),
        ("hf:someone/clip-model-that-does-not-exist", "HF_HUB_OFFLINE=1 and it is not in the local cache"),
        ("hf:clip-model-that-does-not-exist", "HF_HUB_OFFLINE=1 and it is not in the local cache"),
    ],
)
def test_missing_model_fails_fast_with_how_to_get_it(monkeypatch, spec, needle):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(BackboneError) as info:
        create_backbone(spec)
    assert time.perf_counter() - t0 < 5.0
    msg = str(info.value)
    assert spec in msg and needle in msg and "hf download" in msg and "'hf:DIR'" in msg


def test_folder_without_config_and_non_clip_checkpoint(tmp_path):
    with pytest.raises(BackboneError, match="has no config.json"):
        create_backbone(f"hf:{tmp_path}")
    from transformers import BertConfig

    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(tmp_path)
    with pytest.raises(BackboneError, match="is a 'bert' checkpoint, expected a transformers CLIP"):
        create_backbone(f"hf:{tmp_path}")


def test_local_folder_round_trip(tiny_clip, tmp_path):
    tiny_clip.model.save_pretrained(tmp_path)
    tiny_clip.tokenizer.save_pretrained(tmp_path)
    tiny_clip.image_processor.save_pretrained(tmp_path)
    bb = create_backbone(f"hf:{tmp_path}")
    assert bb.name == f"hf:{tmp_path}" and bb.model.config._attn_implementation == "eager"
    assert bb.weights_id() == tiny_clip.weights_id()
    tok = bb.tokenize(TEXTS)
    assert torch.equal(tok.input_ids, tiny_clip.tokenize(TEXTS).input_ids)
    torch.testing.assert_close(bb.encode_text(tok), tiny_clip.encode_text(tok), atol=1e-6, rtol=0)
    px = _pixels()
    torch.testing.assert_close(bb.encode_image(px).global_, tiny_clip.encode_image(px).global_, atol=1e-6, rtol=0)


def test_unknown_specs():
    with pytest.raises(BackboneError, match="unknown backbone 'clip-xl'.*hf.*tiny-clip"):
        create_backbone("clip-xl")
    with pytest.raises(BackboneError, match="integer seed"):
        create_backbone("tiny-clip:abc")
    with pytest.raises(BackboneError, match="needs a model"):
        create_backbone("hf")


def test_tiny_clip_is_seeded_and_leaves_global_rng_alone(tiny_clip):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, b, c = create_backbone("tiny-clip:1"), create_backbone("tiny-clip:1"), create_backbone("tiny-clip:2")
    assert torch.rand(1) == expected_next
    assert a.name == "tiny-clip:1" and tiny_clip.name == "tiny-clip"
    assert a.weights_id() == b.weights_id() != c.weights_id()
    px = _pixels(1)
    torch.testing.assert_close(a.encode_image(px).global_, b.encode_image(px).global_, atol=0, rtol=0)


def test_weights_id_tracks_image_tower_and_preprocessing_only(tiny_clip):
    bb = create_backbone("tiny-clip")
    ref = bb.weights_id()
    assert ref == tiny_clip.weights_id() and len(ref) == 16
    with torch.no_grad():
        bb.model.text_projection.weight.add_(1.0)  # text side: image features unchanged
    assert bb.weights_id() == ref
    other = HFCLIPBackbone(bb.model, bb.tokenizer, _image_processor(32, image_mean=[0.5] * 3), name="x")
    assert other.weights_id() != ref
    with torch.no_grad():
        bb.model.visual_projection.weight[0, 0] += 1.0
    assert bb.weights_id() != ref


def test_logit_scale_is_clip_initial_temperature(tiny_clip):
    # CLIP initialises the temperature to 0.07: logit scale = exp(log(1 / 0.07)) ~= 14.2857
    assert tiny_clip.logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-3)


# -- explainers: layers and attention maps ----------------------------------------------------


def test_explain_layers_and_attention_maps(tiny_clip):
    layers = tiny_clip.explain_layers()
    assert tiny_clip.is_vit and len(layers["image_attn"]) == 2
    assert layers["image"] is tiny_clip.model.vision_model.encoder.layers[-1]
    assert layers["text"] is tiny_clip.model.text_model.encoder.layers[-1]
    hooked, block_out = [], []
    handles = [m.register_forward_hook(lambda _m, _a, out: hooked.append(out[1])) for m in layers["image_attn"]]
    handles.append(layers["image"].register_forward_hook(lambda _m, _a, out: block_out.append(out)))
    px = _pixels(2)
    try:
        feats, maps = tiny_clip.encode_image_with_attentions(px, retain_grad=True)
    finally:
        for h in handles:
            h.remove()
    assert [tuple(a.shape) for a in maps] == [(2, 2, 17, 17)] * 2
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 2, 17))  # rows are probabilities
    assert all(torch.equal(a, b) for a, b in zip(maps, hooked))
    assert block_out[0].shape == (2, 17, 32)
    torch.testing.assert_close(feats.global_, tiny_clip.encode_image(px).global_, atol=1e-6, rtol=0)
    feats.global_[:, 0].sum().backward()
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in maps)
    assert all(p.grad is None for p in tiny_clip.parameters())
    no_grad_maps = tiny_clip.image_attentions(px)
    torch.testing.assert_close(no_grad_maps[1], maps[1].detach(), atol=1e-6, rtol=0)


# -- visual prompt tokens (VPT) ---------------------------------------------------------------


def test_vision_tokens_without_prompts_equal_encode_image(tiny_clip):
    px = _pixels()
    tokens = tiny_clip.vision_embeddings(px)
    assert tokens.shape == (3, 17, 32)
    a, b = tiny_clip.vision_forward_tokens(tokens, None, patches=True), tiny_clip.encode_image(px, patches=True)
    torch.testing.assert_close(a.global_, b.global_, atol=0, rtol=0)
    torch.testing.assert_close(a.patches, b.patches, atol=0, rtol=0)


def test_shallow_prompts_match_stock_encoder_on_inserted_tokens(tiny_clip):
    px, m = _pixels(2), tiny_clip.model
    tokens = tiny_clip.vision_embeddings(px)
    p0 = torch.randn(3, 32, generator=torch.Generator().manual_seed(1))
    feats = tiny_clip.vision_forward_tokens(tokens, [p0], patches=True)
    seq = torch.cat([tokens[:, :1], p0.expand(2, -1, -1), tokens[:, 1:]], dim=1)  # [CLS, P, patches]
    hidden = m.vision_model.encoder(inputs_embeds=seq).last_hidden_state
    proj = lambda h: m.visual_projection(m.vision_model.post_layernorm(h))  # noqa: E731
    torch.testing.assert_close(feats.global_, proj(hidden[:, 0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(feats.patches, proj(hidden[:, 4:]), atol=1e-6, rtol=0)
    assert feats.patches.shape == (2, 16, 16) and feats.grid == (4, 4)
    assert (feats.global_ - tiny_clip.encode_image(px).global_).abs().max() > 1e-4


def test_deep_prompts_replace_prompt_tokens_at_every_layer(tiny_clip):
    px, m = _pixels(2), tiny_clip.model
    tokens = tiny_clip.vision_embeddings(px)
    g = torch.Generator().manual_seed(2)
    p0, p1 = torch.randn(3, 32, generator=g), torch.randn(2, 3, 32, generator=g)  # shared and per-image
    feats = tiny_clip.vision_forward_tokens(tokens, [p0, p1], patches=True)
    layers = m.vision_model.encoder.layers
    h = layers[0](torch.cat([tokens[:, :1], p0.expand(2, -1, -1), tokens[:, 1:]], dim=1), None)
    h = layers[1](torch.cat([h[:, :1], p1, h[:, 4:]], dim=1), None)  # layer-0 prompt outputs dropped
    proj = lambda x: m.visual_projection(m.vision_model.post_layernorm(x))  # noqa: E731
    torch.testing.assert_close(feats.global_, proj(h[:, 0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(feats.patches, proj(h[:, 4:]), atol=1e-6, rtol=0)


def test_prompt_gradients_reach_prompts_only(tiny_clip):
    prompts = [torch.nn.Parameter(0.02 * torch.randn(4, 32)) for _ in range(2)]
    tokens = tiny_clip.vision_embeddings(_pixels(2))
    feats = tiny_clip.vision_forward_tokens(tokens, prompts, patches=True)
    (feats.global_.pow(2).sum() + feats.patches.sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in prompts)
    assert all(p.grad is None for p in tiny_clip.parameters())


@pytest.mark.parametrize(
    ("prompts", "needle"),
    [
        ([torch.zeros(3, 31)], r"must be \(P, 32\)"),
        ([torch.zeros(3, 32), torch.zeros(4, 32)], "layer 1 has 4 tokens, layer 0 had 3"),
        ([torch.zeros(3, 32)] * 3, "prompts for 3 layers but the vision tower has 2"),
        ([torch.zeros(5, 3, 32)], r"must be \(P, 32\) or \(2, P, 32\)"),
    ],
)
def test_bad_prompts_are_rejected(tiny_clip, prompts, needle):
    with pytest.raises(BackboneError, match=needle):
        tiny_clip.vision_forward_tokens(tiny_clip.vision_embeddings(_pixels(2)), prompts)


def test_token_batch_device_move_keeps_values(tiny_clip):
    tok = tiny_clip.tokenize(["a photo"])
    moved = tok.to("cpu")
    assert isinstance(moved, TokenBatch) and torch.equal(moved.input_ids, tok.input_ids) and len(moved) == 1
