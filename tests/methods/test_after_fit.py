"""`Method.after_fit`: the engine calls it once, after the best epoch's state is loaded, with the cached
train/val features (val falling back to train), and records what it returns; what it sets in the
learned state survives the DDP launcher."""

from __future__ import annotations

import torch
from torch import nn

from conceptclip.engine import TrainConfig, fit
from conceptclip.engine.data import Part
from conceptclip.methods.base import Method


class _Recorder(Method):
    """A linear head over the features; `after_fit` records the state it sees and sets a marker buffer."""

    name = "recorder"

    def __init__(self, backbone, classnames) -> None:
        super().__init__(backbone, classnames)
        self.head = nn.Linear(backbone.embed_dim, len(classnames))
        self.register_buffer("marker", torch.zeros(()))
        self.calls: list[dict] = []

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(batch["features"].float())

    def after_fit(self, train: dict[str, torch.Tensor], val: dict[str, torch.Tensor]) -> dict:
        self.calls.append({"weight": self.head.weight.detach().clone(), "train": len(train["labels"]),
                           "val": len(val["labels"]), "val_labels": val["labels"].clone()})
        self.marker.fill_(float(len(val["labels"])))
        return {"val_size": len(val["labels"])}


def _part(n: int, dim: int, seed: int, shift: int = 0) -> Part:
    """`n` features around 3 fixed class centres; labels shifted by `shift` (mod 3)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(3).repeat(n // 3)
    x = 3 * torch.randn(3, dim, generator=torch.Generator().manual_seed(42))[y] + 0.5 * torch.randn(len(y), dim, generator=g)
    labels = (y + shift) % 3
    return Part([str(i) for i in range(len(y))], labels, tensors={"features": x, "labels": labels,
                                                                   "index": torch.arange(len(y))})


def test_called_once_after_the_best_state_is_loaded(tiny_clip):
    """Validation labels are the train labels shifted, so learning the train labels makes validation
    worse: the best epoch is the first, and the hook must see its weights, not the last epoch's."""
    torch.manual_seed(0)
    method = _Recorder(tiny_clip, ["a", "b", "c"])
    train, val = _part(30, tiny_clip.embed_dim, 0), _part(12, tiny_clip.embed_dim, 1, shift=1)
    snapshots: list[torch.Tensor] = []
    cfg = TrainConfig(epochs=4, lr=0.5, batch_size=10, warmup_epochs=0, progress=False, select="val")
    result = fit(method, train, val, cfg, on_epoch=lambda r: snapshots.append(method.head.weight.detach().clone()))
    assert len(method.calls) == 1
    assert result.best_epoch == 0 and len(snapshots) == 4
    assert not torch.equal(snapshots[0], snapshots[-1])  # it trained past the best epoch
    assert torch.equal(method.calls[0]["weight"], snapshots[0])
    assert (method.calls[0]["train"], method.calls[0]["val"]) == (30, 12)
    assert torch.equal(method.calls[0]["val_labels"], val.labels)
    assert result.closed_form == {"after_fit": {"val_size": 12}}
    assert float(method.marker) == 12.0 and float(method.learned_state()["marker"]) == 12.0


def test_closed_form_path_and_validation_fallback(tiny_clip):
    """No epochs: still called once; without a validation part it gets the train part as val."""
    method = _Recorder(tiny_clip, ["a", "b", "c"])
    train = _part(9, tiny_clip.embed_dim, 0)
    result = fit(method, train, None, TrainConfig(epochs=0, progress=False))
    assert len(method.calls) == 1 and method.calls[0]["val"] == 9
    assert result.closed_form["after_fit"] == {"val_size": 9}


def test_not_called_for_pixel_parts(tiny_clip):
    method = _Recorder(tiny_clip, ["a", "b", "c"])
    part = Part(["0"], torch.tensor([0]), pixels=[])  # serves pixels: no cached features to hand over
    result = fit(method, part, None, TrainConfig(epochs=0, progress=False))
    assert method.calls == [] and "after_fit" not in result.closed_form


def test_default_hook_does_nothing(tiny_clip):
    method = Method(tiny_clip, ["a", "b"])
    assert method.after_fit({}, {}) == {}


def test_ddp_launcher_hands_back_the_hooks_effect(tiny_clip):
    """Two CPU processes: the hook runs inside them, and the state the launcher loads carries the marker."""
    torch.manual_seed(0)
    method = _Recorder(tiny_clip, ["a", "b", "c"])
    train, val = _part(12, tiny_clip.embed_dim, 0), _part(6, tiny_clip.embed_dim, 1)
    cfg = TrainConfig(epochs=2, lr=0.1, batch_size=4, devices=2, accelerator="cpu", progress=False)
    result = fit(method, train, val, cfg)
    assert method.calls == []  # ran in the launched processes, not here
    assert float(method.marker) == 6.0
    assert result.closed_form["after_fit"] == {"val_size": 6}
