"""PH2 few-shot on the real CLIP ViT-B/16, CLIP ViT-L/14 and MONET (ViT-L/14) image embeddings in
../shared/data/embeddings, read in place through `embeddings:MANIFEST` (nothing is copied).

    python benchmarks/ph2_real_embeddings.py --out runs/bench_ph2_real [--methods ...] [--shots ...] [--seeds ...]

For each backbone it writes OUT/<name>/manifest.json (absolute paths into the shared folder, sha256
of every file), then runs `conceptclip bench fewshot` on it into OUT/<name>/ with the same pools and
K-shot splits as the `lite` table (they depend on the dataset and seeds only), and prints the tables
(accuracy, macro AUC, melanoma-vs-rest AUC) and the wall time.

Stored text prompts: only "This is dermatoscopy of melanoma" and "This is dermatoscopy of nevus"
exist (the source repository's PH2 class prompts). PH2 here has three classes, so the manifest maps
the dataset's prompts for common nevus AND atypical nevus to the one nevus prompt (`text_aliases`):
text-based scores cannot tell the two nevus classes apart (zero-shot never predicts atypical nevus:
its score ties with common nevus, and the tie goes to the first class).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SPACES = {  # name: (image folder, text folder, text-file suffix)
    "clip_vit_b16": ("ph2/CLIP_ViT-B-16", "text/CLIP", "_ViT-B-16"),
    "clip_vit_l14": ("ph2/CLIP_ViT-L-14", "text/CLIP", "_ViT-L-14"),
    "monet_vit_l14": ("ph2/MONET_ViT-L-14", "text/MONET", ""),
}
METHODS = ("zeroshot", "linear_probe", "lp_pp", "tip_adapter", "tip_adapter_f", "clip_adapter")


def ph2_manifest(root: Path, name: str, out: Path) -> Path:
    """manifest.json for one shared PH2 embedding space (class prompts, reference and concept prompts
    where the shared folder has them for this model)."""
    from conceptclip.backbones.embeddings import write_manifest
    from conceptclip.data.ph2 import PH2_TEMPLATE

    img_dir, text_dir, suffix = SPACES[name]
    (array,) = sorted((root / img_dir).glob("*_array.npy"))
    ids = array.with_name(array.name.replace("_array.npy", "_ids.csv"))
    prompts = json.loads((root / "text" / "prompts.json").read_text(encoding="utf-8"))
    texts = []
    for cls in ("Melanoma", "Nevus"):
        texts.append((root / text_dir / "text_embeddings" / f"class_label_embeddings_{cls}{suffix}.npy",
                      prompts["CLASS_LABELS_PROMPTS"][cls]))
    ref = (root / text_dir / "reference_embeddings" / f"reference_embeddings{suffix}.npy" if suffix else
           root / text_dir / "reference_embeddings" / "reference_concept_embeddings.npy")
    if ref.is_file():
        texts.append((ref, prompts["REFERENCE_CONCEPT_PROMPTS"]))
    for concept, lines in prompts["DETAILED_CONCEPT_PROMPTS"].items():
        f = root / text_dir / "text_embeddings" / f"detailed_concept_embeddings_{concept}{suffix}.npy"
        if f.is_file():
            texts.append((f, lines))
    for concept, lines in prompts["CONCEPT_PROMPTS"].items():
        f = root / text_dir / "text_embeddings" / f"concept_embeddings_{concept}{suffix}.npy"
        if f.is_file():
            texts.append((f, lines))
    aliases = {PH2_TEMPLATE.format("melanoma"): "This is dermatoscopy of melanoma",
               PH2_TEMPLATE.format("common nevus"): "This is dermatoscopy of nevus",
               PH2_TEMPLATE.format("atypical nevus"): "This is dermatoscopy of nevus"}
    import numpy as np

    dim = int(np.load(array, mmap_mode="r").shape[1])
    return write_manifest(out / "manifest.json", [(array, ids)], texts, embed_dim=dim, text_aliases=aliases,
                          source={"dataset": "ph2", "images": "lesion-masked (Segmented), L2-normalised",
                                  "origin": "CristianoPatricio/concept-based-interpretability-VLM", "space": name})


LABELS = {"lite": "lite", "clip_vit_b16": "CLIP ViT-B/16", "clip_vit_l14": "CLIP ViT-L/14", "monet_vit_l14": "MONET"}


def combined_tables(out: Path, spaces: list[str], metrics=("accuracy", "auc_melanoma")) -> str:
    """Method x space rows, K columns: "mean ± std [95 % bootstrap CI]" in % for each metric, from every
    space's fewshot_runs.csv."""
    import csv

    from conceptclip.bench.table import add_confidence_intervals, fewshot_summary, pct_cell

    summaries = {}
    for name in spaces:
        with open(out / name / "fewshot_runs.csv", newline="", encoding="utf-8") as fh:
            keep = ("accuracy", "balanced_accuracy", "f1_macro", "auc_macro")
            recs = [{"method": r["method"], "run": r["run"], "shots": int(r["shots"]), "seed": int(r["seed"]),
                     **{k: float(v) if v not in ("", "None") else None for k, v in r.items()
                        if k in keep or k.startswith("auc_")}} for r in csv.DictReader(fh)]
        summary = fewshot_summary(recs)
        add_confidence_intervals(summary, recs, metrics=metrics)
        summaries[name] = {(r["method"], r["shots"]): r for r in summary}
    shots = sorted({k for s in summaries.values() for _, k in s})
    methods = list(dict.fromkeys(m for s in summaries.values() for m, _ in s))
    text = []
    for metric in metrics:
        text += [f"PH2 test {metric.replace('_', ' ')} (%): mean ± std over seeds 1-3 [95 % bootstrap CI of the "
                 "seed mean over the 60 test images]", "",
                 "| method | space | " + " | ".join(f"K={k}" for k in shots) + " |", "|---|---|" + "---|" * len(shots)]
        for m in methods:
            for name in spaces:
                cells = [pct_cell(summaries[name][m, k], metric) if (m, k) in summaries[name] else "-" for k in shots]
                text.append(f"| {m} | {LABELS[name]} | " + " | ".join(cells) + " |")
        text.append("")
    return "\n".join(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench_ph2_real"))
    ap.add_argument("--spaces", nargs="+", default=list(SPACES), choices=[*SPACES, "lite"],
                    help="embedding spaces; 'lite' runs the same methods on the lite backbone (heads aligned once)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--shots", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--combined", nargs="+", default=None, metavar="SPACE",
                    help="only print method x space tables of these finished spaces (e.g. lite clip_vit_b16 ...)")
    args = ap.parse_args()
    if args.combined:
        print(combined_tables(args.out, args.combined))
        return

    import torch

    torch.set_num_threads(1)
    from conceptclip.bench.protocol import run_protocol
    from conceptclip.bench.table import add_confidence_intervals, fewshot_markdown, fewshot_summary, write_tables
    from conceptclip.io import write_text
    from conceptclip.paths import shared_data_dir

    root = shared_data_dir() / "embeddings"
    t_all = time.perf_counter()
    for name in args.spaces:
        out = args.out / name
        t0 = time.perf_counter()
        backbone = "lite" if name == "lite" else f"embeddings:{ph2_manifest(root, name, out).resolve()}"
        records = run_protocol("fewshot", "ph2", args.methods, args.shots, args.seeds, out,
                               backbone=backbone, progress=False, log=lambda s: print(s, flush=True))
        paths = write_tables("fewshot", records, out, title=f"ph2 / {name}")
        summary = fewshot_summary(records)
        add_confidence_intervals(summary, records, metrics=("auc_melanoma",))
        melanoma = fewshot_markdown(summary, "auc_melanoma", title=f"ph2 / {name}")
        write_text(out / "fewshot_melanoma.md", melanoma)
        print(paths["md"].read_text(encoding="utf-8") + "\n" + melanoma)
        print(f"{name}: {len(records)} runs, {time.perf_counter() - t0:.1f} s wall", flush=True)
    print(f"all spaces: {time.perf_counter() - t_all:.1f} s wall")


if __name__ == "__main__":
    main()
