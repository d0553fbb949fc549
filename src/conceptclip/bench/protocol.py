"""The few-shot and base-to-novel protocols of the CoOp family (and BiomedCoOp's comparison suite).

Few-shot: for every seed and K, a K-shot split of the train pool (min(K, 4) validation images per
class from the val pool, the whole test pool untouched); every method is trained on it and tested
once. Gradient methods are tested after their final epoch, as the CoOp-family papers report them
(`selection="val"` picks the best validation epoch instead); validation serves the hyper-parameter
searches of the training-free methods (Tip-Adapter's alpha/beta, the linear probe's C). Base-to-novel: train on K shots of the base classes (the
first half), test on the base and the novel classes' test images; H = 2 B N / (B + N).

Everything lands in one output folder and a rerun continues where it stopped:

    out/
      pools.json                 hold-out pools (train / val / test) every split is drawn from
      lite_heads.safetensors     `lite` only: heads aligned once on the train pool, then reused
      <protocol>/settings.json   what the runs depend on (a rerun with other settings is refused)
      <protocol>/splits/K<k>_seed<s>.json
      <protocol>/<method>/K<k>_seed<s>/   the engine's results folder (metrics.json marks it done)
      <protocol>_runs.csv, <protocol>.csv, <protocol>.md, <protocol>.png   (see `bench.table`)

Frozen image features come from the on-disk feature cache, so the images are encoded once per
backbone for all methods, shots and seeds.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence


from conceptclip.errors import ConfigError
from conceptclip.io import write_json
from conceptclip.progress import progress as progress_bar

PROTOCOLS = ("fewshot", "base2novel")


@dataclass
class BenchSettings:
    """What a protocol's runs depend on; stored in <protocol>/settings.json and checked on reruns."""

    dataset: str
    backbone: str
    max_epochs: int | None = None  # cap on every gradient method's paper epochs (None: the paper's)
    epochs: dict[str, int] = field(default_factory=dict)  # per-method epochs (beats max_epochs)
    selection: str = "last"  # "last": test the final epoch (the papers' protocol); "val": best validation epoch
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    train_options: dict[str, Any] = field(default_factory=dict)
    pools: dict[str, float] = field(default_factory=lambda: {"train": 0.5, "val": 0.2, "seed": 0})
    align_epochs: int = 300


def _check_settings(path: Path, settings: BenchSettings) -> None:
    new = asdict(settings)
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        diff = sorted(k for k in new if old.get(k) != new[k])
        if diff:
            raise ConfigError(f"{path}: this folder holds runs made with other settings ({', '.join(diff)} differ); "
                              "use another --out or --overwrite")
    write_json(path, new)


def prepare_backbone(spec: str, dataset, pools, out: Path, cache, align_epochs: int = 300, device: str | None = None,
                     log: Callable[[str], None] = print):
    """The frozen backbone; plain `lite` gets its heads aligned once on the train pool (saved in `out`)."""
    from conceptclip.backbones import create_backbone

    if spec != "lite":
        return create_backbone(spec, device=device)
    from conceptclip.engine.align import AlignConfig, align
    from conceptclip.backbones.lite import LiteBackbone

    heads = out / "lite_heads.safetensors"
    if heads.exists():
        log(f"reusing the aligned lite heads {heads}")
        backbone = LiteBackbone(heads=heads).freeze()
    else:
        log(f"aligning the lite heads on the {len(pools.parts['train'])} train-pool images (once) ...")
        backbone = LiteBackbone().freeze()
        s = align(backbone, dataset, pools.parts["train"], heads, AlignConfig(epochs=align_epochs), cache=cache)
        log(f"aligned: contrastive loss {s['first_loss']:.3f} -> {s['final_loss']:.3f}")
    return backbone.to(device) if device else backbone


def _train_config(method: str, settings: BenchSettings, seed: int, device: str | None,
                  shots: int | None = None) -> dict[str, Any]:
    from conceptclip.methods import get_method_class

    cfg: dict[str, Any] = {"seed": seed, "progress": False, **settings.train_options}
    defaults = get_method_class(method).train_defaults_for(shots)
    if method in settings.epochs:
        cfg["epochs"] = int(settings.epochs[method])
    elif settings.max_epochs is not None and "epochs" not in settings.train_options:
        cfg["epochs"] = min(int(defaults.get("epochs", 50)), settings.max_epochs)
    cfg["select"] = settings.selection
    if settings.selection == "last" and "eval_every" not in settings.train_options:
        cfg["eval_every"] = 10**9  # the engine then validates (and selects) only the final epoch
    if device:
        cfg["accelerator"] = device
    return cfg


def run_record(protocol: str, method: str, shots: int, seed: int, metrics: dict, run_dir: Path) -> dict[str, Any]:
    """One row of <protocol>_runs.csv from a run's metrics.json."""
    row: dict[str, Any] = {"method": method, "shots": shots, "seed": seed,
                           "fit_seconds": metrics.get("fit_seconds"), "best_epoch": metrics.get("best_epoch"),
                           "run": str(run_dir)}
    if protocol == "fewshot":
        t = metrics["test"]
        row.update(accuracy=t["accuracy"], balanced_accuracy=t["balanced_accuracy"], f1_macro=t["f1_macro"],
                   auc_macro=t["auc_macro"])
        row.update({f"auc_{c}": v for c, v in (t.get("auc_per_class") or {}).items()})
    else:
        row.update(base_accuracy=metrics["test_base"]["accuracy"], novel_accuracy=metrics["test_novel"]["accuracy"],
                   harmonic_mean=metrics["harmonic_mean"])
    # what the hyper-parameter searches saw: settings tied on validation accuracy (of grid_size), and
    # whether the linear probe's solver converged
    cf = metrics.get("closed_form") or {}
    after = cf.get("after_fit") or {}
    row.update(val_ties=cf.get("ties_accuracy"), val_ties_after_fit=after.get("ties_accuracy"),
               grid_size=cf.get("grid_size") or after.get("grid_size"), converged=cf.get("converged"))
    return row


def run_protocol(protocol: str, dataset_spec: str, methods: Sequence[str], shots: Sequence[int], seeds: Sequence[int],
                 out: str | Path, *, backbone: str = "lite", max_epochs: int | None = None,
                 epochs: dict[str, int] | None = None, selection: str = "last",
                 method_overrides: dict[str, dict[str, Any]] | None = None, train_options: dict[str, Any] | None = None,
                 device: str | None = None, cache=None, align_epochs: int = 300, overwrite: bool = False,
                 progress: bool = True, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run (or continue) every method x K x seed of `protocol`; return one record per run."""
    import shutil

    from conceptclip.bench.presets import method_options
    from conceptclip.data import FeatureCache, base2novel_split, fewshot_split, holdout_split, load_dataset, write_split
    from conceptclip.engine import run_experiment
    from conceptclip.methods import get_method_class

    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol {protocol!r}: expected one of {PROTOCOLS}")
    if not methods or not shots or not seeds:
        raise ConfigError("bench: expected at least one method, one K (--shots) and one seed (--seeds)")
    if any(k < 1 for k in shots):
        raise ConfigError(f"--shots {list(shots)}: expected positive numbers of images per class")
    for m in methods:
        get_method_class(m)  # unknown names fail before anything runs
    out = Path(out)
    if overwrite and (out / protocol).exists() and not (out / protocol / "settings.json").is_file():
        raise ConfigError(f"{out / protocol}: not a conceptclip bench folder (settings.json missing); "
                          "--overwrite replaces only folders conceptclip made")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder; --out expects a folder")
    dataset = load_dataset(dataset_spec)
    if protocol == "base2novel":
        n_novel = len(dataset.classnames) - -(-len(dataset.classnames) // 2)
        if n_novel < 2:
            raise ConfigError(f"dataset {dataset.name!r} has {len(dataset.classnames)} classes, so {n_novel} novel "
                              "class: novel accuracy would be 1.0 by construction; base-to-novel needs at least 4 classes")
    if selection not in ("last", "val"):
        raise ConfigError(f"selection={selection!r}: expected 'last' (the final epoch) or 'val' (best validation epoch)")
    unknown = sorted(set(epochs or {}) - set(methods))
    if unknown:
        raise ConfigError(f"epochs given for methods {unknown} that are not in --methods {list(methods)}")
    settings = BenchSettings(dataset=dataset_spec, backbone=backbone, max_epochs=max_epochs, epochs=dict(epochs or {}),
                             selection=selection,
                             method_options={m: method_options(dataset.name, m, method_overrides) for m in methods},
                             train_options=dict(train_options or {}), align_epochs=align_epochs)
    pools = holdout_split(dataset, settings.pools["train"], settings.pools["val"], int(settings.pools["seed"]))
    if overwrite and (out / protocol).exists():  # after every option validated
        shutil.rmtree(out / protocol)
    out.mkdir(parents=True, exist_ok=True)
    write_split(pools, out / "pools.json")
    cache = cache or FeatureCache()
    (out / protocol).mkdir(exist_ok=True)
    _check_settings(out / protocol / "settings.json", settings)
    model = prepare_backbone(backbone, dataset, pools, out, cache, align_epochs, device, log)

    jobs = [(k, s, m) for k in shots for s in seeds for m in methods]
    records: list[dict[str, Any]] = []
    bar = progress_bar(jobs, enabled=progress, desc=f"{protocol} {dataset.name}", unit="run")
    t0 = time.perf_counter()
    for k, s, m in bar:
        bar.set_postfix_str(f"{m} K={k} seed={s}")
        run_dir = out / protocol / m / f"K{k}_seed{s}"
        done = run_dir / "metrics.json"
        if not done.exists():
            split_file = out / protocol / "splits" / f"K{k}_seed{s}.json"
            split = (fewshot_split if protocol == "fewshot" else base2novel_split)(dataset, pools, k, s)
            write_split(split, split_file)
            run_experiment(m, dataset, split, model, run_dir, method_config=settings.method_options.get(m) or None,
                           train_config=_train_config(m, settings, s, device, k), cache=cache,
                           resume=run_dir.exists())
        records.append(run_record(protocol, m, k, s, json.loads(done.read_text(encoding="utf-8")), run_dir))
    bar.close()
    log(f"{protocol}: {len(jobs)} runs in {time.perf_counter() - t0:.0f} s")
    return records
