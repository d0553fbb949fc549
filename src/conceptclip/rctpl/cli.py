"""`conceptclip rctpl`: train RC-TPL prompts on reports only, then use them on images.

    conceptclip rctpl train -o runs/rctpl [--reports REPORTS.jsonl] [--backbone lite] [--train epochs=20]
    conceptclip rctpl eval runs/rctpl --dataset images.csv          # zero-shot AUC / ACC / F1
    conceptclip rctpl ground runs/rctpl --annotations boxes.csv     # pointing game, Dice, precision, recall
    conceptclip rctpl retrieve runs/rctpl --queries images.csv      # report retrieval precision@K
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer

from conceptclip.cli.options import (DeviceOption, OverwriteOption, ResumeOption, SetOption, TrainOption,
                                     load_dataset_spec as _dataset, parse_options as _options, pick_device as _device,
                                     split_names as _classes, train_options)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

rctpl_app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                        help="RC-TPL: report-guided concept text-only prompt learning (chest X-ray).")


def _reports(path: Optional[Path]) -> Path:
    if path is not None:
        return path
    from conceptclip.paths import shared_data_dir

    return shared_data_dir() / "iuxray" / "reports.jsonl"


def _emit(result: dict, out: Optional[Path]) -> None:
    from conceptclip.io import write_json

    if out:
        write_json(out, result)
    typer.echo(json.dumps(result))


@rctpl_app.command()
def train(
    out: Path = typer.Option(..., "--out", "-o", help="results folder"),
    reports: Optional[Path] = typer.Option(None, help="JSONL reports (default: ../shared/data/iuxray/reports.jsonl)"),
    backbone: str = typer.Option("lite", help="backbone spec (its text tower encodes the reports)"),
    classes: Optional[List[str]] = typer.Option(None, "--classes", help="training concepts (comma-separated or repeated)"),
    min_reports: int = typer.Option(30, help="without --classes: concepts positive in at least this many reports"),
    uncertain: str = typer.Option("ignore", help="uncertain findings: ignore | positive | negative"),
    held_out: float = typer.Option(0.0, help="fraction of reports held out and scored after training"),
    limit: Optional[int] = typer.Option(None, help="read only the first N reports"),
    description: bool = typer.Option(True, help="inject the MedKLIP concept description"),
    location: bool = typer.Option(True, help="inject 'It is located in {location}.'"),
    option: Optional[List[str]] = SetOption("method option KEY=VALUE, e.g. tau_c=0.05"),
    train_option: Optional[List[str]] = TrainOption("training option KEY=VALUE, e.g. epochs=5"),
    device: Optional[str] = DeviceOption(),
    overwrite: bool = OverwriteOption(),
    resume: bool = ResumeOption(),
) -> None:
    """Train the report- and concept-level prompts on report texts only (no images)."""
    from conceptclip.backbones import create_backbone
    from conceptclip.rctpl.corpus import InjectionConfig, build_corpus, select_classes
    from conceptclip.rctpl.train import split_items, train_rctpl

    src = _reports(reports)
    inj = InjectionConfig(description=description, location=location)
    items = build_corpus(src, inj, limit=limit)
    tcfg = train_options(train_option, device)
    train_items, held = split_items(items, held_out, int(tcfg.get("seed", 1)))
    names = select_classes(train_items, min_reports, _classes(classes))
    bb = create_backbone(backbone, device=_device(device))
    metrics = train_rctpl(bb, train_items, names, out, method_config=_options(option, "--set"), train_config=tcfg,
                          uncertain=uncertain, held_out=held, injection=inj, source=str(src), overwrite=overwrite,
                          resume=resume)
    _emit(metrics, None)


@rctpl_app.command("eval")
def evaluate(
    run: Path = typer.Argument(..., help="an rctpl results folder"),
    dataset: str = typer.Option(..., help="labelled images: a class-folder directory, a .csv or .json manifest"),
    option: Optional[List[str]] = typer.Option(None, "--set", help="inference option KEY=VALUE (alpha, tau_c, local)"),
    out: Optional[Path] = typer.Option(None, help="write the metrics JSON here"),
    device: Optional[str] = DeviceOption(),
) -> None:
    """Zero-shot classification of a labelled image manifest with the learned prompts."""
    from conceptclip.rctpl.evaluate import load_rctpl, zero_shot_eval

    ds = _dataset(dataset)
    method, _ = load_rctpl(run, ds.classnames, multilabel=ds.multilabel, device=_device(device),
                           config=_options(option, "--set"))
    _emit(zero_shot_eval(method, ds), out)


@rctpl_app.command()
def ground(
    run: Path = typer.Argument(..., help="an rctpl results folder"),
    annotations: Path = typer.Option(..., help="boxes or masks per image and finding (.csv or .json)"),
    maps: Optional[List[str]] = typer.Option(None, "--maps", help="similarity and/or gradcam (default both)"),
    threshold: float = typer.Option(0.5, help="binarisation threshold of the min-max normalised maps"),
    tolerance: float = typer.Option(0.0, help="pointing-game tolerance in pixels of the model input"),
    out: Optional[Path] = typer.Option(None, help="write the metrics JSON here"),
    device: Optional[str] = DeviceOption(),
) -> None:
    """Grounding maps of each image's finding scored against its boxes or mask."""
    from conceptclip.rctpl.evaluate import load_rctpl
    from conceptclip.rctpl.grounding import MAP_KINDS, evaluate_grounding, load_grounding

    items = load_grounding(annotations)
    findings = sorted({it.finding for it in items})
    kinds = maps or list(MAP_KINDS)
    method, _ = load_rctpl(run, findings, device=_device(device))
    _emit(evaluate_grounding(method, items, kinds, threshold=threshold, tolerance=tolerance), out)


@rctpl_app.command()
def retrieve(
    run: Path = typer.Argument(..., help="an rctpl results folder"),
    reports: Optional[Path] = typer.Option(None, help="gallery reports JSONL (default: IU X-Ray)"),
    queries: Optional[str] = typer.Option(None, help="labelled image manifest as queries (its classes label the reports)"),
    query_fraction: float = typer.Option(0.2, help="without --queries: this seeded fraction of the reports are the queries"),
    seed: int = typer.Option(1, help="seed of the query/gallery split of reports"),
    k: List[int] = typer.Option([1, 5, 10], "--k", help="cut-offs K (repeat the option)"),
    limit: Optional[int] = typer.Option(None, help="read only the first N reports"),
    out: Optional[Path] = typer.Option(None, help="write the metrics JSON here"),
    device: Optional[str] = DeviceOption(),
) -> None:
    """Report retrieval precision@K by the learned prompts' class-score profiles."""
    from conceptclip.rctpl.corpus import InjectionConfig, build_corpus
    from conceptclip.rctpl.evaluate import image_scores, load_rctpl, report_labels, retrieval_scores
    from conceptclip.rctpl.train import encode_corpus, score_part, split_items

    method, cfg = load_rctpl(run, device=_device(device))
    inj = (cfg.get("corpus") or {}).get("injection") or {}
    inj = InjectionConfig(**{**inj, "sections": tuple(inj.get("sections", ("findings", "impression")))})
    items = build_corpus(_reports(reports), inj, limit=limit)
    if queries:
        ds = _dataset(queries)
        method, _ = load_rctpl(run, ds.classnames, device=_device(device))
        q_scores = image_scores(method, ds)
        q_labels = torch_labels(ds)
        gallery = items
    else:
        gallery, held = split_items(items, query_fraction, seed)
        if not held:
            raise typer.BadParameter("--query-fraction leaves no query reports")
        q_scores = score_part(method, encode_corpus(method.backbone, held, method.classnames))["logits"]
        q_labels = report_labels(held, method.classnames)
    g_scores = score_part(method, encode_corpus(method.backbone, gallery, method.classnames))["logits"]
    g_labels = report_labels(gallery, method.classnames)
    _emit(retrieval_scores(q_scores, g_scores, q_labels, g_labels, k), out)


def torch_labels(ds):
    """Multi-hot (N, C) labels of a dataset (single-label ones one-hot)."""
    import torch

    y = torch.zeros(len(ds), len(ds.classnames))
    for i, s in enumerate(ds.samples):
        y[i, list(s.labels or ()) if ds.multilabel else [s.label]] = 1.0
    return y
