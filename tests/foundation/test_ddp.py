"""DDP on CPU: two processes (Lightning Fabric, gloo) train to the same weights and metrics as one,
each taking half of every batch; what DDP cannot synchronise is refused with a clear error."""

from __future__ import annotations

import copy

import pytest
import torch

from conceptclip.engine import TrainConfig, fit
from conceptclip.engine.data import Part
from conceptclip.engine.evaluate import classification_metrics, predict
from conceptclip.errors import ConfigError
from conceptclip.methods import create_method

CLASSES = ["cat", "dog", "fish"]


def _part(n: int, dim: int, seed: int) -> Part:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(3).repeat(n // 3)
    x = torch.randn(3, dim, generator=torch.Generator().manual_seed(42))[y] + 0.5 * torch.randn(len(y), dim, generator=g)
    return Part([str(i) for i in range(len(y))], y, tensors={"features": x, "labels": y, "index": torch.arange(len(y))})


def test_two_cpu_processes_match_one(tiny_clip, tmp_path):
    train, val = _part(48, tiny_clip.embed_dim, 0), _part(12, tiny_clip.embed_dim, 1)
    torch.manual_seed(0)
    start = create_method("coop", tiny_clip, CLASSES, {"n_ctx": 4})
    runs = {}
    for devices in (1, 2):
        method = copy.deepcopy(start)
        cfg = TrainConfig(epochs=4, lr=0.05, batch_size=16, devices=devices, accelerator="cpu", progress=False)
        result = fit(method, train, val, cfg, checkpoint=tmp_path / f"ckpt{devices}.safetensors")
        probs = predict(method, val)
        runs[devices] = (method.learned_state()["prompt.ctx"], result, classification_metrics(probs, val.labels, CLASSES))
    (ctx1, r1, m1), (ctx2, r2, m2) = runs[1], runs[2]
    assert not torch.equal(ctx1, start.learned_state()["prompt.ctx"])  # it trained
    assert torch.allclose(ctx1, ctx2, atol=1e-5), (ctx1 - ctx2).abs().max()
    assert len(r1.history) == len(r2.history) == 4
    for h1, h2 in zip(r1.history, r2.history):  # logged losses are whole-batch means in both
        assert h1["val_accuracy"] == h2["val_accuracy"] and abs(h1["loss"] - h2["loss"]) < 1e-5
    assert m1["accuracy"] == m2["accuracy"] and abs(m1["auc_macro"] - m2["auc_macro"]) < 1e-6
    assert (tmp_path / "ckpt2.safetensors").is_file()  # rank 0 wrote the checkpoint


def test_ddp_refuses_what_it_cannot_share(tiny_clip):
    part = _part(12, tiny_clip.embed_dim, 0)
    coop = create_method("coop", tiny_clip, CLASSES, {"n_ctx": 2})
    with pytest.raises(ConfigError, match="batch_size=15 with devices=2"):
        fit(coop, part, None, TrainConfig(epochs=1, batch_size=15, devices=2, accelerator="cpu", progress=False))
    prograd = create_method("prograd", tiny_clip, CLASSES, {"n_ctx": 2})
    with pytest.raises(ConfigError, match="combines gradients itself"):
        fit(prograd, part, None, TrainConfig(epochs=1, batch_size=4, devices=2, accelerator="cpu", progress=False))
