"""Re-create a trained method from its results folder (config.json + model.safetensors)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from conceptclip.errors import CheckpointError, ConfigError


def backbone_key(spec: str) -> str:
    """What identifies a loaded backbone: the spec, with a lite heads file replaced by its sha256."""
    kind, _, arg = spec.partition(":")
    if kind == "lite" and arg and Path(arg).is_file():
        return "lite:" + hashlib.sha256(Path(arg).read_bytes()).hexdigest()
    return spec


def read_config(run: str | Path) -> dict[str, Any]:
    """A results folder's config.json (CheckpointError naming the folder when it is not one)."""
    cfg_path = Path(run) / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{run}: not a results folder (config.json missing)")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{cfg_path}: not a valid run config ({type(exc).__name__}: {exc})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_path}: not a valid run config (expected a JSON object)")
    return cfg


def load_run(run: str | Path, device: str | None = None,
             backbones: dict[str, Any] | None = None) -> tuple[Any, dict]:
    """-> (method with its learned state, config dict). Backbone paths and the files the method's
    options name (copied into the run, see `engine.files`) are resolved against the run folder.

    `backbones` (key -> backbone, filled as runs load) lets runs on the same backbone weights share
    one loaded backbone (a report over many runs loads the towers once)."""
    from conceptclip.backbones import create_backbone
    from conceptclip.data.splits import Split
    from conceptclip.engine.checkpoint import load_method_weights
    from conceptclip.methods import create_method

    run = Path(run)
    cfg_path = run / "config.json"
    cfg = read_config(run)
    try:
        spec, name = cfg["backbone"], cfg["method"]["method"]
        classnames, mconf = cfg["classnames"], cfg["method"]["config"]
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{cfg_path}: not a valid run config ({type(exc).__name__}: {exc})") from None
    from conceptclip.engine.files import resolve_files

    mconf = resolve_files(run, cfg, mconf)  # copies inside the run; a missing or changed one fails here
    kind, _, arg = spec.partition(":")
    if kind == "lite" and arg and not Path(arg).is_absolute():
        spec = f"lite:{run / arg}"
    key = backbone_key(spec)
    backbone = backbones.get(key) if backbones is not None else None
    if backbone is None:
        backbone = create_backbone(spec, device=device)
        if backbones is not None:
            backbones[key] = backbone
    split_file = run / "split.json"  # the tested images, which knowledge never counts (as in run_experiment)
    exclude = Split.load(split_file).tested_ids() if split_file.is_file() else None
    method = create_method(name, backbone, classnames, mconf, template=cfg.get("template", "a photo of a {}."),
                           multilabel=cfg.get("multilabel", False), knowledge_exclude=exclude)
    weights = run / "model.safetensors"
    try:
        method.load_learned_state(load_method_weights(weights))
    except (ConfigError, RuntimeError) as exc:  # wrong keys or shapes: name the file, not a torch stack
        msg = str(exc).strip().splitlines()[0][:300]
        raise CheckpointError(f"{weights}: does not fit method {name!r} of {cfg_path.name} ({msg})") from None
    method.eval()
    return method, cfg
