"""Text-only training of RC-TPL: encode the reports once with the frozen text tower (texts stand
in for images), then run the shared engine loop on those features, and write a results folder
that `engine.load.load_run` and the `conceptclip rctpl` commands read back. The folder is written
by the engine's one results-folder writer (`engine.run.run_prepared`) from the encoded parts.

    out/
      config.json        method + config, train config, backbone, classes, corpus summary
      checkpoint.safetensors, model.safetensors, history.jsonl (loss per epoch), steps.jsonl (per step)
      metrics.json       timings, loss curve ends, and (with a held-out part) report-level AUC
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from conceptclip.engine.data import Part
from conceptclip.errors import ConfigError
from conceptclip.prompts.text_features import encode_prompts
from conceptclip.rctpl.corpus import InjectionConfig, ReportItem, concept_counts, label_matrix


def encode_corpus(backbone, items: Sequence[ReportItem], classes: Sequence[str], uncertain: str = "ignore",
                  batch_size: int = 256) -> Part:
    """Reports as a `Part` of text features in image-feature layout: "features" (N, D) report
    features, "patches" (N, R, D) region features zero-padded to the most regions R, "patch_mask"
    (N, R), "labels" (N, C), "label_mask" (N, C), "index" (N,). Identical texts are encoded once."""
    if not items:
        raise ConfigError("encode_corpus: no reports to encode")
    texts = list(dict.fromkeys([it.text for it in items] + [r for it in items for r in it.regions]))
    texts.sort(key=len)  # batches of similar length: little padding
    pos = {t: i for i, t in enumerate(texts)}
    feats = encode_prompts(backbone, texts, batch_size=batch_size).cpu()
    r_max = max(len(it.regions) for it in items)
    patches = feats.new_zeros(len(items), r_max, feats.shape[1])
    mask = torch.zeros(len(items), r_max, dtype=torch.bool)
    for i, it in enumerate(items):
        rows = torch.tensor([pos[r] for r in it.regions], dtype=torch.long)
        patches[i, :len(rows)] = feats[rows]
        mask[i, :len(rows)] = True
    glob = feats[torch.tensor([pos[it.text] for it in items], dtype=torch.long)]
    labels, label_mask = label_matrix(items, classes, uncertain)
    tensors = {"features": glob, "patches": patches, "patch_mask": mask, "labels": labels,
               "label_mask": label_mask, "index": torch.arange(len(items))}
    return Part([it.id for it in items], labels, tensors=tensors)


def split_items(items: Sequence[ReportItem], val_fraction: float, seed: int = 1) -> tuple[list[ReportItem], list[ReportItem]]:
    """A seeded random hold-out of `val_fraction` of the reports (train, held-out)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction={val_fraction}: expected a fraction in [0, 1)")
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = int(round(val_fraction * len(items)))
    held = set(order[:n_val])
    return [it for i, it in enumerate(items) if i not in held], [it for i, it in enumerate(items) if i in held]


def masked_auc(scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, classes: Sequence[str]) -> dict[str, Any]:
    """Per-class ROC AUC over the reports whose label is known (uncertain ones left out), and
    the macro mean over the classes where it is defined."""
    from conceptclip.metrics import auc

    per = {}
    for j, c in enumerate(classes):
        keep = mask[:, j]
        v = auc(scores[keep, j], labels[keep, j].long()) if int(keep.sum()) else float("nan")
        per[c] = None if v != v else float(v)
    defined = [v for v in per.values() if v is not None]
    return {"auc_macro": sum(defined) / len(defined) if defined else None, "auc_per_class": per}


@torch.no_grad()
def score_part(method, part: Part, batch_size: int = 512) -> dict[str, torch.Tensor]:
    """Logits of every row of a text part: merged (Eq. 5), global and local branches."""
    was = method.training
    method.eval()
    out: dict[str, list[torch.Tensor]] = {"logits": [], "global": [], "local": []}
    device = next(method.buffers()).device
    for batch in part.batches(batch_size):
        batch = {k: v.to(device) for k, v in batch.items()}
        s_g, s_l = method.branch_scores(batch)
        out["global"].append(s_g.cpu())
        out["local"].append((s_l if s_l is not None else s_g).cpu())
        out["logits"].append(method.logits(batch).cpu())
    method.train(was)
    return {k: torch.cat(v) for k, v in out.items()}


def train_rctpl(backbone, items: Sequence[ReportItem], classes: Sequence[str], out: str | Path, *,
                method_config: dict[str, Any] | None = None, train_config: dict[str, Any] | None = None,
                uncertain: str = "ignore", held_out: Sequence[ReportItem] = (), injection: InjectionConfig | None = None,
                source: str = "", overwrite: bool = False, resume: bool = False,
                encoded: tuple[Part, Part | None] | None = None) -> dict[str, Any]:
    """Train RC-TPL on report texts and write the results folder; returns metrics.json's content.
    `held_out` reports (optional) are scored after training (report-level AUC per class); no
    model selection happens on them (the last epoch is kept). `encoded` reuses parts from
    `encode_corpus` (benchmarks that train several variants on one encoding).

    The reports are encoded here; the rest (seed, method, folder, fit, files) is the engine's one
    results-folder writer, `engine.run.run_prepared`, which `conceptclip train` uses too."""
    from conceptclip.engine.run import backbone_entry, build_method, check_run_dir, run_prepared

    mode = check_run_dir(out, overwrite=overwrite, resume=resume)
    t0 = time.perf_counter()
    if encoded is None:
        train_part = encode_corpus(backbone, items, classes, uncertain)
        val_part = encode_corpus(backbone, held_out, classes, uncertain) if held_out else None
    else:
        train_part, val_part = encoded
    encode_seconds = time.perf_counter() - t0
    method, cfg = build_method("rctpl", backbone, list(classes), method_config, train_config, multilabel=True)
    spec, heads = backbone_entry(backbone)
    counts = concept_counts(items)
    config = {"method": method.describe(), "train": dataclasses.asdict(cfg), "backbone": spec,
              "backbone_weights": backbone.weights_id(), "classnames": list(classes), "template": "{}",
              "multilabel": True, "text_only": True,
              "corpus": {"source": source, "reports": len(items), "held_out": len(held_out),
                         "regions": int(train_part.tensors["patch_mask"].sum()), "uncertain": uncertain,
                         "positives_per_class": {c: counts.get(c, 0) for c in classes},
                         "injection": dataclasses.asdict(injection) if injection else None}}

    def finish(_out: Path, method, _parts, result, _fabric) -> dict[str, Any]:
        losses = [r["loss"] for r in result.history if "loss" in r]
        metrics: dict[str, Any] = {"method": "rctpl", "encode_seconds": round(encode_seconds, 3),
                                   "fit_seconds": round(result.seconds, 3), "epochs": cfg.epochs,
                                   "steps_per_epoch": -(-len(train_part) // cfg.batch_size),
                                   "loss_first_epoch": losses[0] if losses else None,
                                   "loss_last_epoch": losses[-1] if losses else None,
                                   "resumed_from_epoch": result.resumed_from}
        if val_part is not None and len(val_part):
            scores = score_part(method, val_part)
            lab, mask = val_part.tensors["labels"], val_part.tensors["label_mask"]
            metrics["held_out"] = {"n": len(val_part),
                                   **{k: masked_auc(scores[k], lab, mask, classes) for k in ("logits", "global", "local")}}
        return metrics

    # no "val" part: the held-out reports are scored once after training, never selected on
    return run_prepared(out, mode, method, cfg, config, {"train": train_part}, finish, heads=heads, steps=True)
