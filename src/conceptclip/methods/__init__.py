"""Method registry: one module per method in this package, each registering itself by name.

`create_method("coop", backbone, classnames, {"n_ctx": 16})`; `available_methods()` lists them.
Every module in this package is imported on first use, so adding a method is adding a file.

Other packages add methods through the entry-point group "conceptclip.methods" (docs/add-a-method.md):
`NAME = "package.module:Class"` registers Class as NAME, `NAME = "package.module"` imports a module that
registers its methods itself with `@register_method`. They load with the package's methods; one that
fails to load is a one-line warning naming the entry point (and the error if NAME is asked for).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import pkgutil
import warnings
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


ENTRY_POINT_GROUP = "conceptclip.methods"
_PLUGINS: dict[str, str] | None = None  # entry point name -> why it failed to load ("" loaded); None: not read yet


def _load_all() -> None:
    for mod in pkgutil.iter_modules(__path__):
        if mod.name not in ("base",):
            importlib.import_module(f"{__name__}.{mod.name}")
    importlib.import_module("conceptclip.rctpl.method")  # RC-TPL lives with its text-only pipeline
    _load_plugins()


def _load_plugins() -> dict[str, str]:
    """Load the methods of other packages (entry-point group "conceptclip.methods") once."""
    global _PLUGINS
    if _PLUGINS is not None:
        return _PLUGINS
    _PLUGINS = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        _PLUGINS[ep.name] = _load_plugin(ep)
        if _PLUGINS[ep.name]:
            warnings.warn(f"method plugin {ep.name!r} not loaded: {_PLUGINS[ep.name]}", stacklevel=2)
    return _PLUGINS


def _load_plugin(ep: importlib.metadata.EntryPoint) -> str:
    """Load one entry point; returns "" or why it failed (the entry point named)."""
    where = f"entry point {ep.name} = {ep.value!r} (group {ENTRY_POINT_GROUP!r}" + (
        f", distribution {ep.dist.name})" if getattr(ep, "dist", None) is not None else ")")
    try:
        obj = ep.load()
    except Exception as exc:  # a broken plugin must not break every command
        return f"{where} failed to import: {type(exc).__name__}: {exc}"
    if inspect.ismodule(obj):
        return ""  # the module registered its methods with @register_method when it was imported
    if not (isinstance(obj, type) and issubclass(obj, Method)):
        return f"{where} is neither a Method subclass nor a module"
    if obj in _METHODS.values():
        return ""  # decorated with @register_method already
    try:
        register_method(ep.name)(obj)
    except ConfigError as exc:
        return f"{where}: {exc}"
    return ""


def available_methods() -> list[str]:
    _load_all()
    return sorted(_METHODS)


def get_method_class(name: str) -> type[Method]:
    _load_all()
    if name not in _METHODS:
        if (_PLUGINS or {}).get(name):
            raise ConfigError(f"method {name!r}: {_PLUGINS[name]}")
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
           "create_method", "ENTRY_POINT_GROUP"]
