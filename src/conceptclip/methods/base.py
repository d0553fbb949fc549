"""What every method is: an `nn.Module` with a config dataclass (the paper's defaults),
`logits(batch)`, `loss(batch) -> dict of named terms`, and optionally `fit_closed_form` (training-free
methods), `after_fit` (re-choices on the trained weights), `concept_scores(batch)` and `explain(batch)`.

A batch is a dict of tensors: "features" (B, D) frozen global image features, "patches" (B, N, D)
patch tokens, "pixels" (B, 3, S, S), "labels" (B,) class indices or (B, C) multi-hot, "index" (B,).
A method lists in `inputs` which of these it reads, so the engine can serve cached features
instead of re-encoding images every step.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Callable, ClassVar, Collection, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from conceptclip.backbones.base import Backbone
from conceptclip.errors import ConfigError


@dataclasses.dataclass
class MethodConfig:
    """Base of every method config: a dataclass that checks its own values when it is made (`validate`).

    A field states its help and where its default comes from in its metadata (`option`):
    "paper" (or "paper: NAME" when another paper states it), "code: REPOSITORY/FILE" (the official code, where
    the paper is silent) or "ours" (or "ours: why")."""

    # how `expect` names a field: "" = "ClassName." (a subclass may keep its method's earlier "name ")
    error_prefix: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the field and what it expects (subclasses extend it). Default: nothing."""

    def expect(self, ok: bool, name: str, expected: str) -> None:
        """ConfigError "ClassName.name=value: expected ..." unless `ok`."""
        if not ok:
            prefix = self.error_prefix or f"{type(self).__name__}."
            raise ConfigError(f"{prefix}{name}={getattr(self, name)!r}: expected {expected}")

    def expect_choice(self, name: str, options: Sequence[Any]) -> None:
        self.expect(getattr(self, name) in options, name, f"one of {tuple(options)}")


def upgrade_saved_config(values: dict[str, Any], cls: type, new_fields: Collection[str],
                         earlier: dict[str, Any]) -> dict[str, Any]:
    """A config saved before `new_fields` existed (every other field of `cls`, none of these) runs as it
    was trained: its missing options take their `earlier` values. Any other config is returned as given."""
    old = {f.name for f in dataclasses.fields(cls)} - set(new_fields)
    return {**earlier, **values} if set(values) == old else values


def option(default: Any = dataclasses.MISSING, help: str = "", source: str = "paper", *,
           factory: Callable[[], Any] | None = None) -> Any:
    """A config field with its help and the source of its default ("paper", "code: REPO/FILE" or "ours"; "paper: NAME"
    where the paper is not the method's own, "ours: why" with a reason),
    the metadata `conceptclip methods NAME` prints; `factory` for a mutable default."""
    meta = {"help": help, "source": source}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


_KIND = {bool: "true/false", int: "a number (an integer)", float: "a number (finite)", str: "text", list: "a JSON list",
         tuple: "a JSON list", dict: "a JSON object"}


def _expected(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _expected(a) for a in args)
    return _KIND.get(origin or hint, getattr(hint, "__name__", str(hint)))


def coerce_value(hint: Any, value: Any) -> Any:
    """`value` (parsed from JSON or given in Python) as the field type `hint`; raises TypeError when it is
    not one. bool, int (integral floats accepted), finite float, str (numbers accepted as their text),
    None only for Optional fields, Literal, list/tuple/dict (elements checked one level deep)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or isinstance(hint, typing.TypeVar):
        return value
    if origin is typing.Literal:
        if value in args:
            return value
        raise TypeError
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce_value(arg, value)
            except TypeError:
                continue
        raise TypeError
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if hint is int:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise TypeError
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # `--set ctx_init=5` arrives as the JSON number 5
        raise TypeError
    container = origin or hint
    if container in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise TypeError
        inner = args[0] if args and (container is list or (len(args) == 2 and args[1] is Ellipsis)) else Any
        items = [coerce_value(inner, v) for v in value]
        return tuple(items) if container is tuple else items
    if container is dict:
        if not isinstance(value, dict):
            raise TypeError
        inner = args[1] if len(args) == 2 else Any
        return {k: coerce_value(inner, v) for k, v in value.items()}
    return value  # a type this check does not know: the config's own validation decides


def build_config(cls: type, values: dict[str, Any] | None, what: str | None = None) -> Any:
    """Instantiate a config dataclass from a dict, with a one-line error for an unknown option or a value
    that is not of its field's type (`what` prefixes the messages; default `ClassName.`)."""
    what = f"{cls.__name__}." if what is None else what
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{what.rstrip('. :')}: unknown option(s) {unknown}; expected some of {sorted(fields)}")
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):  # an annotation that does not resolve: keep the values as given
        hints = {}
    for name, value in values.items():
        if name not in hints:
            continue
        try:
            values[name] = coerce_value(hints[name], value)
        except TypeError:
            shown = "null" if value is None else repr(value)
            raise ConfigError(f"{what}{name}={shown}: expected {_expected(hints[name])}") from None
    return cls(**values)


class Method(nn.Module):
    """Base class: subclasses set `name`, `Config`, `inputs` and implement `logits`."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = MethodConfig
    inputs: ClassVar[frozenset[str]] = frozenset({"features"})
    # paper defaults for the training loop (keys of engine.TrainConfig)
    train_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, backbone: Backbone, classnames: Sequence[str], config: Any = None, *,
                 template: str = "a photo of a {}.", multilabel: bool = False, **context: Any) -> None:
        super().__init__()
        if config is None or isinstance(config, dict):
            config = build_config(self.Config, config)
        self.config = config
        self.backbone = backbone
        self.classnames = [c.replace("_", " ") for c in classnames]
        self.template = template
        self.multilabel = multilabel
        self.context = context

    @classmethod
    def train_defaults_for(cls, shots: int | None = None) -> dict[str, Any]:
        """The paper's training-loop defaults for a split of `shots` images per class (None: not a
        K-shot split). Default: `train_defaults`; methods whose schedule depends on K override this."""
        return dict(cls.train_defaults)

    # -- the interface -----------------------------------------------------------------
    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Named loss terms; "loss" is the total the engine back-propagates."""
        ce = self.classification_loss(self.logits(batch), batch["labels"])
        return {"loss": ce, "ce": ce.detach()}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The training step's loss dict (what DDP wrappers call)."""
        return self.loss(batch)

    def fit_closed_form(self, train: dict[str, torch.Tensor], val: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Training-free / closed-form fitting on frozen features (linear probe, Tip-Adapter, ...).
        Returns what it chose (hyper-parameters) for the results folder. Default: nothing to fit."""
        return {}

    def after_fit(self, train: dict[str, torch.Tensor], val: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Hook after training, on the final (best) weights and the cached train/val features (val is
        train when there is no validation part): re-choose what depends on the learned weights
        (Tip-Adapter-F re-searches alpha, beta). Runs in every DDP process, so it must be
        deterministic; what it sets must live in `learned_state` to be saved. Returns what it chose
        for the results folder. Default: nothing."""
        return {}

    def backward(self, terms: dict[str, torch.Tensor], backward: Callable[[torch.Tensor], None]) -> None:
        """Turn the loss terms into gradients; `backward` is the engine's (AMP/DDP aware) backward.
        Default: back-propagate the total. Methods that combine gradients (ProGrad) override this."""
        backward(terms["loss"])

    def on_train_step_end(self) -> None:
        """Hook after each optimiser step (e.g. EMA, clamping). Default: nothing."""

    # -- helpers -----------------------------------------------------------------------
    def classification_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.multilabel:
            return F.binary_cross_entropy_with_logits(logits, labels.float())
        return F.cross_entropy(logits, labels)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid() if self.multilabel else logits.softmax(-1)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def learned_state(self) -> dict[str, torch.Tensor]:
        """Everything a checkpoint must hold: the state dict without the frozen backbone."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def load_learned_state(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("backbone.")]
        if missing or unexpected:
            raise ConfigError(f"checkpoint does not fit method {self.name!r}: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, "config": dataclasses.asdict(self.config),
                "trainable_parameters": sum(p.numel() for p in self.trainable_parameters())}
