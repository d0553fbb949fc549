"""Protocol runner: few-shot (K shots x seeds) and base-to-novel tables over many methods.

The names below load their modules on first use, so `bench.presets` (read by the CLI's `--help`)
does not import torch and numpy."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"PROTOCOLS": "protocol", "BenchSettings": "protocol", "run_protocol": "protocol", "write_tables": "table"}

__all__ = ["PROTOCOLS", "BenchSettings", "run_protocol", "write_tables"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
