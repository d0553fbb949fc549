"""Backbone registry: `create_backbone("lite")`, `create_backbone("hf:openai/clip-vit-base-patch16")`,
`create_backbone("open_clip:hf-hub:microsoft/BiomedCLIP-...")`, `create_backbone("tiny-clip")`,
`create_backbone("embeddings:DIR")` (stored embeddings, no towers).

A spec is `KIND` or `KIND:ARG`; each kind maps to a factory registered with `register_backbone`
(kept in `backbones.base`, so the backends never import this package). Backends import their heavy
dependencies lazily, inside the factory.
"""

from __future__ import annotations

from conceptclip.backbones.base import FACTORIES as _FACTORIES
from conceptclip.backbones.base import Backbone, ImageFeatures, TokenBatch, register_backbone
from conceptclip.errors import BackboneError


def available_backbones() -> list[str]:
    _load_builtin()
    return sorted(_FACTORIES)


def create_backbone(spec: str, device: str | None = None, freeze: bool = True) -> Backbone:
    """Build a backbone from its spec string; unknown kinds fail with the list of known ones."""
    _load_builtin()
    if not isinstance(spec, str) or not spec.strip():
        raise BackboneError(f"backbone spec must be a non-empty string, got {spec!r}")
    kind, _, arg = spec.partition(":")
    if kind not in _FACTORIES:
        raise BackboneError(
            f"unknown backbone {spec!r}: expected one of {', '.join(available_backbones())} "
            "(as KIND or KIND:ARG, e.g. 'lite', 'hf:openai/clip-vit-base-patch16')"
        )
    model = _FACTORIES[kind](arg or None)
    if freeze:
        model.freeze()
    if device is not None:
        model.to(device)
    return model


_LOADED = False


def _load_builtin() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from conceptclip.backbones import embeddings, hf_clip, lite, open_clip_backend  # noqa: F401  (registers)


__all__ = ["Backbone", "ImageFeatures", "TokenBatch", "create_backbone", "register_backbone", "available_backbones"]
