"""Fixtures for explainer tests: a CoOp method on the tiny in-memory CLIP (`tiny_clip` comes from
tests/conftest.py), a small random conv net, and a reference Grad-CAM written the plain
per-image, per-target way."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the network from tests

import pytest
import torch
from torch import nn

CLASSES = ["melanoma", "nevus", "keratosis"]


@pytest.fixture(scope="session")
def tiny_coop(tiny_clip):
    """CoOp (4 random context vectors, seed 0) over three skin classes on tiny-clip, eval mode."""
    from conceptclip.methods import create_method

    torch.manual_seed(0)
    method = create_method("coop", tiny_clip, CLASSES, {"n_ctx": 4})
    return method.eval()


@pytest.fixture
def pixels() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


class SmallConvNet(nn.Module):
    """conv(3->8) -> ReLU -> conv(8->16) [explained] -> ReLU -> global average pool -> linear(16->4)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 4)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv2(torch.relu(self.conv1(x)))
        return self.fc(torch.relu(a).mean(dim=(2, 3)))


@pytest.fixture
def conv_net() -> SmallConvNet:
    return SmallConvNet().eval()


def _reference_gradcam(run, n_targets: int, to_map=lambda a: a) -> torch.Tensor:
    """Grad-CAM the textbook way, one image and one target at a time: `run(t)` returns
    (score of target t on the image, the activation it flowed through); the activation's gradient
    comes from `.backward()` through a tensor hook; `to_map` lays activation and gradient out as
    (C, h, w). Returns (T, h, w)."""
    maps = []
    for t in range(n_targets):
        score, act = run(t)
        grads = {}
        act.register_hook(lambda g: grads.setdefault("g", g))
        score.backward()
        g, a = to_map(grads["g"]), to_map(act.detach())
        weights = g.mean(dim=(-2, -1), keepdim=True)
        maps.append(torch.relu((weights * a).sum(dim=0)))
    return torch.stack(maps)


@pytest.fixture
def reference_gradcam():
    return _reference_gradcam
