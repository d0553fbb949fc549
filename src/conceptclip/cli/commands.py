"""The run-level commands: align, train, eval, predict, sanity, demo, encode, methods, backbones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer

from conceptclip.cli.app import app, console
from conceptclip.cli.options import (CLASSES_HELP, DATASET_HELP, RUN_DEVICE_HELP, DeviceOption, OverwriteOption,
                                     ResumeOption, SetOption, TrainOption, given_device, load_dataset_spec, make_split,
                                     parse_options, pick_device, train_options)
from conceptclip.errors import ConfigError
from conceptclip.threads import THREADS_HELP, set_threads


@app.command()
def align(
    dataset: str = typer.Option("ph2", help=DATASET_HELP),
    out: Path = typer.Option(Path("lite_heads.safetensors"), help="where to write the aligned heads"),
    epochs: int = typer.Option(300, help="training epochs of the heads"),
    split: Optional[Path] = typer.Option(None, help="split manifest whose --part is used (default: holdout train pool)"),
    part: str = typer.Option("train", help="the part of --split to align on (e.g. 'align' of a pools file)"),
    disjoint_from: Optional[Path] = typer.Option(
        None, help="align on the images in NO part of this split manifest, so the heads never saw its "
                   "train, val or test images or their labels (an honest zero-shot on that split)"),
    patch_weight: Optional[float] = typer.Option(None, help="weight of the localisation-aware patch-level term "
                                                            "(0: global only; default: AlignConfig's)"),
    classes: Optional[str] = typer.Option(None, help=CLASSES_HELP),
) -> None:
    """Align the `lite` backbone's projection heads contrastively on image-caption pairs.

    Images without a caption are captioned with their class name ("a photo of a {class}."): heads
    aligned on a labelled part are then trained on those labels, and a `zeroshot` run on them is
    not zero-shot on that data. Use --disjoint-from SPLIT (or another dataset) for heads that never
    saw the evaluated split."""
    from conceptclip.engine.align import AlignConfig, align as run_align
    from conceptclip.data import Split

    ds = load_dataset_spec(dataset, classes=classes)
    if disjoint_from is not None:
        if split is not None:
            raise ConfigError("align: give --split (align on one of its parts) or --disjoint-from (align on the "
                              "images in none of its parts), not both")
        used = {i for ids in Split.load(disjoint_from).parts.values() for i in ids}
        ids = [s.id for s in ds.samples if s.id not in used]
        if not ids:
            raise ConfigError(f"align --disjoint-from {disjoint_from}: every image of {ds.name!r} is in a part of "
                              "that split; nothing is left to align on")
    else:
        sp = make_split(ds, split, 0, 0)
        if part not in sp.parts:
            raise ConfigError(f"align --part {part!r}: the split has parts {sorted(sp.parts)}")
        ids = sp.parts[part]
    backbone = _lite_unaligned()
    extra = {} if patch_weight is None else {"patch_weight": patch_weight}
    summary = run_align(backbone, ds, ids, out, AlignConfig(epochs=epochs, **extra))
    console.print(f"aligned on {summary['pairs']} pairs ({summary['unique_captions']} distinct captions): "
                  f"loss {summary['first_loss']:.3f} -> {summary['final_loss']:.3f}; heads in {out}")
    typer.echo(json.dumps(summary))


def _lite_unaligned():
    from conceptclip.backbones.lite import LiteBackbone

    return LiteBackbone().freeze()


@app.command()
def train(
    method: str = typer.Option(..., "--method", "-m", help="method name (see `conceptclip methods`)"),
    dataset: str = typer.Option("ph2", help=DATASET_HELP),
    backbone: str = typer.Option("lite", help="backbone spec: lite[:HEADS], hf:NAME_OR_DIR, open_clip:NAME, tiny-clip"),
    out: Path = typer.Option(..., "--out", "-o", help="results folder"),
    shots: int = typer.Option(16, help="K shots per class (0 = the whole train pool)"),
    seed: int = typer.Option(1, help="split and training seed"),
    split: Optional[Path] = typer.Option(None, help="an existing split manifest (overrides --shots/--seed sampling)"),
    base2novel: bool = typer.Option(False, help="train on base classes, test on base and novel"),
    option: Optional[List[str]] = SetOption(),
    train_option: Optional[List[str]] = TrainOption(),
    device: Optional[str] = DeviceOption(),
    resume: bool = ResumeOption(),
    overwrite: bool = OverwriteOption(),
    classes: Optional[str] = typer.Option(None, help=CLASSES_HELP),
    threads: int = typer.Option(-1, help=THREADS_HELP),
) -> None:
    """Train a method on a split and evaluate it once on the test part.

    The final epoch is tested (the few-shot papers' protocol); `--train select=val` keeps the epoch
    with the best validation metric instead. The kept epoch and the reason are printed."""
    from conceptclip.backbones import create_backbone
    from conceptclip.engine import run_experiment

    set_threads(threads)
    ds = load_dataset_spec(dataset, classes=classes)
    sp = make_split(ds, split, shots, seed, base2novel)
    tcfg = train_options(train_option, device, seed=seed)
    bb = create_backbone(backbone, device=pick_device(device))
    metrics = run_experiment(method, ds, sp, bb, out, method_config=parse_options(option, "--set"),
                             train_config=tcfg, overwrite=overwrite, resume=resume)
    _print_selection(metrics)
    _print_metrics({method: metrics})
    typer.echo(json.dumps({k: v for k, v in metrics.items() if k.startswith("test") or k == "harmonic_mean"}))


@app.command("eval")
def evaluate(
    run: Path = typer.Argument(..., help="a finished results folder"),
    dataset: str = typer.Option(..., help="labelled dataset to evaluate on ('ph2', folder, .csv, .json)"),
    part: str = typer.Option("all", help="'all' images, or a part of --split"),
    split: Optional[Path] = typer.Option(None, help="split manifest naming the part"),
    out: Optional[Path] = typer.Option(None, help="write the metrics JSON here"),
    classes: Optional[str] = typer.Option(None, help=CLASSES_HELP),
    predictions: Optional[Path] = typer.Option(
        None, help="write per-image predictions (CSV: part,id,label,p_<class>...) here; default with --out: "
                   "OUT's name with .predictions.csv"),
) -> None:
    """Evaluate a trained run on a (new) labelled dataset."""
    from conceptclip.data import FeatureCache, Split
    from conceptclip.engine import classification_metrics, predict
    from conceptclip.engine.data import build_part
    from conceptclip.engine.load import load_run
    from conceptclip.io import write_json

    method, cfg = load_run(run)
    from conceptclip.data.dataset import sidecar_classes

    if classes is None and dataset.lower().endswith(".csv") and not sidecar_classes(Path(dataset)).is_file():
        classes = list(method.classnames)  # a CSV's labels name (or index) the run's classes
    ds = load_dataset_spec(dataset, classes=classes)
    if [c.lower() for c in ds.classnames] != [c.lower() for c in method.classnames]:
        raise ConfigError(f"dataset {ds.name!r} classes {ds.classnames} differ from the run's {method.classnames}")
    ids = [s.id for s in ds.samples] if part == "all" else Split.load(split, ds).parts[part] if split else None
    if ids is None:
        raise ConfigError(f"--part {part!r} needs --split FILE")
    p = build_part(ds, ids, method.inputs, method.backbone, FeatureCache())
    probs = predict(method, p)
    metrics = classification_metrics(probs, p.labels, method.classnames, ds.multilabel)
    if out:
        write_json(out, metrics)
    if predictions is None and out is not None:
        predictions = out.with_name(out.stem + ".predictions.csv")
    if predictions is not None:
        from conceptclip.engine.predictions import labelled_rows, write_labelled

        write_labelled(predictions, method.classnames,
                       labelled_rows(part, p.ids, p.labels, probs, method.classnames, ds.multilabel))
        console.print(f"per-image predictions: {predictions}", markup=False, highlight=False, soft_wrap=True)
    _print_metrics({cfg["method"]["method"]: {"test": metrics}})
    typer.echo(json.dumps(metrics))


@app.command("predict", context_settings={"allow_interspersed_args": True})
def predict_command(
    run: Path = typer.Argument(..., help="a finished results folder"),
    images: List[Path] = typer.Argument(..., help="image files or folders of images (unlabelled)"),
    out: Path = typer.Option(Path("predictions.csv"), "--out", "-o", help="the CSV to write"),
    concepts: Optional[str] = typer.Option(
        None, "--concepts", help="concept bank (JSON file or shared-bank name) to score; default: the shared bank "
                                 "named like the run's dataset, if any"),
    concept_template: Optional[str] = typer.Option(None, help="prompt of a concept, e.g. 'an image showing {}'"),
    batch_size: int = typer.Option(16, help="images per forward pass"),
    device: Optional[str] = DeviceOption(RUN_DEVICE_HELP),
) -> None:
    """Predict unlabelled images with a trained run: one CSV row per image with the predicted class, the class
    probabilities (p_<class>) and the concept scores (c_<concept>)."""
    from conceptclip.predict import predict_images

    summary = predict_images(run, images, out, bank=concepts, concept_template=concept_template,
                             batch_size=batch_size, device=given_device(device))
    typer.echo(json.dumps(summary))


@app.command()
def sanity(
    run: Path = typer.Argument(..., help="a finished results folder"),
    dataset: str = typer.Option(..., help="the dataset the run was trained on ('ph2', folder, .csv, .json)"),
    seed: int = typer.Option(0, help="seed of the label permutation"),
    overwrite: bool = typer.Option(False, help="retrain an existing twin"),
) -> None:
    """Train RUN's data randomisation twin (same method, config and split; train/val labels permuted)
    into RUN/sanity_shuffled_labels; `explain`, `report` and `serve` then run both sanity checks."""
    from conceptclip.engine.sanity import train_label_shuffled_twin

    twin = train_label_shuffled_twin(run, load_dataset_spec(dataset), seed=seed, overwrite=overwrite)
    console.print(f"label-shuffled twin trained in {twin}")
    typer.echo(json.dumps({"twin": str(twin)}))


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="results folder of the demo"),
    shots: int = typer.Option(16, help="K shots per class for the few-shot methods"),
    seeds: List[int] = typer.Option([1, 2, 3], help="seeds (repeat the option)"),
    epochs: int = typer.Option(50, help="CoOp training epochs (fewer than the paper's 200 at 16 shots, "
                                                        "to keep the demo short)"),
    align_epochs: int = typer.Option(300, help="alignment epochs of the lite heads"),
    align_on: str = typer.Option(
        "train", help="'train': align lite on the labelled train pool (so 'zeroshot' has seen those labels); "
                      "'disjoint': on a 20% PH2 pool that no train/val/test part holds (smaller test pool)"),
    overwrite: bool = typer.Option(False, help="replace an existing demo folder"),
    threads: int = typer.Option(-1, help=THREADS_HELP),
) -> None:
    """The main job on the embedded default data and model: align `lite` on the PH2 training pool, train
    CoOp few-shot, and compare zero-shot, linear probe and CoOp on the held-out PH2 test split."""
    from conceptclip.demo import run_demo

    set_threads(threads)
    summary = run_demo(out, shots=shots, seeds=seeds, epochs=epochs, align_epochs=align_epochs, overwrite=overwrite,
                       align_on=align_on, log=lambda s: console.print(s, markup=False, highlight=False, soft_wrap=True))
    _print_summary(summary)


@app.command()
def encode(
    backbone: str = typer.Option(..., help="backbone spec to embed with: lite[:HEADS], hf:NAME_OR_DIR, open_clip:NAME"),
    dataset: str = typer.Option("ph2", help=DATASET_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="folder to write (reruns resume it); read it with --backbone embeddings:DIR"),
    devices: int = typer.Option(1, help="processes, one shard each, through the engine's Fabric launcher"),
    device: Optional[str] = DeviceOption(),
    dtype: str = typer.Option("float32", help="stored image dtype: float32 | float16"),
    batch_size: int = typer.Option(32, help="images per forward pass"),
    bank: Optional[str] = typer.Option(None, help="also store this bank's class/concept prompt embeddings"),
    overwrite: bool = typer.Option(False, help="replace an existing encode in --out"),
) -> None:
    """Embed a dataset once (images, class prompts, optionally a bank's prompts) for `embeddings:DIR`."""
    from conceptclip.engine.encode import encode_dataset

    manifest = encode_dataset(backbone, load_dataset_spec(dataset), out, devices=devices, accelerator=device or "auto",
                              dtype=dtype, batch_size=batch_size, bank=bank, overwrite=overwrite, log=console.print)
    console.print(f"{manifest['source']['n_images']} image embeddings in {len(manifest['images'])} shard(s), "
                  f"{sum(len(t['prompts']) for t in manifest['texts'])} prompts; use --backbone embeddings:{out}")


@app.command()
def methods(
    name: Optional[str] = typer.Argument(None, help="a method: print its options, paper defaults and training "
                                                    "defaults (default: list the methods)"),
    as_json: bool = typer.Option(False, "--json", help="print the same as JSON"),
) -> None:
    """List the registered methods, or show one method's options (type, default, help, source) and its
    training defaults."""
    from conceptclip.cli.method_info import method_info, render, summary
    from conceptclip.methods import available_methods, get_method_class

    if name is None:
        names = available_methods()
        rows = {n: summary(get_method_class(n)) for n in names}
        if as_json:
            typer.echo(json.dumps(rows, indent=1, ensure_ascii=False))
            return
        width = max(map(len, names), default=0)
        typer.echo("\n".join(f"{n:<{width}}  {rows[n]}".rstrip() for n in names))
        return
    info = method_info(name)
    if as_json:
        typer.echo(json.dumps(info, indent=1, ensure_ascii=False))
        return
    from rich.console import Console

    render(info, Console(soft_wrap=False))


@app.command()
def backbones() -> None:
    """List the backbone kinds (spec KIND or KIND:ARG)."""
    from conceptclip.backbones import available_backbones

    typer.echo("\n".join(available_backbones()))


def _print_selection(metrics: dict) -> None:
    """Which epoch's weights were tested, and why (see TrainConfig.select)."""
    sel = metrics.get("selection") or {}
    if sel.get("epoch") is not None:
        console.print(f"tested epoch {sel['epoch']}: {sel['reason']}", markup=False, highlight=False, soft_wrap=True)


def _print_metrics(results: dict[str, dict]) -> None:
    from rich.table import Table

    table = Table(title="test metrics")
    for col in ("method", "part", "n", "accuracy", "auc_macro", "f1_macro", "ece"):
        table.add_column(col)
    for name, m in results.items():
        for part, v in m.items():
            if part.startswith("test") and isinstance(v, dict):
                table.add_row(name, part, str(v["n"]), *(f"{v[k]:.3f}" if v[k] is not None else "-"
                                                         for k in ("accuracy", "auc_macro", "f1_macro", "ece")))
    console.print(table)


def _print_summary(summary: dict) -> None:
    from rich.table import Table

    table = Table(title=f"PH2 held-out test ({summary['n_test']} images), mean ± std over seeds {summary['seeds']}")
    for col in ("method", "melanoma-vs-rest AUC", "3-class accuracy", "macro AUC"):
        table.add_column(col)
    for name, row in summary["methods"].items():
        table.add_row(name, *(f"{row[k]['mean']:.3f} ± {row[k]['std']:.3f}" for k in ("auc_melanoma", "accuracy", "auc_macro")))
    console.print(table)
    for note in summary.get("notes", []):
        console.print(note, markup=False, highlight=False, soft_wrap=True)
    console.print(f"demo finished in {summary['seconds']:.0f} s; results in {summary['out']}")
