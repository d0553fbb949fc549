"""`conceptclip explain RUN IMAGE... --out DIR`: the command-line face of `explain_images`
(mounted on the root app by `conceptclip.cli`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from conceptclip.cli.options import RUN_DEVICE_HELP, DeviceOption, given_device
from conceptclip.errors import ConfigError

explain_app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                          help="Explain a finished run's predictions on images: overlays (PNG) and scores (JSON).")


@explain_app.callback(invoke_without_command=True, context_settings={"allow_interspersed_args": True})
def explain(
    run: Path = typer.Argument(..., help="a finished results folder (config.json + model.safetensors)"),
    images: List[Path] = typer.Argument(..., help="image files to explain"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for the overlays, maps.safetensors and scores.json"),
    explainer: Optional[List[str]] = typer.Option(None, "--explainer", "-e",
                                                  help="gradcam | similarity | chefer (repeatable; default: all that apply)"),
    predicted_only: bool = typer.Option(False, "--predicted-only", help="explain only each image's predicted class"),
    concept: Optional[List[str]] = typer.Option(None, "--concept", "-c", help="a concept prompt to score (repeatable)"),
    concepts: Optional[str] = typer.Option(
        None, "--concepts", help="a concept bank (JSON file or shared-bank name) whose concepts are scored and "
                                 "mapped, as in `report` and `serve`"),
    concept_template: Optional[str] = typer.Option(
        None, help="prompt of a bank concept, e.g. 'an image showing {}' (default: from the run's class template)"),
    reference: Optional[str] = typer.Option(None, help="reference prompt for MONET-style concept scores"),
    alpha: float = typer.Option(0.5, help="overlay opacity"),
    method_explanation: bool = typer.Option(True, "--method-explanation/--no-method-explanation",
                                            help="add the method's own explanation (ranked concepts, rationale, "
                                                 "concept heat maps) where it has one"),
    sanity: bool = typer.Option(True, "--sanity/--no-sanity",
                                help="run the saliency sanity checks (learned-parameter randomisation; data "
                                     "randomisation where `conceptclip sanity RUN` trained the twin) and flag "
                                     "map types that fail"),
    device: Optional[str] = DeviceOption(RUN_DEVICE_HELP),
) -> None:
    """Explain RUN's predictions on IMAGES. Files an earlier `explain` wrote to --out are replaced
    (those its scores.json lists are removed first); other files there are left alone."""
    from conceptclip.report.explain_files import explain_images

    prompts = list(concept or ())
    if concepts is not None:
        from conceptclip.engine.load import read_config
        from conceptclip.report.explainer import load_concepts

        bank = load_concepts(concepts, read_config(run), concept_template)
        prompts += [p for p in bank.prompts if p not in prompts]
    elif concept_template is not None:
        raise ConfigError("explain: --concept-template applies to the concepts of --concepts BANK")
    doc = explain_images(run, images, out, explainers=explainer or None,
                         targets="predicted" if predicted_only else "all", concepts=prompts,
                         reference=reference, alpha=alpha, device=given_device(device),
                         method_explanation=method_explanation, sanity=sanity)
    typer.echo(json.dumps({"out": str(out), "images": len(doc["images"]), "explainers": doc["explainers"],
                           "predictions": {r["image"]: r["prediction"] for r in doc["images"]},
                           "sanity": {e: [(c["test"], round(c["spearman"], 3), c["passed"]) for c in cs]
                                      for e, cs in doc["sanity"].items()}}))
