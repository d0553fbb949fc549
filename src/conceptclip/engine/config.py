"""Training-loop configuration shared by every method (a method overrides with its paper's defaults)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from conceptclip.errors import ConfigError


# Training options a resumed run may change (recorded in config.json's "resumed"): more or fewer
# epochs, and options that do not change the numbers. Any other difference is refused on resume.
RESUME_CHANGEABLE = frozenset({"epochs", "progress", "num_workers", "accelerator"})


@dataclass
class TrainConfig:
    epochs: int = 50
    batch_size: int = 32
    lr: float = 0.002
    optimizer: str = "sgd"  # sgd | adamw
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1  # constant warm-up (CoOp/Dassl "constant" warm-up)
    warmup_lr: float = 1e-5
    scheduler: str = "cosine"  # cosine | constant
    seed: int = 1
    precision: str = "32-true"  # Lightning Fabric precision: 32-true, bf16-mixed, 16-mixed
    accelerator: str = "auto"  # auto | cpu | cuda
    devices: int = 1  # >1: DDP through Lightning Fabric
    # which epoch's weights are tested: "last" = the final epoch (CoOp and its successors report the
    # final epoch); "val" = the epoch with the best `select_metric` on the validation part (ours;
    # ties: the lower validation loss). Validation is logged every `eval_every` epochs either way.
    select: str = "last"
    select_metric: str = "accuracy"  # validation metric logged (and, with select="val", maximised)
    eval_every: int = 1
    max_grad_norm: float = 0.0  # 0 = no clipping
    num_workers: int = 0
    augment_views: int = 0  # >0: train on this many cached augmented views (crop + flip) of each image
    progress: bool = True

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "TrainConfig":
        """The config of `values` (e.g. parsed `--train KEY=VALUE` options): unknown keys and values not of
        the field's type (lr=fast, epochs=1.5, epochs=null) are one-line ConfigErrors."""
        from conceptclip.methods.base import build_config

        cfg = build_config(cls, values, what="train config: ")
        cfg.validate()
        return cfg

    def validate(self) -> None:
        from conceptclip.methods.base import build_config

        build_config(type(self), dataclasses.asdict(self), what="train config: ")  # the field types
        checks = [
            (self.epochs >= 0, "epochs", "a non-negative integer"),
            (self.batch_size >= 1, "batch_size", "a positive integer"),
            (self.lr > 0, "lr", "a positive number"),
            (self.optimizer in ("sgd", "adamw"), "optimizer", "'sgd' or 'adamw'"),
            (self.scheduler in ("cosine", "constant"), "scheduler", "'cosine' or 'constant'"),
            (self.precision in ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true"), "precision",
             "one of 32-true, bf16-mixed, 16-mixed, bf16-true"),
            (self.devices >= 1, "devices", "a positive integer"),
            (self.select in ("last", "val"), "select",
             "'last' (test the final epoch, the few-shot papers' protocol) or 'val' (the best validation epoch)"),
            (self.eval_every >= 1, "eval_every", "a positive integer"),
            (0 <= self.warmup_epochs, "warmup_epochs", "a non-negative integer"),
            (self.augment_views >= 0, "augment_views", "a non-negative integer"),
            (self.num_workers >= 0, "num_workers", "a non-negative integer"),
            (self.eval_every >= 1, "eval_every", "a positive integer"),
            (self.max_grad_norm >= 0, "max_grad_norm", "a non-negative number (0: no clipping)"),
            (self.momentum >= 0 and self.weight_decay >= 0 and self.warmup_lr >= 0,
             "momentum" if self.momentum < 0 else "weight_decay" if self.weight_decay < 0 else "warmup_lr",
             "a non-negative number"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise ConfigError(f"train config: {name}={getattr(self, name)!r}: expected {expected}")

    def lr_at(self, epoch: int) -> float:
        """Learning rate of epoch `epoch` (0-based): constant warm-up, then cosine over all epochs."""
        import math

        if epoch < self.warmup_epochs:
            return self.warmup_lr
        if self.scheduler == "constant":
            return self.lr
        return 0.5 * self.lr * (1 + math.cos(math.pi * epoch / max(1, self.epochs)))
