"""Method registry: one module per method in this package, each registering itself by name.

`create_method("coop", backbone, classnames, {"n_ctx": 16})`; `available_methods()` lists them.
Every module in this package is imported on first use, so adding a method is adding a file.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable, Sequence

from conceptclip.errors import ConfigError, MissingTowerError
from conceptclip.methods.base import Method, MethodConfig, build_config

_METHODS: dict[str, type[Method]] = {}


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    def deco(cls: type[Method]) -> type[Method]:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ConfigError(f"method name {name!r} registered twice")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return deco


def _load_all() -> None:
    for mod in pkgutil.iter_modules(__path__):
        if mod.name not in ("base",):
            importlib.import_module(f"{__name__}.{mod.name}")
    importlib.import_module("conceptclip.rctpl.method")  # RC-TPL lives with its text-only pipeline


def available_methods() -> list[str]:
    _load_all()
    return sorted(_METHODS)


def get_method_class(name: str) -> type[Method]:
    _load_all()
    if name not in _METHODS:
        raise ConfigError(f"unknown method {name!r}: expected one of {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def create_method(name: str, backbone: Any, classnames: Sequence[str], config: Any = None, **kwargs: Any) -> Method:
    """Build method `name`; a backbone without the towers it needs (stored embeddings) refuses it at once."""
    cls = get_method_class(name)
    lacking = sorted(cls.inputs & getattr(backbone, "unavailable_inputs", frozenset()))
    if lacking:
        raise ConfigError(f"method {name!r} reads {' and '.join(lacking)}, which backbone {backbone.name!r} lacks "
                          "(stored embeddings: no image tower); use a method on global features")
    try:
        return cls(backbone, classnames, config, **kwargs)
    except MissingTowerError as exc:
        raise ConfigError(f"method {name!r} cannot run on this backbone: {exc}") from None


__all__ = ["Method", "MethodConfig", "build_config", "register_method", "available_methods", "get_method_class",
           "create_method"]
