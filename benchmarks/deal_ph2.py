"""DEAL vs CoOp on PH2 (`lite` backbone): accuracy and DEAL's four concept-explanation metrics over seeds.

1. Stratified hold-out pools of PH2 (50 / 20 / 30 %); the `lite` heads aligned once on the train
   pool's image-caption pairs; per seed a K-shot split (the few-shot protocol).
2. CoOp, DEAL (the paper's defaults), with --ablation DEAL without R_disen / R_local, and with
   --previous DEAL with the project's earlier readings (template-prompt maps, CE over class prompts,
   R_disen averaged over pairs, six concepts), trained with the same schedule
   and tested after their final epoch (the CoOp-family protocol; a 12-image validation set selects
   nothing reliably).
   Concepts: the PH2 criteria per diagnosis (`knowledge.ph2_bank`, present in >= 25 % of a class's
   images among the 140 non-test images; the first five, six with --previous): "An image of melanoma
   with atypical pigment network, asymmetry, ...".
3. On the test pool, per image, the concept maps of its true class (Grad-CAM on the pixels, the lite
   tower's 7 x 7 grid). CoOp learns no concepts and keeps the image side frozen: its concept maps
   are those of the written concept prompts on the frozen backbone (DEAL before training).
   - disentanglability (`metrics.disentanglability`, in [0, 1]);
   - localisability (`metrics.localisability`): normalised insertion AUC of each concept's own score
     (cosine with the explained concept text; pixels inserted by its map onto a blurred copy, RISE's
     11 px / sigma 5 kernel), mean over concepts (--ins-per-class images per class, to bound the cost);
   - part mIoU: each concept map (min-max normalised, threshold 0.5) against the expert lesion
     mask (PH2 has no per-criterion masks: every criterion lies in the lesion);
   - Eq. 6 accuracy (`metrics.concept_prediction_accuracy`: class score = mean similarity over its
     concept prompts) and the per-slot concept accuracy (`metrics.concept_slot_accuracy`, ours).

    python benchmarks/deal_ph2.py --out runs/deal_ph2 [--seeds 1 2 3] [--shots 16] [--epochs 50] [--ablation] [--previous]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import torch

from conceptclip.explain import load_masks

PREVIOUS = {"explain_prompts": "template", "contrastive": "classes", "disen_reduction": "mean", "n_concepts": 6}



def evaluate(maps_model, dataset, ids: list[str], ins_ids: set[str], steps: int, batch: int) -> dict:
    """DEAL's concept metrics with the concept maps and concept scores of `maps_model` (a DEAL)."""
    from conceptclip.data import load_image
    from conceptclip.metrics import (
        concept_prediction_accuracy,
        concept_slot_accuracy,
        disentanglability,
        localisability,
        part_miou,
    )

    bb = maps_model.backbone
    samples = [dataset.by_id(i) for i in ids]
    dis, ins, maps_all, masks_all, valid_all = [], [], [], [], []
    slot_scores, concept_scores, labels = [], [], []
    kmin = int(maps_model.concept_mask.sum(1).min())
    for s in range(0, len(samples), batch):
        chunk = samples[s:s + batch]
        pixels = bb.preprocess([load_image(x.path) for x in chunk])
        y = torch.tensor([x.label for x in chunk])
        labels.append(y)
        with torch.no_grad():
            feats = {"features": bb.encode_image(pixels).global_}
            sims = maps_model.concept_scores(feats)[:, maps_model.concept_index]  # (B, C, Kmax) concept prompts
            concept_scores.append(sims)
            slot_scores.append(sims[:, :, :kmin].transpose(1, 2))  # (B, Kmin, C): slot k of every class
        out = maps_model.heat_maps(pixels, y)
        m, valid = out.concepts.detach(), out.mask
        maps_all.append(m)
        valid_all.append(valid)
        masks_all.append(load_masks([s.mask for s in chunk], bb.image_size))
        for c in y.unique().tolist():  # disentanglability over each class's real concepts only
            rows = (y == c).nonzero()[:, 0]
            k = int(valid[rows[0]].sum())
            dis.append(disentanglability(m[rows, :k], reduction="none"))

        forward = maps_model.pixel_forward()  # scores over the explained texts (what the maps explain)

        def concept_score(x: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return forward(x).logits[torch.arange(x.shape[0]), cols]

        pick = torch.tensor([x.id in ins_ids for x in chunk])
        if pick.any():
            for k in range(m.shape[1]):
                rows = (pick & valid[:, k]).nonzero()[:, 0]
                if len(rows):
                    cols = maps_model.n_classes + maps_model.concept_index[y[rows], k]
                    ins.append(localisability(lambda x, c=cols: concept_score(x, c), pixels[rows], m[rows, k],
                                              n_steps=steps).auc)
    y = torch.cat(labels)
    maps, valid, masks = torch.cat(maps_all), torch.cat(valid_all), torch.cat(masks_all)
    masks = masks[:, None].expand(-1, maps.shape[1], -1, -1)
    return {
        "disentanglability": float(torch.nanmean(torch.cat(dis).double())),
        "localisability": float(torch.nanmean(torch.cat(ins))),
        "part_miou_lesion": part_miou(maps, masks, valid=valid),
        "eq6_accuracy": concept_prediction_accuracy(torch.cat(concept_scores), y, maps_model.concept_mask),
        "concept_slot_accuracy": concept_slot_accuracy(torch.cat(slot_scores), y),
        "n_test": len(ids), "n_insertion_images": len(ins_ids),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/deal_ph2"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=50, help="every method (the CoOp schedule)")
    ap.add_argument("--align-epochs", type=int, default=300)
    ap.add_argument("--ablation", action="store_true", help="also DEAL without R_disen and R_local")
    ap.add_argument("--previous", action="store_true", help="also DEAL with the earlier readings (PREVIOUS)")
    ap.add_argument("--ins-steps", type=int, default=10)
    ap.add_argument("--ins-per-class", type=int, default=5, help="test images per class for insertion AUC")
    ap.add_argument("--batch", type=int, default=20)
    args = ap.parse_args()
    t0 = time.perf_counter()

    from conceptclip.bench.protocol import prepare_backbone
    from conceptclip.data import FeatureCache, fewshot_split, holdout_split, load_dataset
    from conceptclip.engine import run_experiment
    from conceptclip.engine.load import load_run
    from conceptclip.io import write_json
    from conceptclip.methods import create_method

    args.out.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset("ph2")
    pools = holdout_split(dataset)
    backbone = prepare_backbone("lite", dataset, pools, args.out, FeatureCache(), args.align_epochs)
    test_ids = list(pools.parts["test"])
    ins_ids = {i for c in range(len(dataset.classnames))
               for i in [t for t in test_ids if dataset.by_id(t).label == c][: args.ins_per_class]}
    zero_shot = create_method("deal", backbone, dataset.classnames, dataset=dataset,
                              knowledge_exclude=test_ids).eval()  # the written prompts, as run_experiment builds them
    methods = [("coop", {}), ("deal", {})] + ([("deal_previous", PREVIOUS)] if args.previous else []) \
        + ([("deal_ablation", {"lambda_disen": 0.0, "lambda_local": 0.0})] if args.ablation else [])
    rows: dict[str, list[dict]] = {}
    cache = FeatureCache()
    zero_shot_metrics: dict = {}  # CoOp's concept columns are the written prompts': the same for every seed
    for name, mconf in methods:
        for seed in args.seeds:
            split = fewshot_split(dataset, pools, args.shots, seed)
            run = args.out / f"{name}_K{args.shots}_seed{seed}"
            result_file = run / "deal_metrics.json"
            if result_file.exists():
                rows.setdefault(name, []).append(json.loads(result_file.read_text()))
                if name == "coop":
                    zero_shot_metrics = {k: v for k, v in rows[name][-1].items() if k not in ("accuracy", "auc_macro")}
                continue
            if not (run / "metrics.json").exists():
                run_experiment("deal" if name.startswith("deal") else name, dataset, split, backbone, run,
                               cache=cache, resume=run.exists(), method_config=mconf,
                               train_config={"seed": seed, "epochs": args.epochs, "progress": False,
                                             "eval_every": 10**9})  # test the final epoch, as the bench protocol
            method, _ = load_run(run)
            test = json.loads((run / "metrics.json").read_text())["test"]
            t1 = time.perf_counter()
            if name.startswith("deal"):
                concept_metrics = evaluate(method, dataset, test_ids, ins_ids, args.ins_steps, args.batch)
            else:
                zero_shot_metrics = zero_shot_metrics or evaluate(zero_shot, dataset, test_ids, ins_ids,
                                                                  args.ins_steps, args.batch)
                concept_metrics = zero_shot_metrics
            res = {"accuracy": test["accuracy"], "auc_macro": test["auc_macro"], **concept_metrics,
                   "fit_seconds": json.loads((run / "metrics.json").read_text())["fit_seconds"],
                   "eval_seconds": round(time.perf_counter() - t1, 1)}
            write_json(result_file, res)
            rows.setdefault(name, []).append(res)
            print(name, seed, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}),
                  flush=True)
    keys = ["accuracy", "auc_macro", "disentanglability", "localisability", "part_miou_lesion", "eq6_accuracy",
            "concept_slot_accuracy"]
    table = {n: {k: (float(np.mean([r[k] for r in rs])), float(np.std([r[k] for r in rs]))) for k in keys}
             for n, rs in rows.items()}
    write_json(args.out / "summary.json", {"args": {k: str(v) for k, v in vars(args).items()}, "runs": rows,
                                           "table": table, "seconds": round(time.perf_counter() - t0, 1)})
    print(f"| method ({len(args.seeds)} seeds, {args.shots} shots) | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for n, row in table.items():
        print(f"| {n} | " + " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in row.values()) + " |")


if __name__ == "__main__":
    main()
