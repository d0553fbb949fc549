"""Chefer relevance: the update rule on hand-computed attention maps, and the batched explainer on
tiny-clip against a per-image, per-target reference built from the backbone's retained attention
gradients."""

from __future__ import annotations

import pytest
import torch

from conceptclip.errors import ConfigError
from conceptclip.explain import AttentionRelevance, class_targets, explain_method, method_forward, relevance_rule


def test_rule_on_hand_computed_two_layer_example():
    # 3 tokens [CLS, p1, p2], 2 heads. Layer 1: head 0 gives (grad*A)+ = 2 at (0, 1), head 1 gives a
    # negative product there (clamped to 0) -> Abar1 = E_h = 1 at (0, 1). Layer 2: one positive
    # entry per head, 2 at (0, 2) in head 0 and 2 at (2, 1) in head 1 -> Abar2 = 1 at (0, 2), (2, 1).
    a1 = torch.zeros(2, 3, 3)
    g1 = torch.zeros(2, 3, 3)
    a1[0, 0, 1], g1[0, 0, 1] = 0.5, 4.0
    a1[1, 0, 1], g1[1, 0, 1] = 0.5, -4.0
    a2 = torch.zeros(2, 3, 3)
    g2 = torch.zeros(2, 3, 3)
    a2[0, 0, 2], g2[0, 0, 2] = 1.0, 2.0
    a2[1, 2, 1], g2[1, 2, 1] = 0.25, 8.0
    # R1 = I + Abar1 = [[1,1,0],[0,1,0],[0,0,1]]; Abar2 R1 = [[0,0,1],[0,0,0],[0,1,0]]
    # R2 = R1 + Abar2 R1 = [[1,1,1],[0,1,0],[0,1,1]]
    r = relevance_rule([a1, a2], [g1, g2])
    assert torch.equal(r, torch.tensor([[1.0, 1, 1], [0, 1, 0], [0, 1, 1]]))


def test_rule_broadcasts_gradients_of_several_targets():
    a = torch.rand(4, 2, 5, 5, generator=torch.Generator().manual_seed(0))  # (B, heads, N, N)
    g = torch.randn(3, 4, 2, 5, 5, generator=torch.Generator().manual_seed(1))  # (T, B, ...)
    r = relevance_rule([a, a], [g, g])
    assert r.shape == (3, 4, 5, 5)
    assert torch.allclose(r[2, 1], relevance_rule([a[1], a[1]], [g[2, 1], g[2, 1]]))
    with pytest.raises(ConfigError, match="one gradient per attention"):
        relevance_rule([a], [g, g])


def _reference(tiny_clip, method, pixels: torch.Tensor, n_targets: int) -> torch.Tensor:
    """Per image and target: `encode_image_with_attentions(retain_grad=True)`, `.backward()` of the
    class logit, then R = I; R += mean_h(relu(A.grad * A)) @ R; CLS row over the patches."""
    with torch.no_grad():
        text = torch.nn.functional.normalize(method.prompt(), dim=-1)
    out = []
    for i in range(pixels.shape[0]):
        rows = []
        for t in range(n_targets):
            feats, maps = tiny_clip.encode_image_with_attentions(pixels[i:i + 1], retain_grad=True)
            logit = tiny_clip.logit_scale * torch.nn.functional.normalize(feats.global_, dim=-1) @ text[t]
            logit.sum().backward()
            r = torch.eye(maps[0].shape[-1])
            for a in maps:
                cam = (a.grad[0] * a.detach()[0]).clamp(min=0).mean(dim=0)
                r = r + cam @ r
            rows.append(r[0, 1:].reshape(4, 4))
        out.append(torch.stack(rows))
    return torch.stack(out)


def test_batched_relevance_equals_per_image_reference(tiny_clip, tiny_coop, pixels):
    result = explain_method(tiny_coop, pixels, explainer="chefer")
    ref = _reference(tiny_clip, tiny_coop, pixels, 3)
    assert result.maps.shape == (4, 3, 4, 4)
    assert (result.maps - ref).abs().max() < 1e-5
    assert result.maps.abs().amax() > 0
    looped = AttentionRelevance(method_forward(tiny_coop), tiny_clip.explain_layers()["image_attn"], grid=(4, 4),
                                batched_targets=False)(pixels, class_targets(3))
    assert (looped - result.maps).abs().max() < 1e-5


def test_relevance_is_differentiable_on_request(tiny_coop, pixels):
    maps = explain_method(tiny_coop, pixels[:2], explainer="chefer", create_graph=True).maps
    (grad,) = torch.autograd.grad(maps.sum(), tiny_coop.prompt.ctx)
    assert grad.abs().sum() > 0


def test_relevance_needs_a_vit():
    class Conv:
        name, is_vit = "conv", False

        def explain_layers(self):
            return {"image": torch.nn.Identity()}

    from conceptclip.explain import relevance_for

    with pytest.raises(ConfigError, match="needs a ViT"):
        relevance_for(Conv(), lambda x: x)
