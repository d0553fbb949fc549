"""Resume, fast and in-process: a run interrupted after any epoch's checkpoint and resumed ends in the
same LAST state, best state, history, selection and predictions as a run never interrupted; a resume
under another training configuration is refused (naming the keys) unless the option may change; the
checkpoint format round-trips every piece of the training state."""

from __future__ import annotations

import random

import pytest
import torch

import conceptclip.engine.trainer as trainer
from conceptclip.engine import TrainConfig, fit, predict
from conceptclip.engine.checkpoint import (checkpoint_epoch, load_checkpoint, load_method_weights,
                                           save_checkpoint)
from conceptclip.engine.data import Part
from conceptclip.errors import CheckpointError
from conceptclip.io import save_tensors
from conceptclip.methods import create_method

CLASSES = ["cat", "dog", "fish"]
EPOCHS = 5


def _part(n: int, dim: int, seed: int) -> Part:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, dim, generator=torch.Generator().manual_seed(42))
    y = torch.arange(3).repeat(n // 3)
    x = centers[y] + 1.5 * torch.randn(len(y), dim, generator=g)  # overlapping: validation accuracy moves
    return Part([str(i) for i in range(len(y))], y, tensors={"features": x, "labels": y, "index": torch.arange(len(y))})


def _cfg(**kw) -> TrainConfig:
    # warm-up + cosine: the lr differs every epoch; SGD momentum: the optimiser state matters on resume
    # select="val": the best validation epoch is kept, so the best state and the LAST state both matter
    return TrainConfig(**{"epochs": EPOCHS, "lr": 0.05, "batch_size": 8, "progress": False, "select": "val", **kw})


def _coop(tiny_clip):
    torch.manual_seed(0)  # the same context initialisation for every run
    return create_method("coop", tiny_clip, CLASSES, {"n_ctx": 2})


class _Killed(BaseException):
    """Stands for SIGKILL right after a checkpoint was written (BaseException: nothing catches it)."""


def _kill(tiny_clip, ckpt, train, val, kill_after: int, monkeypatch, **cfg) -> None:
    """Train until the `kill_after`-th checkpoint was written, then die."""
    real, saves = trainer.save_checkpoint, [0]

    def save_then_die(*a, **k):
        real(*a, **k)
        saves[0] += 1
        if saves[0] == kill_after:
            raise _Killed

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        fit(_coop(tiny_clip), train, val, _cfg(**cfg), checkpoint=ckpt)
    monkeypatch.undo()


def _train(tiny_clip, ckpt, train, val, kill_after: int | None = None, monkeypatch=None, **cfg):
    if kill_after is not None:
        _kill(tiny_clip, ckpt, train, val, kill_after, monkeypatch, **cfg)
    method = _coop(tiny_clip)  # a new process: a fresh model, resumed from the checkpoint
    result = fit(method, train, val, _cfg(**cfg), checkpoint=ckpt)
    return method, result


@pytest.fixture(scope="module")
def parts(tiny_clip):
    return _part(24, tiny_clip.embed_dim, 0), _part(9, tiny_clip.embed_dim, 1)


@pytest.fixture(scope="module")
def reference(tiny_clip, parts, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("ref") / "ref.ckpt"
    method, result = _train(tiny_clip, ckpt, *parts)
    return {"method": method, "result": result, "ckpt": load_checkpoint(ckpt), "probs": predict(method, parts[1])}


def _assert_same_run(ref, method, result, state, probs):
    assert state["epoch"] == ref["ckpt"]["epoch"] == EPOCHS - 1
    for key in ("method_state", "best_state"):  # the LAST weights, not only the selected ones
        a, b = ref["ckpt"][key], state[key]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), key
    sa, sb = ref["ckpt"]["optimizer_state"]["state"], state["optimizer_state"]["state"]
    assert all(torch.equal(sa[p]["momentum_buffer"], sb[p]["momentum_buffer"]) for p in sa)
    assert state["history"] == ref["ckpt"]["history"] == ref["result"].history == result.history
    assert [r["epoch"] for r in result.history] == list(range(EPOCHS))
    assert (result.best_epoch, result.best_score) == (ref["result"].best_epoch, ref["result"].best_score)
    assert result.best_score is not None
    assert torch.equal(probs, ref["probs"])  # the selected model predicts the same
    a, b = ref["method"].learned_state(), method.learned_state()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_after_every_epoch_matches_the_uninterrupted_run(tiny_clip, parts, reference, tmp_path, monkeypatch):
    for kill_after in range(1, EPOCHS):  # killed right after the checkpoint of epoch kill_after - 1
        ckpt = tmp_path / f"cut{kill_after}.ckpt"
        method, result = _train(tiny_clip, ckpt, *parts, kill_after=kill_after, monkeypatch=monkeypatch)
        assert result.resumed_from == kill_after - 1
        _assert_same_run(reference, method, result, load_checkpoint(ckpt), predict(method, parts[1]))


def test_reference_selection_is_not_the_last_epoch(reference):
    """The data make selection matter: the best epoch is not the last, so LAST and best states differ
    (a resume bug that restores one as the other is seen)."""
    ref = reference["ckpt"]
    assert reference["result"].best_epoch != EPOCHS - 1
    assert any(not torch.equal(ref["method_state"][k], ref["best_state"][k]) for k in ref["method_state"])


def test_resume_with_another_lr_is_refused_and_more_epochs_allowed(tiny_clip, parts, tmp_path, monkeypatch):
    ckpt = tmp_path / "c.ckpt"
    _kill(tiny_clip, ckpt, *parts, 2, monkeypatch)
    before = ckpt.read_bytes()
    with pytest.raises(CheckpointError, match=r"c\.ckpt: cannot resume .*lr 0\.05 -> 0\.5") as exc:
        fit(_coop(tiny_clip), *parts, _cfg(lr=0.5), checkpoint=ckpt)
    assert "epochs" not in str(exc.value)
    with pytest.raises(CheckpointError, match="momentum 0.9 -> 0.5; seed 1 -> 2"):
        fit(_coop(tiny_clip), *parts, _cfg(seed=2, momentum=0.5), checkpoint=ckpt)
    with pytest.raises(CheckpointError, match="has 2 finished epochs, more than epochs=1"):
        fit(_coop(tiny_clip), *parts, _cfg(epochs=1), checkpoint=ckpt)
    assert ckpt.read_bytes() == before  # a refused resume writes nothing
    fit(_coop(tiny_clip), *parts, _cfg(epochs=2), checkpoint=ckpt)  # exactly the finished epochs: allowed
    result = fit(_coop(tiny_clip), *parts, _cfg(epochs=EPOCHS + 1, progress=True), checkpoint=ckpt)
    assert result.resumed_from == 1 and [r["epoch"] for r in result.history] == list(range(EPOCHS + 1))
    assert load_checkpoint(ckpt)["train_config"]["epochs"] == EPOCHS + 1


def test_checkpoint_without_recorded_config_still_resumes(tmp_path):
    """Checkpoints written before the train config was recorded carry none: only the epoch count is checked."""
    save_checkpoint(tmp_path / "old.ckpt", method_state={"w": torch.ones(2)}, optimizer_state=None, epoch=1,
                    best_state=None, best_score=None, history=[{"epoch": 0}, {"epoch": 1}])
    state = load_checkpoint(tmp_path / "old.ckpt")
    assert state["train_config"] is None
    trainer.check_resume(tmp_path / "old.ckpt", state, _cfg(lr=9.0))
    with pytest.raises(CheckpointError, match="2 finished epochs"):
        trainer.check_resume(tmp_path / "old.ckpt", state, _cfg(epochs=1))


def test_checkpoint_round_trips_every_part_of_the_state(tmp_path):
    rng = random.Random(18)
    g = torch.Generator().manual_seed(18)
    model = {"prompt.ctx": torch.randn(2, 3, generator=g), "head.weight": torch.randn(4, generator=g)}
    best = {k: v * 2 for k, v in model.items()}
    optim = {"state": {0: {"momentum_buffer": torch.randn(2, 3, generator=g), "step": 7, "a.b": torch.ones(1)},
                       1: {"exp_avg": torch.randn(4, generator=g), "lr.scale": 0.5}},
             "param_groups": [{"lr": 0.01, "momentum": 0.9, "params": [0, 1]}]}
    history = [{"epoch": e, "loss": rng.random(), "val_accuracy": rng.random()} for e in range(3)]
    torch.manual_seed(123)
    rng_state = torch.get_rng_state()
    path = save_checkpoint(tmp_path / "c.safetensors", method_state=model, optimizer_state=optim, epoch=2,
                           best_state=best, best_score=0.75, history=history, train_config={"lr": 0.01})
    state = load_checkpoint(path)
    assert state["epoch"] == checkpoint_epoch(path) == 2 and state["best_score"] == 0.75
    assert state["history"] == history and state["train_config"] == {"lr": 0.01}
    assert torch.equal(state["rng"], rng_state)
    for key, expected in (("method_state", model), ("best_state", best)):
        assert state[key].keys() == expected.keys() and all(torch.equal(state[key][k], expected[k]) for k in expected)
    opt = state["optimizer_state"]
    assert opt["param_groups"] == optim["param_groups"] and opt["state"].keys() == {0, 1}
    for pid, pstate in optim["state"].items():
        assert opt["state"][pid].keys() == pstate.keys()
        for k, v in pstate.items():
            assert torch.equal(opt["state"][pid][k], v) if torch.is_tensor(v) else opt["state"][pid][k] == v
    # the selected weights of a checkpoint are its best state; of a final model file, its model state
    weights = load_method_weights(path)
    assert weights.keys() == best.keys() and all(torch.equal(weights[k], best[k]) for k in best)
    save_tensors(tmp_path / "m.safetensors", {f"model.{k}": v for k, v in model.items()})
    weights = load_method_weights(tmp_path / "m.safetensors")
    assert weights.keys() == model.keys() and all(torch.equal(weights[k], model[k]) for k in model)
    torch.save(model, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="refusing to unpickle"):  # pickles only when asked
        load_method_weights(tmp_path / "w.pt")
    assert torch.equal(load_method_weights(tmp_path / "w.pt", allow_pickle=True)["head.weight"], model["head.weight"])


def test_checkpoint_of_another_shape_is_one_line(tiny_clip, parts, tmp_path, monkeypatch):
    """A checkpoint whose tensors do not fit the method (n_ctx 2 vs 3) is refused naming the file."""
    ckpt = tmp_path / "c.ckpt"
    _kill(tiny_clip, ckpt, *parts, 1, monkeypatch)
    torch.manual_seed(0)
    other = create_method("coop", tiny_clip, CLASSES, {"n_ctx": 3})
    with pytest.raises(CheckpointError,  # the first line of torch's message only
                       match=r"c\.ckpt: cannot resume 'coop' from it \(Error\(s\) in loading state_dict for CoOp:\)") as exc:
        fit(other, *parts, _cfg(), checkpoint=ckpt)
    assert "\n" not in str(exc.value)
