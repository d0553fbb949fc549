"""DEAL vs its ablation without R_disen and R_local on synthetic images with known part masks.

The data (generated here, seeded): 224 x 224 images on a noisy grey background holding coloured
shapes. A "part" is a (colour, shape) pair such as "red circle"; its pixels are its mask.

1. Pre-training pool: images with 1-3 random parts out of all of them, captioned "an image of an
   object with red circle and blue square." The `lite` heads are aligned on it, standing in for a
   VLM pre-trained on generic data in which parts occur independently.
2. Task: three classes, each made of three fixed parts (parts are shared across classes, colours
   and shapes recombine); concepts = the class's part names. K-shot train, a validation set and a
   test set of fresh images, every part at a random cell of a 3 x 3 grid.
3. DEAL (the paper's defaults; --previous: the project's earlier readings, template-prompt maps, CE
   over class prompts, R_disen averaged over pairs) and the ablation (both lambdas 0) train the same parameters from
   the same aligned backbone and seed; on the test images: accuracy, disentanglability of the true
   class's concept maps (Grad-CAM on pixels), part mIoU of each concept map (min-max normalised,
   threshold 0.5) against its part's mask, and the same for the zero-shot (untrained) model.

    python benchmarks/deal_synthetic.py --out runs/deal_synthetic [--seeds 1 2 3] [--shots 16] [--previous]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import torch
from PIL import Image, ImageDraw

SIZE = 224
GRID = 3
COLOURS = {"red": (215, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 215), "yellow": (230, 205, 40)}
SHAPES = ("circle", "square", "triangle")
CLASSES = {  # class -> its three parts (colour, shape)
    "lamp": (("red", "circle"), ("blue", "square"), ("yellow", "triangle")),
    "kite": (("green", "circle"), ("red", "square"), ("blue", "triangle")),
    "flag": (("yellow", "circle"), ("green", "square"), ("red", "triangle")),
}


def part_name(part: tuple[str, str]) -> str:
    return f"{part[0]} {part[1]}"


@dataclass
class SyntheticImage:
    image: Image.Image
    parts: list[tuple[str, str]]
    masks: np.ndarray  # (len(parts), SIZE, SIZE) bool


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)


def render(parts: list[tuple[str, str]], rng: random.Random) -> SyntheticImage:
    """One image with `parts` at distinct random cells of the 3 x 3 grid, and each part's mask."""
    base = np.clip(np.random.default_rng(rng.randrange(2**31)).normal(128, 18, (SIZE, SIZE, 3)), 0, 255)
    image = Image.fromarray(base.astype(np.uint8))
    cell = SIZE // GRID
    cells = rng.sample(range(GRID * GRID), len(parts))
    masks = []
    for part, c in zip(parts, cells):
        side = rng.randint(46, 62)
        x0 = (c % GRID) * cell + rng.randint(2, cell - side - 2)
        y0 = (c // GRID) * cell + rng.randint(2, cell - side - 2)
        box = (x0, y0, x0 + side, y0 + side)
        draw_shape(ImageDraw.Draw(image), part[1], box, COLOURS[part[0]])
        m = Image.new("L", (SIZE, SIZE), 0)
        draw_shape(ImageDraw.Draw(m), part[1], box, 255)
        masks.append(np.asarray(m) > 127)
    return SyntheticImage(image, list(parts), np.stack(masks))


def all_parts() -> list[tuple[str, str]]:
    return [(c, s) for c in COLOURS for s in SHAPES]


def pretraining_pool(n: int, seed: int) -> list[tuple[SyntheticImage, str]]:
    """Images with 1-3 random distinct parts, captioned with their part names."""
    rng = random.Random(seed)
    parts = all_parts()
    out = []
    for _ in range(n):
        chosen = rng.sample(parts, rng.randint(1, 3))
        names = [part_name(p) for p in chosen]
        out.append((render(chosen, rng), "an image of an object with " + " and ".join(names) + "."))
    return out


def task_images(per_class: int, seed: int) -> list[tuple[SyntheticImage, int]]:
    rng = random.Random(seed)
    out = []
    for label, parts in enumerate(CLASSES.values()):
        for _ in range(per_class):
            out.append((render(list(parts), rng), label))
    return out


def concepts() -> dict[str, list[str]]:
    return {c: [part_name(p) for p in parts] for c, parts in CLASSES.items()}


def save_dataset(name: str, root: Path, items: list[tuple[SyntheticImage, str | int]]):
    """Write the images as PNGs and return a `Dataset` (captions for str items, labels for int items)."""
    from conceptclip.data.dataset import Dataset, Sample

    root.mkdir(parents=True, exist_ok=True)
    samples = []
    for i, (im, tag) in enumerate(items):
        path = root / f"{i:04d}.png"
        if not path.exists():
            im.image.save(path)
        if isinstance(tag, str):
            samples.append(Sample(f"{name}{i:04d}", path, label=0, caption=tag))
        else:
            samples.append(Sample(f"{name}{i:04d}", path, label=tag))
    classes = ["object"] if isinstance(items[0][1], str) else list(CLASSES)
    return Dataset(name, classes, samples, template="an image of {}.", root=root)


def evaluate(method, items: list[tuple[SyntheticImage, int]], batch: int = 30) -> dict[str, float]:
    """Accuracy, disentanglability and part mIoU of the true class's concept maps (Grad-CAM on pixels)."""
    from conceptclip.metrics import accuracy, disentanglability, part_miou

    bb = method.backbone
    maps, masks, probs, labels = [], [], [], []
    for s in range(0, len(items), batch):
        chunk = items[s:s + batch]
        pixels = bb.preprocess([im.image for im, _ in chunk])
        y = torch.tensor([lab for _, lab in chunk])
        with torch.no_grad():
            probs.append(method.probabilities(method.logits({"features": bb.encode_image(pixels).global_})))
        maps.append(method.heat_maps(pixels, y).concepts.detach())
        masks.append(torch.from_numpy(np.stack([im.masks for im, _ in chunk])))
        labels.append(y)
    m, k, y, p = torch.cat(maps), torch.cat(masks), torch.cat(labels), torch.cat(probs)
    return {"accuracy": accuracy(p, y), "disentanglability": disentanglability(m),
            "part_miou": part_miou(m, k), "part_miou_top10": part_miou(m, k, top_fraction=0.1)}


PREVIOUS = {"explain_prompts": "template", "contrastive": "classes", "disen_reduction": "mean"}


def run(out: Path, seeds: list[int], shots: int, epochs: int, n_pretrain: int, n_test: int, lambdas: float,
        align_epochs: int, variant: dict | None = None) -> dict:
    from conceptclip.engine.align import AlignConfig, align
    from conceptclip.backbones.lite import LiteBackbone
    from conceptclip.data import FeatureCache
    from conceptclip.data.splits import Split
    from conceptclip.engine import run_experiment
    from conceptclip.engine.load import load_run
    from conceptclip.methods import create_method

    cache = FeatureCache()
    pool = pretraining_pool(n_pretrain, seed=0)
    pre = save_dataset("synpre", out / "data" / "pretrain", pool)
    heads = out / "lite_heads.safetensors"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = LiteBackbone(heads=heads if heads.exists() else None).freeze()
    if not heads.exists():
        s = align(backbone, pre, [x.id for x in pre.samples], heads,
                  AlignConfig(epochs=align_epochs, augmented_views=0), cache=cache)
        print(f"aligned lite heads on {s['pairs']} pre-training pairs: loss {s['first_loss']:.3f} -> "
              f"{s['final_loss']:.3f}", flush=True)
    test_items = task_images(n_test, seed=10_000)
    results: dict[str, list[dict]] = {"zero-shot": [], "ablation (no R)": [], "DEAL": []}
    variant = variant or {}
    zs = create_method("deal", backbone, list(CLASSES), {"concepts": concepts(), **variant})
    results["zero-shot"].append(evaluate(zs, test_items))
    print("zero-shot", results["zero-shot"][-1], flush=True)
    for seed in seeds:
        items = task_images(shots + 4, seed=seed)
        ds = save_dataset(f"syntask{seed}", out / "data" / f"task{seed}", items)
        ids = [s.id for s in ds.samples]
        train = [i for j, i in enumerate(ids) if j % (shots + 4) < shots]
        val = [i for i in ids if i not in set(train)]
        split = Split(dataset=ds.name, fingerprint=ds.fingerprint(), kind="fewshot",
                      params={"shots": shots, "seed": seed}, parts={"train": train, "val": val, "test": val})
        for name, lam in (("ablation (no R)", 0.0), ("DEAL", lambdas)):
            run_dir = out / f"{'deal' if lam else 'ablation'}_seed{seed}"
            if not (run_dir / "metrics.json").exists():
                run_experiment("deal", ds, split, backbone, run_dir, cache=cache, resume=run_dir.exists(),
                               method_config={"lambda_disen": lam, "lambda_local": lam, "concepts": concepts(),
                                              **variant},
                               train_config={"seed": seed, "epochs": epochs, "progress": False,
                                             "eval_every": 10**9})  # test the final epoch
            method, _ = load_run(run_dir)
            results[name].append(evaluate(method, test_items))
            print(name, seed, results[name][-1], flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/deal_synthetic"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--pretrain", type=int, default=240)
    ap.add_argument("--test", type=int, default=30, help="test images per class")
    ap.add_argument("--lambdas", type=float, default=1.0)
    ap.add_argument("--align-epochs", type=int, default=300)
    ap.add_argument("--previous", action="store_true", help="DEAL with the earlier readings (PREVIOUS)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    results = run(args.out, args.seeds, args.shots, args.epochs, args.pretrain, args.test, args.lambdas,
                  args.align_epochs, PREVIOUS if args.previous else {})
    keys = list(next(iter(results.values()))[0])
    table = {name: {k: (float(np.mean([r[k] for r in rs])), float(np.std([r[k] for r in rs]))) for k in keys}
             for name, rs in results.items()}
    lines = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in row.values()) + " |")
    print("\n".join(lines))
    from conceptclip.io import write_json

    write_json(args.out / "summary.json", {"args": {k: str(v) for k, v in vars(args).items()}, "results": results,
                                           "table": table, "seconds": time.perf_counter() - t0})


if __name__ == "__main__":
    main()
