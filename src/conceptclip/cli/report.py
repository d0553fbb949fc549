"""`conceptclip report RUN_DIR... -o report.html` (mounted on the root app by `conceptclip.cli`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from conceptclip.cli.options import DeviceOption, given_device, require

report_app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                         help="One self-contained HTML page over results folders.")
console = Console(stderr=True)


@report_app.callback(invoke_without_command=True, context_settings={"allow_interspersed_args": True})
def report(
    runs: List[Path] = typer.Argument(..., help="results folders, or folders holding them (searched recursively)"),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="the HTML file to write"),
    dataset: Optional[str] = typer.Option(None, help="dataset of the per-image cards ('ph2', folder, .csv, .json); "
                                                     "default: 'ph2' for PH2 runs"),
    concepts: Optional[str] = typer.Option(None, "--concepts", help="concept bank (JSON file or shared-bank name); "
                                                                    "default: the shared bank named like the dataset"),
    concept_template: Optional[str] = typer.Option(None, help="prompt of a concept phrase, e.g. 'an image showing {}' "
                                                              "(default: from the run's class template)"),
    images: int = typer.Option(4, help="per-image cards per group (0: none)"),
    tsne: bool = typer.Option(True, help="t-SNE of learned prompt vs concept tokens (prompt methods); with --images 0 --no-tsne no model is loaded"),
    title: Optional[str] = typer.Option(None, help="page title"),
    device: Optional[str] = DeviceOption("cpu | cuda | cuda:N for the cards' explanations (default: cpu)"),
) -> None:
    """Write one HTML page (metrics mean ± std over seeds, few-shot and base-to-novel tables,
    confusion and calibration plots, per-image explanation cards, run configs and split hashes)."""
    require("report", ("jinja2", "matplotlib"), None)
    from conceptclip.report.build import build_report

    summary = build_report(runs, out, dataset=dataset, bank=concepts, concept_template=concept_template, images=images, tsne=tsne,
                           device=given_device(device), title=title, log=lambda s: console.print(s, markup=False, highlight=False))
    typer.echo(json.dumps(summary))
