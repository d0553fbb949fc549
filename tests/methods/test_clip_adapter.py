"""CLIP-Adapter: f* = alpha A(f) + (1 - alpha) f with alpha = 0.2 and a D -> D/4 -> D bottleneck,
scored by the zero-shot classifier (Gao et al., IJCV 2024, Eqs. 2, 4, 6)."""

from __future__ import annotations

import pytest
import torch

from conceptclip.errors import ConfigError
from conceptclip.methods import create_method
from conceptclip.prompts import class_text_features, normalize
from conceptclip.prompts.adapters import BottleneckAdapter, residual_blend


def test_adapter_hand_computed():
    ad = BottleneckAdapter(4, reduction=2)
    assert (ad.fc1.in_features, ad.fc1.out_features, ad.fc2.out_features) == (4, 2, 4)
    with torch.no_grad():
        ad.fc1.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, -1.0, 0, 0]]))
        ad.fc2.weight.copy_(torch.tensor([[1.0, 0], [0, 1.0], [-1.0, 0], [1.0, 1.0]]))
    f = torch.tensor([[2.0, 3.0, 5.0, 7.0]])
    # fc1: (2, -3) -> ReLU (2, 0); fc2: (2, 0, -2, 2) -> ReLU (2, 0, 0, 2)
    assert torch.equal(ad(f), torch.tensor([[2.0, 0.0, 0.0, 2.0]]))
    # alpha = 0.2: 0.2 * (2, 0, 0, 2) + 0.8 * (2, 3, 5, 7) = (2.0, 2.4, 4.0, 6.0)
    torch.testing.assert_close(residual_blend(f, ad(f), 0.2), torch.tensor([[2.0, 2.4, 4.0, 6.0]]))


def test_defaults_and_logits(tiny_clip, classes, batch):
    method = create_method("clip_adapter", tiny_clip, classes)
    assert method.config.alpha == 0.2 and method.config.reduction == 4
    d = tiny_clip.embed_dim
    assert method.adapter.fc1.weight.shape == (d // 4, d)
    f = batch["features"]
    star = 0.2 * method.adapter(f) + 0.8 * f
    w = class_text_features(tiny_clip, classes, [method.template])
    torch.testing.assert_close(method.logits(batch), tiny_clip.logit_scale * normalize(star) @ w.t())


def test_alpha_zero_is_zero_shot(tiny_clip, classes, batch):
    adapter = create_method("clip_adapter", tiny_clip, classes, {"alpha": 0.0})
    zs = create_method("zeroshot", tiny_clip, classes)
    torch.testing.assert_close(adapter.logits(batch), zs.logits(batch))


def test_bad_alpha_is_refused(tiny_clip, classes):
    with pytest.raises(ConfigError, match="alpha"):
        create_method("clip_adapter", tiny_clip, classes, {"alpha": 1.5})
