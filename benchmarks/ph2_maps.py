"""PH2 grounding and faithfulness of CoOp's explanation maps on the `lite` backbone.

1. Stratified hold-out pools of PH2 (50 / 20 / 30 %), the `lite` heads aligned on the train
   pool's image–caption pairs, CoOp trained on a K-shot split (the demo's protocol);
2. on every test image: Grad-CAM of the predicted and of the true class logit, image–prompt
   similarity maps of the predicted and true class prompt, a centre-Gaussian baseline map and
   random baseline maps (7 x 7, the tower's grid, upsampled like the others; grounding over
   several seeds, faithfulness on the first);
3. pointing game, Dice / IoU / precision / recall (maps min-max normalised, threshold 0.5)
   against the expert lesion masks, cropped with the preprocessing geometry;
4. insertion AUC (blurred canvas) and deletion AUC (zero canvas, i.e. the ImageNet mean colour
   after normalisation) of the predicted class probability.

    python benchmarks/ph2_maps.py --out runs/ph2_maps [--shots 16] [--seed 1] [--steps 20] [--faithful ...]
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

from conceptclip.explain import load_masks




def prepare(out: Path, shots: int, seed: int, epochs: int, align_epochs: int):
    from conceptclip.backbones.align import AlignConfig, align
    from conceptclip.backbones.lite import LiteBackbone
    from conceptclip.data import FeatureCache, fewshot_split, holdout_split, load_dataset
    from conceptclip.engine import run_experiment
    from conceptclip.engine.load import load_run

    dataset = load_dataset("ph2")
    pools = holdout_split(dataset)
    split = fewshot_split(dataset, pools, shots, seed)
    heads = out / "lite_heads.safetensors"
    cache = FeatureCache()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = LiteBackbone(heads=heads if heads.exists() else None).freeze()
    if not heads.exists():
        s = align(backbone, dataset, pools.parts["train"], heads, AlignConfig(epochs=align_epochs), cache=cache)
        print(f"aligned lite heads: loss {s['first_loss']:.3f} -> {s['final_loss']:.3f}", flush=True)
    run = out / f"coop_{shots}shot_seed{seed}"
    if not (run / "metrics.json").exists():
        run_experiment("coop", dataset, split, backbone, run, cache=cache, resume=run.exists(),
                       train_config={"seed": seed, "epochs": epochs, "progress": False})
    method, _ = load_run(run)
    metrics = json.loads((run / "metrics.json").read_text())["test"]
    return dataset, split, method, metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/ph2_maps"))
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--align-epochs", type=int, default=300)
    ap.add_argument("--steps", type=int, default=20, help="insertion/deletion steps")
    ap.add_argument("--sigma", type=float, default=0.25, help="centre Gaussian std, fraction of the side")
    ap.add_argument("--random-seeds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--faithful", default="gradcam_pred,similarity_pred,random_0",
                    help="maps scored by insertion/deletion (comma-separated; also center_gaussian, gradcam_true, ...)")
    args = ap.parse_args()
    t_start = time.perf_counter()

    from conceptclip.data import load_image
    from conceptclip.explain import (
        ClassTarget,
        center_gaussian_maps,
        explain_method,
        method_similarity_maps,
        random_maps,
    )
    from conceptclip.io import write_json
    from conceptclip.metrics import deletion_auc, insertion_auc, map_grounding_scores, pointing_game

    args.out.mkdir(parents=True, exist_ok=True)
    dataset, split, method, test_metrics = prepare(args.out, args.shots, args.seed, args.epochs, args.align_epochs)
    bb = method.backbone
    samples = [dataset.by_id(i) for i in split.parts["test"]]
    print(f"CoOp {args.shots}-shot seed {args.seed}: test accuracy {test_metrics['accuracy']:.3f}, "
          f"macro AUC {test_metrics['auc_macro']:.3f} on {len(samples)} test images", flush=True)

    names = ["gradcam_pred", "gradcam_true", "similarity_pred", "similarity_true", "center_gaussian"] + \
        [f"random_{s}" for s in range(args.random_seeds)]
    faithful = args.faithful.split(",")  # each costs 2 (steps + 1) forwards of every test image
    per_map: dict[str, dict[str, list[torch.Tensor]]] = {n: {} for n in names}
    correct = []
    for start in range(0, len(samples), args.batch):
        chunk = samples[start:start + args.batch]
        pixels = bb.preprocess([load_image(s.path) for s in chunk])
        masks = load_masks([s.mask for s in chunk], bb.image_size)
        labels = torch.tensor([s.label for s in chunk])
        n = len(chunk)
        with torch.no_grad():
            probs = method.probabilities(method.logits({"features": bb.encode_image(pixels).global_}))
        pred = probs.argmax(1)
        correct.append(pred == labels)
        cams = explain_method(method, pixels, [ClassTarget(pred), ClassTarget(labels)]).maps
        sims = method_similarity_maps(method, pixels)
        rows = torch.arange(n)
        maps = {"gradcam_pred": cams[:, 0], "gradcam_true": cams[:, 1], "similarity_pred": sims[rows, pred],
                "similarity_true": sims[rows, labels],
                "center_gaussian": center_gaussian_maps(n, bb.image_size, args.sigma)}
        h, w = cams.shape[-2:]
        for s in range(args.random_seeds):
            maps[f"random_{s}"] = random_maps(n, (h, w), seed=1000 * s + start)

        def target_prob(x: torch.Tensor, pred=pred) -> torch.Tensor:
            with torch.no_grad():
                logits = method.logits({"features": bb.encode_image(x).global_})
            return method.probabilities(logits)[torch.arange(x.shape[0]), pred]

        for name, m in maps.items():
            rec = per_map[name]
            rec.setdefault("pointing", []).append(pointing_game(m, masks, reduction="none"))
            for k, v in map_grounding_scores(m, masks, reduction="none").items():
                rec.setdefault(k, []).append(v)
            if name in faithful:
                rec.setdefault("insertion_auc", []).append(insertion_auc(target_prob, pixels, m, n_steps=args.steps).auc)
                rec.setdefault("deletion_auc", []).append(deletion_auc(target_prob, pixels, m, n_steps=args.steps).auc)
        print(f"  {start + n}/{len(samples)} images ({time.perf_counter() - t_start:.0f} s)", flush=True)

    def mean(xs: list[torch.Tensor]) -> float:
        return float(torch.nanmean(torch.cat(xs).double()))

    table = {name: {k: mean(v) for k, v in rec.items()} for name, rec in per_map.items()}
    rand = [table[f"random_{s}"] for s in range(args.random_seeds)]
    table["random_mean"] = {k: float(np.nanmean([r.get(k, np.nan) for r in rand])) for k in rand[0]}
    summary = {"shots": args.shots, "seed": args.seed, "n_test": len(samples),
               "test_accuracy": test_metrics["accuracy"], "test_auc_macro": test_metrics["auc_macro"],
               "explained_accuracy": float(torch.cat(correct).float().mean()), "insertion_steps": args.steps,
               "gaussian_sigma": args.sigma, "threshold": 0.5, "maps": table,
               "seconds": round(time.perf_counter() - t_start, 1)}
    write_json(args.out / "ph2_maps.json", summary)
    cols = ["pointing", "dice", "iou", "precision", "recall", "insertion_auc", "deletion_auc"]
    print("| map | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name in ["gradcam_pred", "gradcam_true", "similarity_pred", "similarity_true", "center_gaussian", "random_mean"]:
        print(f"| {name} | " + " | ".join(f"{table[name][c]:.3f}" if c in table[name] else "-" for c in cols) + " |")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
