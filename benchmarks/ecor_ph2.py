"""ECOR on PH2 with the `lite` backbone: accuracy and the doubly-right grid RR/RW/WR/WW, 3 seeds.

Protocol
1. Stratified PH2 hold-out pools (50 / 20 / 30 %, pool seed 0); the `lite` heads aligned once on
   the train pool's image–caption pairs (bench.protocol.prepare_backbone); K-shot training splits
   (K = 16 per class) drawn from the train pool with seeds 1, 2, 3; the 60-image test pool is the
   same for every seed and is used once per run.
2. Rationale bank: PH2 diagnosis -> dermoscopic criteria present in >= 25 % of the *train pool's*
   images of that diagnosis (knowledge.skin.frequency_bank on knowledge.ph2_concepts_per_image);
   per-image truth = the criteria annotated for that image. A predicted rationale is right when
   every rationale in the predicted set is annotated for the image (metrics rule "subset"; with
   single-rationale sets: the rationale that best supports the predicted category is present).
3. Visual prompt on lite: the shallow feature-space prompt (prompts.visual_prompts.ConvFeaturePrompt,
   a learned 192 x 7 x 7 map at the input of the tower's last block); the frozen prefix of the tower
   is computed once per image and served as the batch key "tower_prefix".
4. Rows: zero-shot CLIP (class prompt; rationale = the predicted class's most probable rationale
   under P(R | I)), class prior (zero-shot class; rationale = that class's most frequent train-pool
   rationale), frozen DROR and frozen ECOR (no training), DROR-style baseline, ECOR, the paper's
   Table IV ablations AB1-AB6, and ECOR / DROR-style with this project's former defaults
   (pairs=bank, P(c | R, I) normalised within R, lr 0.1 as chosen then).
5. Learning rate: chosen on the *validation pool* only (`--select-lr`): ECOR with the defaults is
   trained with each candidate lr for every seed and scored on the 40-image validation pool; the lr
   with the best mean validation RR (ties: accuracy, then the smaller lr) trains every row.
6. Rationale localisation: pointing game of the predicted rationale's similarity map (patch tokens
   vs the rationale prompt, 7 x 7 upsampled) against the expert lesion mask, with the centre
   Gaussian map as the reference.

    python benchmarks/ecor_ph2.py --out runs/ecor_ph2 --select-lr 0.03 0.1 0.3 [--shots 16] [--seeds 1 2 3]
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




def train_bank(dataset, ids, out: Path) -> Path:
    """Diagnosis -> criteria bank from the train pool only (saved as JSON, passed by path)."""
    from conceptclip.knowledge.schema import save_bank
    from conceptclip.knowledge.skin import (PH2_DIAGNOSES, PH2_PROVENANCE, _phrase_order, frequency_bank,
                                            ph2_concepts_per_image, ph2_diagnoses)

    labels_csv = dataset.root / "labels.csv"
    per, diag = ph2_concepts_per_image(labels_csv), ph2_diagnoses(labels_csv)
    keep = set(ids)
    bank = frequency_bank("ph2-train-pool", {i: per[i] for i in keep}, {i: d for i, d in diag.items() if i in keep},
                          PH2_DIAGNOSES, PH2_PROVENANCE, "ph2", 0.25, _phrase_order(),
                          "PH2 criteria per diagnosis, present in >= 25% of the train pool's images")
    path = out / "ph2_train_bank.json"
    save_bank(bank, path)
    return path


# this project's ECOR/DROR defaults before the paper-faithful ones (lite takes the shallow prompt either way)
OLD_DEFAULTS = {"pairs": "bank"}


def main() -> None:  # noqa: C901 - one linear experiment
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/ecor_ph2"))
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--epochs", type=int, default=None, help="override the methods' training epochs")
    ap.add_argument("--lr", type=float, default=None, help="train every row with this lr (no selection)")
    ap.add_argument("--select-lr", type=float, nargs="*", default=[],
                    help="candidate lrs, chosen by ECOR's mean RR on the validation pool")
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--align-epochs", type=int, default=300)
    ap.add_argument("--rows", nargs="*", default=None, help="only these rows (names as in the table)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON",
                    help="method option for every row, e.g. max_rationales=5")
    args = ap.parse_args()
    t0 = time.perf_counter()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    from conceptclip.bench.protocol import prepare_backbone
    from conceptclip.data import FeatureCache, fewshot_split, holdout_split, load_dataset
    from conceptclip.engine.config import TrainConfig
    from conceptclip.engine.data import Part
    from conceptclip.engine.trainer import fit, seed_everything
    from conceptclip.explain import baseline_maps, upsample_maps
    from conceptclip.io import write_json, write_text
    from conceptclip.knowledge.skin import ph2_concepts_per_image
    from conceptclip.methods import create_method
    from conceptclip.methods.ecor import ABLATIONS, EcorConfig
    from conceptclip.metrics import pointing_game
    from conceptclip.metrics.rationale import rationale_grid
    from conceptclip.prompts import class_text_features
    from conceptclip.prompts.visual_prompts import ConvFeaturePrompt

    args.out.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset("ph2")
    pools = holdout_split(dataset)
    cache = FeatureCache()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = prepare_backbone("lite", dataset, pools, args.out, cache, align_epochs=args.align_epochs)
    bank_path = train_bank(dataset, pools.parts["train"], args.out)

    # the frozen tower prefix of every image, once (ConvFeaturePrompt.prefix)
    probe = ConvFeaturePrompt(backbone, EcorConfig.prompt_last_blocks)
    prefix = cache.get_or_compute(("ecor-lite-prefix", backbone.tower_id(), dataset.fingerprint(), probe.split),
                                  dataset.samples, lambda px: {"prefix": probe.prefix(px)}, backbone.preprocess,
                                  desc="encoding tower prefixes")["prefix"]
    with torch.no_grad():  # the frozen encoder's features (what the untuned rows read)
        frozen_feats = [backbone.project_feature_map(probe.suffix(prefix[i:i + 50]), patches=True)
                        for i in range(0, len(prefix), 50)]
    features = torch.cat([f.global_ for f in frozen_feats])
    patches = torch.cat([f.patches for f in frozen_feats])
    row_of = {s.id: r for r, s in enumerate(dataset.samples)}
    per_image = ph2_concepts_per_image(dataset.root / "labels.csv")
    print(f"set-up {time.perf_counter() - t0:.0f} s: prefixes {tuple(prefix.shape)}", flush=True)

    base_cfg = {"bank": str(bank_path), "visual_prompt": "shallow"}
    if args.top_k:
        base_cfg["top_k"] = args.top_k
    for item in args.set:
        key, _, value = item.partition("=")
        base_cfg[key] = json.loads(value)
    rows = {
        "zero-shot CLIP": None, "class prior": None,
        "DROR (frozen)": ("dror", {"visual_prompt": "none"}),
        "ECOR (frozen)": ("ecor", {"visual_prompt": "none"}),
        "DROR-style": ("dror", {}),
        "ECOR": ("ecor", {}),
        **{f"ECOR {ab}": ("ecor", {"ablation": ab}) for ab in ABLATIONS},
        "DROR-style (former defaults)": ("dror", {**OLD_DEFAULTS}, {"lr": 0.1}),
        "ECOR (former defaults)": ("ecor", {**OLD_DEFAULTS, "conditional_softmax": "grouped"}, {"lr": 0.1}),
    }
    if args.rows:
        rows = {k: v for k, v in rows.items() if k in args.rows}

    test_ids = pools.parts["test"]
    test_samples = [dataset.by_id(i) for i in test_ids]
    masks = load_masks([s.mask for s in test_samples], backbone.image_size)
    base = baseline_maps(len(test_ids), (7, 7), backbone.image_size)  # lite's 7 x 7 grid
    centre, random_pg = (pointing_game(base[k], masks) for k in ("centre", "random"))

    def part(ids, space):
        r = torch.tensor([row_of[i] for i in ids])
        labels = torch.tensor([dataset.by_id(i).label for i in ids])
        truth = space.truth([per_image[i] for i in ids])
        return Part(ids, labels, tensors={"tower_prefix": prefix[r], "features": features[r], "patches": patches[r],
                                          "labels": labels, "index": torch.arange(len(ids)), "rationales": truth})

    def train(kind, cfg, seed, train_ids, space, lr, extra=None):
        seed_everything(seed)
        method = create_method(kind, backbone, dataset.classnames, {**base_cfg, **cfg})
        tcfg = {**method.train_defaults, "seed": seed, "progress": False, "eval_every": 10**9, **(extra or {})}
        if args.epochs is not None:
            tcfg["epochs"] = args.epochs
        if lr is not None and not (extra and "lr" in extra):
            tcfg["lr"] = lr
        fit_result = fit(method, part(train_ids, space), None, TrainConfig.from_dict(tcfg))
        method.eval()
        return method, [h.get("loss") for h in fit_result.history], tcfg["lr"]

    lr, selection = args.lr, None
    if args.select_lr and lr is None:  # validation pool only: the test pool is not read here
        probe_space = create_method("ecor", backbone, dataset.classnames, {**base_cfg, "visual_prompt": "none"}).space
        vb = part(pools.parts["val"], probe_space).all()
        selection = {}
        for cand in args.select_lr:
            scores = []
            for seed in args.seeds:
                split = fewshot_split(dataset, pools, args.shots, seed)
                m, _, _ = train("ecor", {}, seed, split.parts["train"], probe_space, cand)
                pr = m.predict_rationales(vb)
                g = rationale_grid(pr["pred"], vb["labels"], pr["rationales"], vb["rationales"], rule="subset")
                scores.append((g["RR"], float((pr["pred"] == vb["labels"]).float().mean())))
            selection[cand] = {"val_RR": float(np.mean([a for a, _ in scores])),
                               "val_accuracy": float(np.mean([b for _, b in scores]))}
            print(f"lr {cand}: validation RR {selection[cand]['val_RR']:.3f} "
                  f"accuracy {selection[cand]['val_accuracy']:.3f}", flush=True)
        lr = max(selection, key=lambda c: (selection[c]["val_RR"], selection[c]["val_accuracy"], -c))
        print(f"chosen lr {lr} (validation pool, {len(pools.parts['val'])} images)", flush=True)

    results: dict[str, list[dict]] = {k: [] for k in rows}
    for seed in args.seeds:
        split = fewshot_split(dataset, pools, args.shots, seed)
        frozen = create_method("ecor", backbone, dataset.classnames, {**base_cfg, "visual_prompt": "none"})
        space = frozen.space
        test = part(test_ids, space)
        tb = test.all()
        truth, labels = tb["rationales"], tb["labels"]
        for name, spec in rows.items():
            t1 = time.perf_counter()
            loc = None
            if spec is None:  # zero-shot CLIP class, or the class prior's rationale
                with torch.no_grad():
                    x = torch.nn.functional.normalize(tb["features"], dim=-1)
                    text = class_text_features(backbone, dataset.classnames, [dataset.template])
                    pred = (x @ text.t()).argmax(1)
                    # (N, S) the rationale sets within the predicted class's bank list (not the candidate
                    # pairs: with pairs="all" every class is paired with every set)
                    own = frozen.positive_sets(frozen.class_truth[pred])
                    if name == "zero-shot CLIP":
                        p_r = frozen.similarities(tb["features"])["rationale_logits"]
                        sets = torch.where(own, p_r, torch.full_like(p_r, float("-inf"))).argmax(1)
                    else:  # the class's first bank rationale (lowest vocabulary index)
                        sets = own.float().argmax(1)
                    rationales = frozen.set_matrix[sets].float()
            else:
                kind, cfg, *extra = spec
                method, losses, used_lr = train(kind, cfg, seed, split.parts["train"], space, lr,
                                                extra[0] if extra else None)
                pr = method.predict_rationales(tb)
                pred, rationales, sets = pr["pred"], pr["rationales"], pr["rationale_set"]
                maps = method.rationale_maps(tb, sets)
                loc = pointing_game(upsample_maps(maps, backbone.image_size), masks)
            grid = rationale_grid(pred, labels, rationales, truth, rule="subset")
            rec = {"seed": seed, "accuracy": float((pred == labels).float().mean()),
                   **{k: grid[k] for k in ("RR", "RW", "WR", "WW")}, "right_rationale": grid["RR"] + grid["WR"],
                   "pointing_game": loc, "seconds": round(time.perf_counter() - t1, 1)}
            if spec is not None and losses:
                rec["loss_first_last"] = [losses[0], losses[-1]]
                rec["lr"] = used_lr
            results[name].append(rec)
            print(f"seed {seed} {name:16s} acc {rec['accuracy']:.3f} RR {rec['RR']:.3f} RW {rec['RW']:.3f} "
                  f"WR {rec['WR']:.3f} WW {rec['WW']:.3f}" + (f" PG {loc:.3f}" if loc is not None else "")
                  + f" ({rec['seconds']} s)", flush=True)

    def ms(vals):
        vals = [v for v in vals if v is not None]
        return (float(np.mean(vals)), float(np.std(vals))) if vals else (None, None)

    keys = ("accuracy", "RR", "RW", "WR", "WW", "right_rationale", "pointing_game")
    summary = {name: {k: ms([r[k] for r in recs]) for k in keys} for name, recs in results.items()}
    head = "| method | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys) + "\n"
    lines = []
    for name, s in summary.items():
        cells = [f"{m:.3f} ± {sd:.3f}" if m is not None else "–" for m, sd in (s[k] for k in keys)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = head + "\n".join(lines) + "\n"
    notes = (f"\nPH2 test pool {len(test_ids)} images, {args.shots}-shot training, seeds {args.seeds}, "
             f"options {base_cfg}; lr {lr}"
             + (f" chosen on the validation pool from {selection}" if selection else "") + "; "
             f"pointing-game baselines: centre Gaussian {centre:.3f}, random maps {random_pg:.3f}; ablations: "
             + "; ".join(f"{k}: {v[1]}" for k, v in ABLATIONS.items()) + "\n")
    print("\n" + table + notes)
    write_json(args.out / "ecor_ph2.json", {"runs": results, "summary": summary, "centre_pointing_game": centre,
                                            "random_pointing_game": random_pg,
                                            "lr": lr, "lr_selection": selection,
                                            "shots": args.shots, "seeds": args.seeds, "options": base_cfg,
                                            "rationale_space": space.summary(), "vocabulary": space.vocab})
    write_text(args.out / "ecor_ph2.md", table + notes)
    print(f"total {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
