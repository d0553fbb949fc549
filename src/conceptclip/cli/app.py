"""The root Typer app and the console every command prints to (stderr)."""

from __future__ import annotations

import os

import typer
from rich.console import Console

os.environ.setdefault("HF_HUB_OFFLINE", "1")

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Concept-guided, explainable prompt learning on CLIP-style models.")
console = Console(stderr=True)
