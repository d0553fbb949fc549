"""PH2 localisation, faithfulness and sanity of explanation maps, per method and per `lite` alignment.

For each alignment of the `lite` heads (`--patch-weight`: 0 = the global contrastive alignment,
> 0 = with the localisation-aware patch term, `engine.align`), aligned once on the train pool's
image-caption pairs (no masks), and each method (`--methods`) and seed (K-shot split of the
hold-out pools):

1. Grad-CAM of the predicted class logit and the image-prompt similarity map of the predicted class
   (where the method has class text features), next to two baselines: random maps (i.i.d. uniform
   on the tower's grid, upsampled like the others) and the centre prior (a centre Gaussian);
2. pointing game and Dice / IoU (maps min-max normalised, threshold 0.5) against the expert lesion
   masks, on the validation pool (what a choice between alignments may read) and on the test pool
   (reported; read once);
3. insertion AUC (blurred canvas) and deletion AUC (zero canvas) of the predicted class probability
   on the test pool, for the seeds in `--faithful-seeds`;
4. sanity checks (Adebayo et al. 2018) on the test images: learned-parameter randomisation and data
   randomisation (the method retrained on permuted train/val labels), Spearman and SSIM.

    python benchmarks/ph2_maps.py --out runs/ph2_maps --methods coop xcoop deal --seeds 1 2 3 \
        --patch-weight 0 1 [--shots 16] [--steps 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

MAPS = ("gradcam", "similarity", "random", "centre")
SCORES = ("pointing", "dice", "iou")


def aligned_backbone(out: Path, dataset, pools, patch_weight: float, align_epochs: int, cache):
    from conceptclip.engine.align import AlignConfig, align
    from conceptclip.backbones.lite import LiteBackbone

    heads = out / "lite_heads.safetensors"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = LiteBackbone(heads=heads if heads.exists() else None).freeze()
    if not heads.exists():
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        s = align(backbone, dataset, pools.parts["train"], heads,
                  AlignConfig(epochs=align_epochs, patch_weight=patch_weight), cache=cache)
        s["seconds"] = round(time.perf_counter() - t0, 1)
        (out / "align_time.json").write_text(json.dumps(s))
        print(f"  aligned (patch_weight {patch_weight}) in {s['seconds']} s: loss {s['first_loss']:.3f} -> "
              f"{s['final_loss']:.3f}", flush=True)
    return backbone


def train(run: Path, method: str, dataset, split, backbone, cache, epochs: int | None):
    from conceptclip.engine import run_experiment
    from conceptclip.engine.load import load_run

    tc = {"seed": split.params.get("seed", 1), "progress": False}
    if epochs:
        tc["epochs"] = epochs
    if not (run / "metrics.json").exists():
        run_experiment(method, dataset, split, backbone, run, cache=cache, resume=run.exists(), train_config=tc)
    m, _ = load_run(run)
    return m, json.loads((run / "metrics.json").read_text())["test"]


def score_part(method, dataset, ids, args, faithful: bool, rng_seed: int) -> dict[str, dict[str, list[float]]]:
    """Per map type, per score: the per-image values on the samples `ids`."""
    from conceptclip.data import load_image
    from conceptclip.explain import center_gaussian_maps, load_masks, random_maps
    from conceptclip.engine.explain import available_explainers
    from conceptclip.explain.method import method_forward
    from conceptclip.explain.sanity import class_maps
    from conceptclip.metrics import deletion_auc, insertion_auc, map_grounding_scores, pointing_game

    bb = method.backbone
    usable = available_explainers(method)
    out: dict[str, dict[str, list[float]]] = {}
    for start in range(0, len(ids), args.batch):
        chunk = dataset.subset(ids[start:start + args.batch])
        pixels = bb.preprocess([load_image(s.path) for s in chunk])
        masks = load_masks([s.mask for s in chunk], bb.image_size)
        n = len(chunk)
        forward = method_forward(method)  # global features, and patch tokens for methods that read them
        with torch.no_grad():
            pred = forward(pixels).logits.argmax(1)
        maps = {"gradcam": class_maps(method, pixels, "gradcam", pred)}
        if "similarity" in usable:
            maps["similarity"] = class_maps(method, pixels, "similarity", pred)
        grid = maps["gradcam"].shape[-2:]
        maps["random"] = random_maps(n, grid, seed=rng_seed * 100003 + start)
        maps["centre"] = center_gaussian_maps(n, bb.image_size, args.sigma)

        def target_prob(x: torch.Tensor, pred=pred, forward=forward) -> torch.Tensor:
            with torch.no_grad():
                logits = forward(x).logits
            return method.probabilities(logits)[torch.arange(x.shape[0]), pred]

        for name, m in maps.items():
            rec = out.setdefault(name, {})
            rec.setdefault("pointing", []).extend(pointing_game(m, masks, reduction="none").tolist())
            for k, v in map_grounding_scores(m, masks, reduction="none").items():
                if k in SCORES:
                    rec.setdefault(k, []).extend(v.tolist())
            if faithful:
                rec.setdefault("insertion", []).extend(
                    insertion_auc(target_prob, pixels, m, n_steps=args.steps).auc.tolist())
                rec.setdefault("deletion", []).extend(
                    deletion_auc(target_prob, pixels, m, n_steps=args.steps).auc.tolist())
    return out


def sanity(method, twin_data, dataset, ids, args) -> dict[str, dict[str, float]]:
    from conceptclip.data import load_image
    from conceptclip.engine.explain import available_explainers
    from conceptclip.explain.sanity import randomize_learned, sanity_check

    bb = method.backbone
    twins = {"parameter_randomisation": randomize_learned(method, seed=0), "data_randomisation": twin_data}
    res: dict[str, dict[str, float]] = {}
    explainers = [e for e in ("gradcam", "similarity") if e in available_explainers(method)]
    for test, twin in twins.items():
        for e in explainers:
            rho, ssim = [], []
            for start in range(0, len(ids), args.batch):
                chunk = dataset.subset(ids[start:start + args.batch])
                pixels = bb.preprocess([load_image(s.path) for s in chunk])
                _, per = sanity_check(method, twin, pixels, e, test)
                rho += per["spearman"].tolist()
                ssim += per["ssim"].tolist()
            res[f"{test}/{e}"] = {"spearman": float(np.nanmean(rho)), "ssim": float(np.nanmean(ssim))}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/ph2_maps"))
    ap.add_argument("--methods", nargs="+", default=["coop"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1])
    ap.add_argument("--patch-weight", nargs="+", type=float, default=[0.0, 1.0])
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=None, help="override every method's epochs (default: its paper's)")
    ap.add_argument("--align-epochs", type=int, default=300)
    ap.add_argument("--steps", type=int, default=20, help="insertion/deletion steps")
    ap.add_argument("--faithful-seeds", nargs="*", type=int, default=[1], help="seeds scored by insertion/deletion")
    ap.add_argument("--sigma", type=float, default=0.25, help="centre Gaussian std, fraction of the side")
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--no-sanity", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    from conceptclip.data import FeatureCache, fewshot_split, holdout_split, load_dataset
    from conceptclip.engine.load import load_run
    from conceptclip.engine.sanity import TWIN_DIR, label_shuffled
    from conceptclip.io import write_json

    dataset = load_dataset("ph2")
    pools = holdout_split(dataset)
    cache = FeatureCache()
    results: list[dict] = []
    for pw in args.patch_weight:
        adir = args.out / f"align_pw{pw:g}"
        backbone = aligned_backbone(adir, dataset, pools, pw, args.align_epochs, cache)
        align_s = json.loads((adir / "align_time.json").read_text())["seconds"] if (adir / "align_time.json").exists() else None
        for method_name in args.methods:
            for seed in args.seeds:
                split = fewshot_split(dataset, pools, args.shots, seed)
                run = adir / f"{method_name}_{args.shots}shot_seed{seed}"
                method, test_metrics = train(run, method_name, dataset, split, backbone, cache, args.epochs)
                row = {"patch_weight": pw, "align_seconds": align_s, "method": method_name, "seed": seed,
                       "test_accuracy": test_metrics["accuracy"], "test_auc_macro": test_metrics.get("auc_macro")}
                row["val"] = score_part(method, dataset, list(pools.parts["val"]), args, False, seed)
                row["test"] = score_part(method, dataset, list(split.parts["test"]), args,
                                         seed in args.faithful_seeds, seed)
                if not args.no_sanity:
                    twin_run = run / TWIN_DIR
                    shuffled = label_shuffled(dataset, list(split.parts["train"]) + list(split.parts.get("val", [])), 0)
                    twin, _ = train(twin_run, method_name, shuffled, split, backbone, cache, args.epochs)
                    row["sanity"] = sanity(method, twin, dataset, list(split.parts["test"]), args)
                results.append(row)
                print(f"  pw {pw:g} {method_name} seed {seed}: acc {row['test_accuracy']:.3f}, test pointing "
                      f"gradcam {np.mean(row['test']['gradcam']['pointing']):.3f} / random "
                      f"{np.mean(row['test']['random']['pointing']):.3f} "
                      f"({time.perf_counter() - t_start:.0f} s)", flush=True)
                write_json(args.out / "ph2_maps.json", {"args": {k: str(v) for k, v in vars(args).items()},
                                                        "runs": results})
    print_tables(results)
    print(f"total {time.perf_counter() - t_start:.0f} s")


def _agg(rows: list[dict], part: str, mapname: str, score: str) -> str:
    vals = [float(np.nanmean(r[part][mapname][score])) for r in rows
            if mapname in r[part] and score in r[part][mapname]]
    if not vals:
        return "-"
    return f"{np.mean(vals):.3f}" + (f" ± {np.std(vals):.3f}" if len(vals) > 1 else "")


def print_tables(results: list[dict]) -> None:
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["method"], r["patch_weight"]), []).append(r)
    print("\n| method | alignment | map | val pointing | val Dice | test pointing | test Dice | test IoU | "
          "insertion | deletion |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (m, pw), rows in groups.items():
        for mp in MAPS:
            if mp not in rows[0]["test"]:
                continue
            print(f"| {m} | {'patch ' + format(pw, 'g') if pw else 'global'} | {mp} | "
                  + " | ".join([_agg(rows, "val", mp, "pointing"), _agg(rows, "val", mp, "dice"),
                                _agg(rows, "test", mp, "pointing"), _agg(rows, "test", mp, "dice"),
                                _agg(rows, "test", mp, "iou"), _agg(rows, "test", mp, "insertion"),
                                _agg(rows, "test", mp, "deletion")]) + " |")
    print("\n| method | alignment | test accuracy | " + " | ".join(
        f"{t} {e} (rho / SSIM)" for t in ("param", "data") for e in ("gradcam", "similarity")) + " |")
    print("|---|---|---|---|---|---|---|")
    for (m, pw), rows in groups.items():
        cells = []
        for t in ("parameter_randomisation", "data_randomisation"):
            for e in ("gradcam", "similarity"):
                vals = [r["sanity"][f"{t}/{e}"] for r in rows if "sanity" in r and f"{t}/{e}" in r["sanity"]]
                cells.append("-" if not vals else f"{np.mean([v['spearman'] for v in vals]):.2f} / "
                             f"{np.mean([v['ssim'] for v in vals]):.2f}")
        acc = np.mean([r["test_accuracy"] for r in rows])
        print(f"| {m} | {'patch ' + format(pw, 'g') if pw else 'global'} | {acc:.3f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
