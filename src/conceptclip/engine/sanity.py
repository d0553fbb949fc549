"""The data randomisation twin of a run (Adebayo et al., NeurIPS 2018, Sec. 5): the same method, config
and split, trained on the same images with their labels permuted. Its maps should differ from the
trained model's; `explain.sanity` compares them (and the learned-parameter randomisation, which needs
no training)."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any, Sequence

from conceptclip.data.dataset import Dataset
from conceptclip.data.splits import Split
from conceptclip.errors import ConfigError
from conceptclip.io import write_json

TWIN_DIR = "sanity_shuffled_labels"  # inside the results folder


def label_shuffled(dataset: Dataset, ids: Sequence[str], seed: int = 0) -> Dataset:
    """A copy of `dataset` whose samples `ids` carry a seeded permutation of their own labels (the
    class counts stay; which image has which label is random). Other samples keep theirs; the name
    stays, the fingerprint changes."""
    if dataset.multilabel:
        raise ConfigError("the data randomisation test is implemented for single-label datasets only")
    ids = list(ids)
    labels = [dataset.by_id(i).label for i in ids]
    rng = random.Random(seed)
    perm = labels[:]
    rng.shuffle(perm)
    new = dict(zip(ids, perm))
    samples = [dataclasses.replace(s, label=new[s.id]) if s.id in new else s for s in dataset.samples]
    # same name: what a method derives from the dataset (e.g. DEAL's PH2 default bank) stays the same;
    # the fingerprint (labels included) keeps its features apart in the cache
    return Dataset(dataset.name, list(dataset.classnames), samples, dataset.multilabel, dataset.template, dataset.root)


def train_label_shuffled_twin(run: str | Path, dataset: Dataset, backbone: Any = None, *, seed: int = 0,
                              overwrite: bool = False, cache: Any = None) -> Path:
    """Train RUN's method again (same config, same split, same training settings) on `dataset` with
    the labels of the split's train and validation parts permuted; results in RUN/sanity_shuffled_labels.
    Returns that folder. `dataset` must be the one RUN was trained on (checked by fingerprint)."""
    from conceptclip.engine.load import load_run
    from conceptclip.engine.run import run_experiment

    run = Path(run)
    method, cfg = load_run(run)
    if cfg.get("dataset_fingerprint") and cfg["dataset_fingerprint"] != dataset.fingerprint():
        raise ConfigError(f"{run}: was trained on dataset {cfg.get('dataset')!r} with fingerprint "
                          f"{cfg['dataset_fingerprint']}; the given dataset {dataset.name!r} has "
                          f"{dataset.fingerprint()} (pass the same data)")
    split = Split.load(run / "split.json", dataset)
    shuffled = label_shuffled(dataset, list(split.parts["train"]) + list(split.parts.get("val", [])), seed)
    out = run / TWIN_DIR
    run_experiment(cfg["method"]["method"], shuffled, split, backbone if backbone is not None else method.backbone,
                   out, method_config=cfg["method"]["config"], train_config={**cfg["train"], "progress": False},
                   overwrite=overwrite, resume=not overwrite and out.exists(), cache=cache)
    write_json(out / "shuffle.json", {"seed": seed, "parts": ["train", "val"], "of_run": run.name})
    return out
