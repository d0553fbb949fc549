"""`conceptclip` command line: one Typer app (`cli.app`), the run-level commands (`cli.commands`)
and the sub-apps (concepts, bench, explain, rctpl, report, serve), each imported explicitly.

Every documented error (ConceptClipError) is printed as one line `error: ...` with exit code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import List, Optional

import typer
from rich.markup import escape

from conceptclip.cli.app import app, console
from conceptclip.cli import commands  # noqa: F401  (registers align, train, eval, ... on `app`)
from conceptclip.cli.bench import bench_app
from conceptclip.cli.concepts import concepts_app
from conceptclip.cli.explain import explain_app
from conceptclip.cli.report import report_app
from conceptclip.cli.serve import serve_app
from conceptclip.errors import ConceptClipError
from conceptclip.rctpl.cli import rctpl_app

for _sub, _name in ((concepts_app, "concepts"), (bench_app, "bench"), (explain_app, "explain"),
                    (rctpl_app, "rctpl"), (report_app, "report"), (serve_app, "serve")):
    app.add_typer(_sub, name=_name)

__all__ = ["app", "console", "main"]


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings as one line, `warning: MESSAGE` (no file path, no source line)."""
    return f"warning: {' '.join(str(message).split())}\n"


def _click_exception() -> type:
    """ClickException of the click that typer uses (recent typer vendors its own copy of click)."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def main(argv: Optional[List[str]] = None) -> None:
    """The console entry point. Exit codes: 0 success; 2 a usage error (click's usage message) or a
    documented error (one line `error: ...` on stderr); 130 Ctrl-C; anything else is a bug (traceback)."""
    import warnings

    warnings.formatwarning = _one_line_warning
    click_exc = _click_exception()
    try:
        rc = app(args=argv, prog_name="conceptclip", standalone_mode=False)
    except ConceptClipError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except click_exc as exc:  # usage errors: "Usage: ... Error: No such option ..." and exit code 2
        exc.show()
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        print("Aborted.", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    # without standalone mode typer returns the exit code of typer.Exit (130 for Ctrl-C) instead of exiting
    sys.exit(rc if isinstance(rc, int) else 0)

