"""CoCoOp: the meta-net's shape (Linear-ReLU-Linear, D/16 hidden) and the per-image token shift
v_m(x) = v_m + pi(x) (Zhou et al., CVPR 2022, Sec. 3.2)."""

from __future__ import annotations

import torch

from conceptclip.methods import create_method
from conceptclip.prompts import normalize
from conceptclip.prompts.meta_net import MetaNet, conditioned_context


def test_meta_net_is_linear_relu_linear_with_d_over_16_hidden():
    net = MetaNet(512, 384)
    assert (net.linear1.in_features, net.linear1.out_features) == (512, 32)
    assert (net.linear2.in_features, net.linear2.out_features) == (32, 384)
    x = torch.randn(3, 512)
    expected = net.linear2(torch.relu(net.linear1(x)))
    assert torch.equal(net(x), expected)


def test_conditioned_context_adds_one_shift_per_image_to_every_token():
    ctx = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    shift = torch.tensor([[10.0, 20.0], [0.0, 1.0]])
    out = conditioned_context(ctx, shift)
    assert torch.equal(out, torch.tensor([[[11.0, 22.0], [13.0, 24.0]], [[1.0, 3.0], [3.0, 5.0]]]))


def test_logits_use_each_images_own_prompts(tiny_clip, classes, batch):
    # tiny-clip's D = 16 gives one hidden unit at D/16; reduction 2 keeps the shift from dying in the ReLU
    method = create_method("cocoop", tiny_clip, classes, {"meta_reduction": 2})
    feats = batch["features"][:2]
    logits = method.logits({"features": feats})
    scale = tiny_clip.logit_scale
    for b in range(2):
        pi = method.meta_net(normalize(feats[b:b + 1]))[0]
        text = normalize(method.prompt(method.prompt.ctx + pi))  # (C, D) for this image's context
        expected = scale * normalize(feats[b]) @ text.t()
        torch.testing.assert_close(logits[b], expected, rtol=1e-5, atol=1e-5)
    # different images -> different class prompts
    t = method.text_features(feats)
    assert not torch.allclose(t[0], t[1])


def test_zero_meta_net_reduces_to_coop_with_the_same_context(tiny_clip, classes, batch):
    method = create_method("cocoop", tiny_clip, classes)
    coop = create_method("coop", tiny_clip, classes, {"n_ctx": 4, "ctx_init": "a photo of a"})
    with torch.no_grad():
        method.meta_net.linear2.weight.zero_()
        method.meta_net.linear2.bias.zero_()
    torch.testing.assert_close(method.logits(batch), coop.logits(batch), rtol=1e-5, atol=1e-5)
