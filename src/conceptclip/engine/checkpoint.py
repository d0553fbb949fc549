"""Resumable checkpoints in safetensors: the method's learned state, the optimiser state
(flattened to tensors + JSON metadata), the epoch, the best state so far and the RNG state.
Loading never unpickles anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from conceptclip.errors import CheckpointError
from conceptclip.io import load_tensors, save_tensors


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = {}, {"param_groups": state["param_groups"], "scalars": {}}
    for pid, pstate in state["state"].items():
        for key, val in pstate.items():
            if torch.is_tensor(val):
                tensors[f"optim.{pid}.{key}"] = val
            else:
                meta["scalars"][f"{pid}.{key}"] = val
    return tensors, meta


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, val in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = val
    for name, val in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = val
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(path: str | Path, *, method_state: dict, optimizer_state: dict | None, epoch: int,
                    best_state: dict | None, best_score: float | None, history: list[dict],
                    train_config: dict | None = None) -> Path:
    """`train_config` (the TrainConfig as a dict) lets a resume refuse a different configuration."""
    tensors = {f"model.{k}": v for k, v in method_state.items()}
    if best_state is not None:
        tensors.update({f"best.{k}": v for k, v in best_state.items()})
    opt_meta = None
    if optimizer_state is not None:
        opt_tensors, opt_meta = _flatten_optimizer(optimizer_state)
        tensors.update(opt_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"format": "conceptclip-checkpoint-1", "epoch": epoch, "best_score": best_score,
            "optimizer": opt_meta, "history": history, "train_config": train_config}
    return save_tensors(path, tensors, metadata={"conceptclip": json.dumps(meta)})


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """-> {"method_state", "best_state", "optimizer_state", "epoch", "best_score", "history", "rng",
    "train_config"} (train_config None in checkpoints written before it was recorded)."""
    from safetensors import safe_open

    tensors = load_tensors(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})["conceptclip"])
    except (KeyError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: not a conceptclip training checkpoint (missing metadata: {exc})") from None
    if (not isinstance(meta, dict) or not isinstance(meta.get("epoch"), int) or not isinstance(meta.get("history"), list)
            or not isinstance(meta.get("best_score"), (int, float, type(None)))
            or not isinstance(meta.get("optimizer"), (dict, type(None)))
            or not isinstance(meta.get("train_config"), (dict, type(None)))):
        raise CheckpointError(f"{path}: not a conceptclip training checkpoint (metadata needs an integer 'epoch', "
                              "a 'history' list, a numeric 'best_score', an 'optimizer' object or null and a 'train_config' object or null)")
    out: dict[str, Any] = {"method_state": {}, "best_state": {}, "epoch": meta["epoch"],
                           "best_score": meta.get("best_score"), "history": meta["history"],
                           "rng": tensors.get("rng.torch"), "train_config": meta.get("train_config")}
    opt = {}
    for k, v in tensors.items():
        if k.startswith("model."):
            out["method_state"][k[6:]] = v
        elif k.startswith("best."):
            out["best_state"][k[5:]] = v
        elif k.startswith("optim."):
            opt[k] = v
    try:
        out["optimizer_state"] = _unflatten_optimizer(opt, meta["optimizer"]) if meta["optimizer"] else None
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: optimizer state is malformed ({type(exc).__name__}: {exc})") from None
    return out


def checkpoint_epoch(path: str | Path) -> int:
    """The last finished epoch recorded in a training checkpoint."""
    return load_checkpoint(path)["epoch"]


def load_method_weights(path: str | Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The learned state of a `model.safetensors` (final weights) or a training checkpoint's best state.
    A pickled `.pt`/`.pth` file is refused unless `allow_pickle=True` (then read weights-only)."""
    tensors = load_tensors(path, allow_pickle=allow_pickle)
    if any(k.startswith("best.") for k in tensors):
        return {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    if any(k.startswith("model.") for k in tensors):
        return {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    return tensors
