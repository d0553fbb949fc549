"""One training loop for every method.

Closed-form methods fit on the cached train/val features; gradient methods train their own
parameters (only those with `requires_grad`) with SGD/AdamW, constant warm-up then cosine, for
`epochs` epochs, and keep the final epoch's weights (`select="last"`, the few-shot papers'
protocol) or the epoch with the best validation metric (`select="val"`; ties: the lower validation
loss). `FitResult.selection` says which epoch was kept and why. Device, mixed precision and DDP come from Lightning Fabric. After every epoch a checkpoint
is written atomically; a killed run restarted with the same checkpoint path resumes from the last
finished epoch and reaches the same final weights bit for bit on CPU, because each epoch's
randomness is seeded from (seed, epoch).
Once the weights are final (best state loaded), `Method.after_fit` may re-choose what depends on
them (Tip-Adapter-F re-searches alpha, beta on validation).
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from conceptclip.engine.checkpoint import load_checkpoint, save_checkpoint
from conceptclip.engine.config import RESUME_CHANGEABLE, TrainConfig
from conceptclip.engine.data import Part
from conceptclip.engine.evaluate import classification_metrics, predict
from conceptclip.errors import CheckpointError, ConfigError
from conceptclip.progress import progress


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_score: float | None = None
    closed_form: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    resumed_from: int | None = None
    selection: dict[str, Any] = field(default_factory=dict)  # {"select", "epoch", "reason"}


def selection_record(cfg: TrainConfig, epoch: int | None, score: float | None, epochs_run: int) -> dict[str, Any]:
    """What `fit` kept and why, as stored in metrics.json and printed by `train`."""
    if epoch is None:
        return {"select": cfg.select, "epoch": None, "reason": "no training epochs (closed form or epochs=0)"}
    if cfg.select == "last":
        reason = (f"select=last: the final epoch of {epochs_run} (0-based {epoch}), as the few-shot papers test; "
                  "--train select=val keeps the best validation epoch instead")
    else:
        shown = "n/a" if score is None else f"{score:.4f}"
        reason = (f"select=val: epoch {epoch} had the best validation {cfg.select_metric} ({shown}; ties: the "
                  f"lower validation loss) of {epochs_run} epochs")
    return {"select": cfg.select, "epoch": epoch, "reason": reason}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def make_fabric(cfg: TrainConfig):
    """A Fabric for `cfg`. With `devices` > 1: DDP in processes that `fit` launches itself
    (forked on CPU, where the parent holds the cached features; spawned on CUDA, which cannot fork)."""
    from lightning.fabric import Fabric

    strategy = "auto"
    if cfg.devices > 1:
        cuda = cfg.accelerator == "cuda" or (cfg.accelerator == "auto" and torch.cuda.is_available())
        strategy = "ddp_spawn" if cuda else "ddp_fork"
    return Fabric(accelerator=cfg.accelerator, devices=cfg.devices, precision=cfg.precision, strategy=strategy)


def _fit_in_process(fabric, method, train: Part, val: Part | None, cfg: TrainConfig, checkpoint, on_epoch):
    """One DDP process: train, then hand rank 0's result and learned state back to the launcher."""
    from safetensors.torch import save

    result = fit(method, train, val, cfg, checkpoint=checkpoint, fabric=fabric, on_epoch=on_epoch, _launched=True)
    # bytes, not tensors: tensors would travel as shared-memory handles that die with this process
    return result, save({k: v.detach().cpu().contiguous() for k, v in method.learned_state().items()})


def _check_distributed(method, cfg: TrainConfig, world: int) -> None:
    from conceptclip.methods.base import Method

    if cfg.batch_size % world:
        raise ConfigError(f"train config: batch_size={cfg.batch_size} with devices={world}: expected a multiple of "
                          "devices (each process takes batch_size / devices samples of every batch)")
    if type(method).backward is not Method.backward:
        raise ConfigError(f"method {method.name!r} combines gradients itself (its own backward), which DDP does "
                          "not synchronise; train it with devices=1")


def check_resume(path: Path, state: dict[str, Any], cfg: TrainConfig) -> None:
    """Refuse to continue checkpoint `state` under a training configuration it was not trained with:
    any option outside RESUME_CHANGEABLE that differs (checkpoints that recorded their config), or fewer
    epochs than it has already finished."""
    old = state.get("train_config")
    if old is not None:
        new = dataclasses.asdict(cfg)
        differ = [f"{k} {old[k]!r} -> {new[k]!r}" for k in new if k not in RESUME_CHANGEABLE and k in old
                  and old[k] != new[k]]
        if differ:
            raise CheckpointError(f"{path}: cannot resume under a different training configuration "
                                  f"({'; '.join(differ)}); resume with the checkpoint's options or start a new run")
    done = state["epoch"] + 1
    if done > cfg.epochs:
        raise CheckpointError(f"{path}: the checkpoint has {done} finished epochs, more than epochs={cfg.epochs}; "
                              f"resume with epochs >= {done}")


def _optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def validation_score(method, val: Part | None, metric: str, device) -> tuple[float, float] | None:
    """(selection metric, mean negative log-likelihood) of `method` on `val`; None without a val part."""
    if val is None or len(val) == 0:
        return None
    probs = predict(method, val, device=device)
    metrics = classification_metrics(probs, val.labels, method.classnames, method.multilabel)
    if metric not in metrics:
        raise ConfigError(f"select_metric={metric!r}: expected one of {sorted(k for k in metrics if k != 'n')}")
    value = metrics[metric]
    p = probs.double().clamp(1e-12, 1 - 1e-12)
    if method.multilabel:
        y = val.labels.double()
        nll = -(y * p.log() + (1 - y) * (1 - p).log()).mean()
    else:
        nll = -p.gather(1, val.labels.long()[:, None]).log().mean()
    return (float("nan") if value is None else float(value)), float(nll)


def selection_key(record: dict, metric: str) -> tuple[float, float]:
    """Model selection: the higher validation metric, ties broken by the lower validation loss (on a
    few-shot validation set accuracy ties often; the earliest epoch would otherwise win them)."""
    return record[f"val_{metric}"], -record.get("val_loss", 0.0)


def _cached(train: Part, val: Part | None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None:
    """(train, val) as whole batches of cached features, val falling back to train when absent or empty;
    None when the train part serves pixels."""
    if train.tensors is None:
        return None
    return train.all(), val.all() if val is not None and len(val) else train.all()


def _after_fit(method, parts: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None,
               result: FitResult) -> None:
    """Run `method.after_fit` on the final weights (in every DDP process, before the state is handed back)
    and record what it chose under closed_form["after_fit"]. Pixel-serving parts: not called."""
    if parts is None:
        return
    chosen = method.after_fit(*parts)
    if chosen:
        result.closed_form["after_fit"] = chosen


def fit(method, train: Part, val: Part | None, cfg: TrainConfig, *, checkpoint: str | Path | None = None,
        fabric=None, on_epoch: Callable[[dict], None] | None = None, _launched: bool = False) -> FitResult:
    """Fit `method` on `train`, selecting on `val`; resume from `checkpoint` when it exists.

    With `cfg.devices` > 1, `devices` processes each take `batch_size / devices` samples of every
    batch (the same batches as one process, split by rank) and DDP averages their gradients, so the
    result equals one process's up to floating-point summation order. `method.after_fit` runs once at
    the end, on the final (best) weights, inside the training process(es)."""
    cfg.validate()
    fabric = fabric or make_fabric(cfg)
    if fabric.world_size > 1 and not _launched:
        _check_distributed(method, cfg, fabric.world_size)
        if not method.trainable_parameters() or cfg.epochs == 0:
            return fit(method, train, val, cfg, fabric=fabric, _launched=True)  # closed form: nothing to share
        from safetensors.torch import load

        result, state = fabric.launch(_fit_in_process, method, train, val, cfg, checkpoint, on_epoch)
        method.load_learned_state(load(state))
        method.to(fabric.device)
        return result
    t0 = time.perf_counter()
    seed_everything(cfg.seed)
    result = FitResult()
    method.to(fabric.device)
    parts = _cached(train, val)
    if parts is not None:
        result.closed_form = method.fit_closed_form(*parts)
    params = method.trainable_parameters()
    if not params or cfg.epochs == 0:
        result.selection = selection_record(cfg, None, None, 0)
        _after_fit(method, parts, result)
        result.seconds = time.perf_counter() - t0
        return result
    if len(train) == 0:
        raise ConfigError("the train part is empty: nothing to learn from")

    optimizer = _optimizer(params, cfg)
    model, optimizer = fabric.setup(method, optimizer)
    start, best_state, best_score, best_key = 0, None, None, None
    ckpt_path = Path(checkpoint) if checkpoint else None
    if ckpt_path is not None and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        check_resume(ckpt_path, state, cfg)
        try:
            method.load_learned_state(state["method_state"])
            if state["optimizer_state"] is not None:
                optimizer.load_state_dict(state["optimizer_state"])
        except (ConfigError, RuntimeError, ValueError, KeyError) as exc:  # a checkpoint of another method/config
            msg = str(exc).strip().splitlines()[0][:300]
            raise CheckpointError(f"{ckpt_path}: cannot resume {method.name!r} from it ({msg})") from None
        start = state["epoch"] + 1
        best_state = state["best_state"] or None
        best_score = state["best_score"]
        result.history = state["history"]
        scored = [r for r in result.history if f"val_{cfg.select_metric}" in r]
        best_key = max((selection_key(r, cfg.select_metric) for r in scored), default=None)
        result.resumed_from = state["epoch"]

    batch_size = cfg.batch_size // fabric.world_size
    bar = progress(range(start, cfg.epochs), enabled=cfg.progress and fabric.is_global_zero,
                   desc=f"training {method.name}", unit="epoch", leave=False, initial=start, total=cfg.epochs)
    for epoch in bar:
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr_at(epoch)
        seed = epoch_seed(cfg.seed, epoch)
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model.train()
        sums: dict[str, float] = {}
        steps = 0
        for batch in train.batches(batch_size, shuffle=True, generator=gen, rank=fabric.global_rank,
                                   world=fabric.world_size):
            batch = {k: v.to(fabric.device) for k, v in batch.items()}
            terms = model(batch)
            optimizer.zero_grad(set_to_none=True)
            method.backward(terms, fabric.backward)
            if cfg.max_grad_norm > 0:
                fabric.clip_gradients(model, optimizer, max_norm=cfg.max_grad_norm)
            optimizer.step()
            method.on_train_step_end()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            steps += 1
        if fabric.world_size > 1 and sums:  # log the whole batches' means, not rank 0's half
            mean = fabric.all_reduce(torch.tensor(list(sums.values()), dtype=torch.float64), reduce_op="mean")
            sums = dict(zip(sums, mean.tolist()))
        record: dict[str, Any] = {"epoch": epoch, "lr": cfg.lr_at(epoch),
                                  **{k: v / max(steps, 1) for k, v in sums.items()}}
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            scored = validation_score(method, val, cfg.select_metric, fabric.device)
            if scored is not None:
                record[f"val_{cfg.select_metric}"], record["val_loss"] = scored
                key = selection_key(record, cfg.select_metric)
                if cfg.select == "val" and (best_key is None or key > best_key):
                    best_key, best_score = key, scored[0]
                    best_state = {k: v.detach().clone().cpu() for k, v in method.learned_state().items()}
                    result.best_epoch = epoch
        result.history.append(record)
        bar.set_postfix(loss=f"{record.get('loss', float('nan')):.4f}",
                        **({"val": f"{record[f'val_{cfg.select_metric}']:.3f}"} if f"val_{cfg.select_metric}" in record else {}))
        if on_epoch is not None and fabric.is_global_zero:
            on_epoch(record)
        if ckpt_path is not None and fabric.is_global_zero:
            save_checkpoint(ckpt_path, method_state=method.learned_state(), optimizer_state=optimizer.state_dict(),
                            epoch=epoch, best_state=best_state, best_score=best_score, history=result.history,
                            train_config=dataclasses.asdict(cfg))
        fabric.barrier()
    bar.close()
    if cfg.select == "last":  # the final epoch's weights are the ones in the model already
        last = result.history[-1] if result.history else {}
        result.best_epoch = last.get("epoch", cfg.epochs - 1)
        result.best_score = last.get(f"val_{cfg.select_metric}")
    elif best_state is not None:
        method.load_learned_state({k: v.to(fabric.device) for k, v in best_state.items()})
        result.best_score = best_score
        if result.best_epoch is None:  # resumed after the best epoch was found
            result.best_epoch = max((r for r in result.history if f"val_{cfg.select_metric}" in r),
                                    key=lambda r: selection_key(r, cfg.select_metric))["epoch"]
    result.selection = selection_record(cfg, result.best_epoch, result.best_score, cfg.epochs)
    _after_fit(method, parts, result)
    result.seconds = time.perf_counter() - t0
    return result
