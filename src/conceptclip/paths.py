"""Where things live: the shared data folder and the user cache."""

from __future__ import annotations

import os
from pathlib import Path


def shared_data_dir() -> Path:
    """`$CONCEPTCLIP_DATA`, else `../shared/data` beside the project root or the working dir."""
    env = os.environ.get("CONCEPTCLIP_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for root in [Path.cwd(), *here.parents]:
        cand = root.parent / "shared" / "data"
        if (root / "pyproject.toml").exists() and cand.is_dir():
            return cand
    return Path.cwd().parent / "shared" / "data"


def cache_dir() -> Path:
    """`$CONCEPTCLIP_CACHE`, else `~/.cache/conceptclip`."""
    env = os.environ.get("CONCEPTCLIP_CACHE")
    path = Path(env) if env else Path.home() / ".cache" / "conceptclip"
    path.mkdir(parents=True, exist_ok=True)
    return path
