"""Grad-CAM: a hand-computed case, equality with a per-image reference on a random conv net and on
tiny-clip (through a CoOp method), batched vs looped targets, the ViT layer choice, and the
differentiable mode (gradients through the maps checked against finite differences)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conceptclip.errors import ConfigError
from conceptclip.explain import (
    ClassTarget,
    ConceptTarget,
    GradCAM,
    ModelOutput,
    PredictedClassTarget,
    class_targets,
    explain_method,
    method_forward,
)
from conceptclip.explain.cam import vit_reshape


class _Head(nn.Module):
    """The activation is the input itself (identity layer), score_t = sum_k W_tk mean_ij A_kij."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.act = nn.Identity()
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x).mean(dim=(2, 3)) @ self.weight.t()


def test_hand_computed_map():
    # A_0 = [[1, 2], [3, 4]], A_1 = [[1, 0], [0, 1]]; score = 1 * mean(A_0) - 2 * mean(A_1)
    # alpha = dscore/dA averaged = (1/4, -2/4); L = relu(0.25 A_0 - 0.5 A_1) = [[0, .5], [.75, .5]]
    a = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[1.0, 0.0], [0.0, 1.0]]]])
    head = _Head(torch.tensor([[1.0, -2.0], [-1.0, 0.0]]))
    maps = GradCAM(head, head.act)(a, class_targets(2))
    assert maps.shape == (1, 2, 2, 2)
    assert torch.allclose(maps[0, 0], torch.tensor([[0.0, 0.5], [0.75, 0.5]]))
    # target 1: alpha = (-1/4, 0): L = relu(-A_0 / 4) = 0 everywhere; without ReLU, -A_0 / 4
    assert torch.equal(maps[0, 1], torch.zeros(2, 2))
    raw = GradCAM(head, head.act, relu=False)(a, [ClassTarget(1)])
    assert torch.allclose(raw[0, 0], -a[0, 0] / 4)


def _conv_reference(reference_gradcam, net, x: torch.Tensor, n_targets: int) -> torch.Tensor:
    out = []
    for i in range(x.shape[0]):
        def run(t, xi=x[i:i + 1]):
            act = net.conv2(torch.relu(net.conv1(xi)))
            logits = net.fc(torch.relu(act).mean(dim=(2, 3)))
            return logits[0, t], act
        out.append(reference_gradcam(run, n_targets, lambda a: a[0]))
    return torch.stack(out)


@pytest.mark.parametrize("batched", [True, False])
def test_conv_net_equals_per_image_reference(conv_net, batched, reference_gradcam):
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    result = GradCAM(conv_net, conv_net.conv2, batched_targets=batched).compute(x, class_targets(4))
    ref = _conv_reference(reference_gradcam, conv_net, x, 4)
    assert result.maps.shape == (6, 4, 8, 8)
    assert (result.maps - ref).abs().max() < 1e-5
    assert result.maps.amax() > 0.1  # not trivially zero
    assert torch.allclose(result.scores, conv_net(x).detach(), atol=1e-6)
    assert not result.maps.requires_grad


def test_per_image_targets_and_predicted_class(conv_net):
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    cam = GradCAM(conv_net, conv_net.conv2)
    all_maps = cam(x, class_targets(4))
    idx = torch.tensor([3, 0, 2, 1])
    picked = cam(x, [ClassTarget(idx)])[:, 0]
    assert torch.allclose(picked, all_maps[torch.arange(4), idx], atol=1e-6)
    pred = conv_net(x).argmax(1)
    assert torch.allclose(cam(x, [PredictedClassTarget()])[:, 0], all_maps[torch.arange(4), pred], atol=1e-6)


def test_works_inside_no_grad_and_rejects_bad_targets(conv_net):
    x = torch.randn(2, 3, 16, 16)
    cam = GradCAM(conv_net, conv_net.conv2)
    with torch.no_grad():
        maps = cam(x, class_targets(4))
    assert maps.shape == (2, 4, 8, 8)
    with pytest.raises(ConfigError, match="out of range"):
        cam(x, [ClassTarget(7)])
    with pytest.raises(ConfigError, match="one score per image"):
        cam(x, [lambda out: out.sum()])
    with pytest.raises(ConfigError, match="at least one target"):
        cam(x, [])
    with pytest.raises(ConfigError, match="ran 0 times"):
        GradCAM(conv_net, nn.Conv2d(1, 1, 1))(x, class_targets(1))


# -- tiny-clip (ViT) through a method ---------------------------------------------------------


def _vit_reference(reference_gradcam, bb, method, x: torch.Tensor, n_targets: int, block_input: bool = True) -> torch.Tensor:
    """Per image and target: tokens at the last block's input as a leaf, the rest of the tower by
    hand, CoOp's logits by hand (logit_scale * cos with the normalised class prompt features)."""
    vm = bb.model.vision_model
    with torch.no_grad():
        text = F.normalize(method.prompt(), dim=-1)
    grid = bb.image_size // bb.patch_size
    to_map = lambda tok: tok[0, 1:].t().reshape(-1, grid, grid)  # noqa: E731
    out = []
    for i in range(x.shape[0]):
        with torch.no_grad():
            h = vm.pre_layrnorm(vm.embeddings(x[i:i + 1]))
            for layer in vm.encoder.layers[:-1]:
                h = layer(h, None)

        def run(t, h=h):
            leaf = h.clone().requires_grad_(True)
            tokens = vm.encoder.layers[-1](leaf, None)
            g = bb.model.visual_projection(vm.post_layernorm(tokens[:, 0]))
            logits = bb.logit_scale * F.normalize(g, dim=-1) @ text.t()
            return logits[0, t], (leaf if block_input else tokens)
        out.append(reference_gradcam(run, n_targets, to_map))
    return torch.stack(out)


def test_vit_method_equals_per_image_reference(tiny_clip, tiny_coop, pixels, reference_gradcam):
    result = explain_method(tiny_coop, pixels)  # every class, Grad-CAM at the last block's input
    ref = _vit_reference(reference_gradcam, tiny_clip, tiny_coop, pixels, 3)
    assert result.maps.shape == (4, 3, 4, 4)
    assert (result.maps - ref).abs().max() < 1e-5
    assert result.maps.amax() > 0
    with torch.no_grad():
        expected = tiny_coop.logits({"features": tiny_clip.encode_image(pixels).global_})
    assert torch.allclose(result.scores, expected, atol=1e-5)


def test_image_chunks_change_nothing_but_speed(tiny_coop, pixels):
    # 4 images in chunks of 1, 3 or all at once; per-image class targets follow their images
    per_image = ClassTarget([2, 0, 1, 2])
    whole = explain_method(tiny_coop, pixels, [per_image, ClassTarget(1)], image_batch=4)
    for step in (1, 3):
        part = explain_method(tiny_coop, pixels, [per_image, ClassTarget(1)], image_batch=step)
        assert torch.allclose(part.maps, whole.maps, atol=1e-6) and torch.allclose(part.scores, whole.scores, atol=1e-6)
    with pytest.raises(ConfigError, match="expected 4 per-image indices"):
        explain_method(tiny_coop, pixels, [ClassTarget([0, 1, 2])], image_batch=2)
    with pytest.raises(ConfigError, match="image_batch=0"):
        explain_method(tiny_coop, pixels, image_batch=0)


def test_vit_last_block_output_has_no_patch_gradient_for_global_scores(tiny_coop, pixels):
    # CLIP's global feature reads only the CLS token of the last block's output: Grad-CAM there
    # is exactly zero for a global-feature score, which is why the block input is the default
    maps = explain_method(tiny_coop, pixels, vit_layer="block_output").maps
    assert torch.equal(maps, torch.zeros_like(maps))


def test_concept_target_equals_cosine_and_scales(tiny_clip, tiny_coop, pixels):
    text = torch.randn(16, generator=torch.Generator().manual_seed(4))
    res = explain_method(tiny_coop, pixels, [ConceptTarget(text), ConceptTarget(text, scale=3.0)])
    with torch.no_grad():
        cos = F.cosine_similarity(tiny_clip.encode_image(pixels).global_, text[None], dim=-1)
    assert torch.allclose(res.scores[:, 0], cos, atol=1e-6)
    assert torch.allclose(res.maps[:, 1], 3 * res.maps[:, 0], atol=1e-6)  # ReLU(3 x) = 3 ReLU(x)


def test_vit_reshape_drops_cls_and_prompt_tokens():
    tokens = torch.arange(2 * 7 * 3, dtype=torch.float32).reshape(2, 7, 3)  # CLS, 2 prompts, 4 patches
    out = vit_reshape((2, 2))(tokens)
    assert out.shape == (2, 3, 2, 2)
    assert torch.equal(out[1, :, 0, 1], tokens[1, 4])  # patch 1 = token 3 + 1
    with pytest.raises(ConfigError, match="patch grid"):
        vit_reshape(None)(tokens)  # 6 non-CLS tokens are not a square


# -- differentiable mode -----------------------------------------------------------------------


def test_create_graph_gradients_match_finite_differences(conv_net):
    net = copy.deepcopy(conv_net).double()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    cam = GradCAM(net, net.conv2)

    def loss() -> torch.Tensor:  # a DEAL-like regulariser: push the class maps apart
        m = cam(x, class_targets(4), create_graph=True)
        return -(m[:, 0] - m[:, 1]).abs().mean() + m.pow(2).mean()

    value = loss()
    assert value.requires_grad
    (grad,) = torch.autograd.grad(value, net.fc.weight)
    direction = torch.randn(net.fc.weight.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    eps = 1e-6
    with torch.no_grad():
        net.fc.weight += eps * direction
        up = loss().item()
        net.fc.weight -= 2 * eps * direction
        down = loss().item()
        net.fc.weight += eps * direction
    assert abs((grad * direction).sum().item() - (up - down) / (2 * eps)) < 1e-6
    assert grad.abs().sum() > 0


def test_create_graph_reaches_coop_context_through_frozen_vit(tiny_clip, tiny_coop, pixels):
    method = copy.deepcopy(tiny_coop).double()
    x = pixels.double()

    def loss() -> torch.Tensor:
        m = explain_method(method, x, create_graph=True).maps
        return (m[:, 0] - m[:, 1:].mean(1)).pow(2).mean()  # R_local-like: class map vs the others' mean

    value = loss()
    (grad,) = torch.autograd.grad(value, method.prompt.ctx)
    assert grad.abs().sum() > 0
    assert all(p.grad is None for p in method.backbone.parameters())
    direction = torch.randn(method.prompt.ctx.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    eps = 1e-5
    with torch.no_grad():
        method.prompt.ctx += eps * direction
        up = loss().item()
        method.prompt.ctx -= 2 * eps * direction
        down = loss().item()
        method.prompt.ctx += eps * direction
    fd = (up - down) / (2 * eps)
    assert abs((grad * direction).sum().item() - fd) <= 1e-5 * max(1.0, abs(fd))


def test_method_forward_passes_patches_only_when_read(tiny_coop, pixels):
    out = method_forward(tiny_coop)(pixels)
    assert isinstance(out, ModelOutput) and out.logits.shape == (4, 3)
    assert out.features.patches is None
    assert method_forward(tiny_coop, patches=True)(pixels).features.patches.shape == (4, 16, 16)


def test_lite_feature_map_hook_equals_per_image_reference(lite, reference_gradcam):
    # the conv backbone: Grad-CAM on the (B, 1280, 7, 7) feature map of EfficientNet-Lite0
    from conceptclip.methods import create_method

    method = create_method("zeroshot", lite, ["common nevus", "atypical nevus", "melanoma"]).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(8))
    maps = explain_method(method, x).maps
    ref = []
    for i in range(2):
        with torch.no_grad():
            fmap = lite.tower_features(x[i:i + 1])

        def run(t, fmap=fmap):
            leaf = fmap.clone().requires_grad_(True)
            logits = method.logits({"features": lite.project_feature_map(leaf).global_})
            return logits[0, t], leaf
        ref.append(reference_gradcam(run, 3, lambda a: a[0]))
    assert maps.shape == (2, 3, 7, 7)
    assert (maps - torch.stack(ref)).abs().max() < 1e-5
    assert maps.amax() > 0
