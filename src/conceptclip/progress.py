"""Progress bars for long work: shown on a terminal, silent in logs and under TQDM_DISABLE=1."""

from __future__ import annotations

import os
from typing import Any, Iterable

from tqdm.auto import tqdm


def progress(iterable: Iterable | None = None, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    """`tqdm(iterable, **kwargs)`, off when `enabled` is false or TQDM_DISABLE is set, and off when
    stderr is not a terminal (carriage-return bars would fill a log file)."""
    off = not enabled or os.environ.get("TQDM_DISABLE", "").lower() not in ("", "0", "false")
    return tqdm(iterable, disable=True if off else None, **kwargs)
