"""`conceptclip bench fewshot|base2novel`: the CoOp-family protocols as one command each.

    conceptclip bench fewshot --dataset ph2 --methods coop cocoop biomedcoop --shots 1 2 4 8 16 --seeds 1 2 3
    conceptclip bench base2novel --dataset FOLDER --shots 16 --seeds 1 2 3

List options take several values after one flag (as above) or the flag repeated.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, List, Optional

import typer
from typer.core import TyperCommand

from conceptclip.bench.presets import BASE2NOVEL_METHODS, FEWSHOT_METHODS
from conceptclip.cli.options import (DATASET_HELP, DeviceOption, OverwriteOption, SetOption, TrainOption,
                                     parse_method_counts, parse_method_options, train_options)
from conceptclip.threads import THREADS_HELP, set_threads

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LIST_OPTIONS = ("--methods", "--shots", "--seeds")


class _ListOptionsCommand(TyperCommand):
    """Lets `--shots 1 2 4` mean `--shots 1 --shots 2 --shots 4` for the list options."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        out: list[str] = []
        current, has_value = None, False
        for a in args:
            if a.startswith("-") and not a.lstrip("-").isdigit():
                name = a.split("=", 1)[0]
                current = name if name in LIST_OPTIONS else None
                has_value = "=" in a
                out.append(a)
            elif current is not None and has_value:
                out += [current, a]
            else:
                out.append(a)
                has_value = current is not None
        return super().parse_args(ctx, out)


bench_app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                        help="Few-shot and base-to-novel protocols over many methods, shots and seeds.")


def _protocol_command(protocol: str, default_methods: tuple[str, ...], methods_help: str, shots_default: list[int],
                      shots_help: str, doc: str) -> Callable[..., None]:
    """The `bench PROTOCOL` command. Both protocols take the same options (typer reads them off the
    signature, so one signature serves both); only the default methods and shots, their help and
    the docstring (the command's help) differ."""

    def command(
        dataset: str = typer.Option("ph2", help=DATASET_HELP),
        methods: Optional[List[str]] = typer.Option(None, help=methods_help),
        shots: List[int] = typer.Option(shots_default, help=shots_help),
        seeds: List[int] = typer.Option([1, 2, 3], help="split and training seeds"),
        out: Path = typer.Option(Path("runs/bench"), "--out", "-o", help="output folder (reruns continue it)"),
        backbone: str = typer.Option(
            "lite", help="backbone spec; plain 'lite' aligns its heads once on the train pool"),
        max_epochs: Optional[int] = typer.Option(None, help="cap every gradient method's paper epochs at this number"),
        epochs: Optional[List[str]] = typer.Option(
            None, "--epochs", help="epochs of one method, METHOD=N (repeatable; beats --max-epochs)"),
        option: Optional[List[str]] = SetOption("method option METHOD.KEY=VALUE (repeatable)"),
        train_option: Optional[List[str]] = TrainOption("training option KEY=VALUE for every method (repeatable)"),
        device: Optional[str] = DeviceOption(),
        align_epochs: int = typer.Option(300, help="epochs of the lite head alignment"),
        overwrite: bool = OverwriteOption("delete this protocol's earlier runs in --out first"),
        threads: int = typer.Option(-1, help=THREADS_HELP),
        selection: str = typer.Option(
            "last", help="'last': test the final epoch (the papers' protocol); 'val': best validation epoch"),
    ) -> None:
        from conceptclip.bench.protocol import run_protocol
        from conceptclip.bench.table import write_tables

        set_threads(threads)
        records = run_protocol(protocol, dataset, list(methods or default_methods), list(shots), list(seeds),
                               out, backbone=backbone, max_epochs=max_epochs, epochs=parse_method_counts(epochs),
                               selection=selection, method_overrides=parse_method_options(option),
                               train_options=train_options(train_option, example="epochs=20"), device=device,
                               align_epochs=align_epochs, overwrite=overwrite, log=lambda s: typer.echo(s, err=True))
        title = f"{dataset if dataset == 'ph2' else Path(dataset).name} / {backbone}"
        paths = write_tables(protocol, records, out, title=title)
        typer.echo(paths["md"].read_text(encoding="utf-8"))
        typer.echo(f"tables: {paths['csv']}, {paths['md']}, {paths['png']}; per run: {paths['runs_csv']}",
                   err=True)

    command.__name__ = command.__qualname__ = protocol
    command.__doc__ = doc
    return command


fewshot = bench_app.command("fewshot", cls=_ListOptionsCommand)(_protocol_command(
    "fewshot", FEWSHOT_METHODS, methods_help="methods (default: BiomedCoOp's comparison suite)",
    shots_default=[1, 2, 4, 8, 16], shots_help="K shots per class",
    doc="Few-shot protocol: every method x K x seed, then the mean ± std table (CSV, Markdown, PNG)."))
base2novel = bench_app.command("base2novel", cls=_ListOptionsCommand)(_protocol_command(
    "base2novel", BASE2NOVEL_METHODS, methods_help="methods (default: the prompt learners)",
    shots_default=[16], shots_help="K shots per base class",
    doc="Base-to-novel protocol: train on the base half of the classes, test on base and novel; H per method."))
