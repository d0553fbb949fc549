"""Re-create a trained method from its results folder (config.json + model.safetensors)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conceptclip.errors import CheckpointError, ConfigError


def load_run(run: str | Path, device: str | None = None) -> tuple[Any, dict]:
    """-> (method with its learned state, config dict). Backbone paths are resolved against the run folder."""
    from conceptclip.backbones import create_backbone
    from conceptclip.engine.checkpoint import load_method_weights
    from conceptclip.methods import create_method

    run = Path(run)
    cfg_path = run / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{run}: not a results folder (config.json missing)")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        spec, name = cfg["backbone"], cfg["method"]["method"]
        classnames, mconf = cfg["classnames"], cfg["method"]["config"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{cfg_path}: not a valid run config ({type(exc).__name__}: {exc})") from None
    kind, _, arg = spec.partition(":")
    if kind == "lite" and arg and not Path(arg).is_absolute():
        spec = f"lite:{run / arg}"
    backbone = create_backbone(spec, device=device)
    method = create_method(name, backbone, classnames, mconf, template=cfg.get("template", "a photo of a {}."),
                           multilabel=cfg.get("multilabel", False))
    weights = run / "model.safetensors"
    try:
        method.load_learned_state(load_method_weights(weights))
    except (ConfigError, RuntimeError) as exc:  # wrong keys or shapes: name the file, not a torch stack
        msg = str(exc).strip().splitlines()[0][:300]
        raise CheckpointError(f"{weights}: does not fit method {name!r} of {cfg_path.name} ({msg})") from None
    method.eval()
    return method, cfg
