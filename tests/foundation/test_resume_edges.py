"""Edges of resume and clean-up: a cleanup never hides the error that caused it, and a checkpoint
that does not fit is reported with at most 300 characters of the underlying message."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conceptclip.engine import TrainConfig, fit
from conceptclip.engine.checkpoint import save_checkpoint
from conceptclip.engine.data import Part
from conceptclip.engine.run import RUN_MARKER, claim_run_dir
from conceptclip.errors import CheckpointError, ConfigError
from conceptclip.methods import create_method


class _Boom(Exception):
    pass


def test_cleanup_never_hides_the_original_error(tmp_path):
    fresh = tmp_path / "fresh"
    with pytest.raises(_Boom):
        with claim_run_dir(fresh, "new"):
            shutil.rmtree(fresh)  # already gone when the cleanup runs
            raise _Boom
    old = tmp_path / "old"
    old.mkdir()
    (old / RUN_MARKER).write_text(json.dumps({"kind": "run"}))
    (old / "config.json").write_text("{}")
    with pytest.raises(_Boom):
        with claim_run_dir(old, "replace"):
            shutil.rmtree(old)
            raise _Boom
    assert sorted(p.name for p in old.iterdir()) == [RUN_MARKER, "config.json"]  # restored


def test_unfitting_checkpoint_message_is_cut_at_300_characters(tiny_clip, tmp_path, monkeypatch):
    y = torch.arange(3).repeat(3)
    part = Part([str(i) for i in range(9)], y,
                tensors={"features": torch.randn(9, tiny_clip.embed_dim), "labels": y, "index": torch.arange(9)})
    method = create_method("coop", tiny_clip, ["cat", "dog", "fish"], {"n_ctx": 2})
    save_checkpoint(tmp_path / "c.ckpt", method_state=method.learned_state(), optimizer_state=None, epoch=0,
                    best_state=None, best_score=None, history=[{"epoch": 0}])

    def refuse(state):
        raise ConfigError("x" * 1000 + "\nsecond line")

    monkeypatch.setattr(method, "load_learned_state", refuse)
    with pytest.raises(CheckpointError) as exc:
        fit(method, part, None, TrainConfig(epochs=2, progress=False), checkpoint=tmp_path / "c.ckpt")
    assert str(exc.value).endswith(f"cannot resume 'coop' from it ({'x' * 300})")
