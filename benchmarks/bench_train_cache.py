"""Prompt learning on cached frozen image features vs re-encoding every image at every step.

Same data (PH2 16-shot split, seed 1, or generated images without ../shared/data), same seed, same
CoOp and training loop; only the source of the image features differs:

  cached      the engine's default: the frozen tower encodes each image once (FeatureCache), and
              every epoch reads (B, D) features;
  re-encode   what the reference implementations do: pixels through the frozen image tower at
              every step (a CoOp whose `inputs` is {"pixels"}).

and, with augmentation (random resized crop + flip):

  cached views    K augmented views of every image encoded once (`augment_views`), one drawn per
                  sample and epoch;
  re-encode aug.  a fresh augmentation of every image at every step, through the tower.

Prints seconds per epoch of each, the ratios (target >= 10x), the one-off encoding costs of the
cache, and the validation/test accuracy of each (target for the plain pair: equal within 0.5
point; the augmented pair sees different random views, so its accuracies are reported, not equal).

    python benchmarks/bench_train_cache.py [--epochs 4] [--backbone lite]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch


def dataset_and_split():
    from conceptclip.data import fewshot_split, holdout_split, load_dataset
    from conceptclip.paths import shared_data_dir

    if (shared_data_dir() / "ph2" / "labels.csv").is_file():
        ds = load_dataset("ph2")
    else:  # generated images: 3 classes with different mean colours
        import numpy as np
        from PIL import Image

        root = tempfile.mkdtemp()
        rng = np.random.default_rng(0)
        for c, name in enumerate(["a", "b", "c"]):
            os.makedirs(f"{root}/{name}")
            for i in range(40):
                arr = np.clip(rng.normal(60 + 60 * c, 30, (96, 96, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(f"{root}/{name}/{i}.png")
        ds = load_dataset(root)
    pools = holdout_split(ds)
    return ds, fewshot_split(ds, pools, 16, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--backbone", default="lite")
    ap.add_argument("--views", type=int, default=4, help="cached augmented views (the augmented pair)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    from conceptclip.backbones import create_backbone
    from conceptclip.data import FeatureCache
    from conceptclip.engine import TrainConfig, classification_metrics, fit, predict
    from conceptclip.data.images import random_resized_flip
    from conceptclip.engine.data import build_parts
    from conceptclip.methods import create_method
    from conceptclip.methods.coop import CoOp

    class ReencodeCoOp(CoOp):
        """CoOp fed pixels: the frozen image tower runs inside every training step."""

        inputs = frozenset({"pixels"})

        def logits(self, batch):
            if "features" in batch:  # testing on the plain cached features (the same numbers)
                return super().logits(batch)
            with torch.no_grad():
                feats = self.backbone.encode_image(batch["pixels"]).global_
            return super().logits({"features": feats})

    backbone = create_backbone(args.backbone)
    ds, split = dataset_and_split()
    cfg = TrainConfig(epochs=args.epochs, progress=False, seed=1)
    views_cfg = TrainConfig(epochs=args.epochs, progress=False, seed=1, augment_views=args.views)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(tmp)
        t0 = time.perf_counter()
        parts = build_parts(ds, split.parts, frozenset({"features"}), backbone, cache)
        encode_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        view_parts = build_parts(ds, split.parts, frozenset({"features"}), backbone, cache, views=args.views)
        views_s = time.perf_counter() - t0
        pixel_parts = build_parts(ds, split.parts, frozenset({"pixels"}), backbone, cache)
        augmented_pixels = build_parts(ds, split.parts, frozenset({"pixels"}), backbone, cache,
                                       augment=random_resized_flip(random.Random(1)))
        coop = lambda: create_method("coop", backbone, ds.classnames, template=ds.template)  # noqa: E731
        reencode = lambda: ReencodeCoOp(backbone, ds.classnames, template=ds.template)  # noqa: E731
        for name, parts_, make, cfg_ in (("cached", parts, coop, cfg), ("re-encode", pixel_parts, reencode, cfg),
                                         (f"cached, {args.views} augmented views", view_parts, coop, views_cfg),
                                         ("re-encode, augmented every step", augmented_pixels, reencode, cfg)):
            torch.manual_seed(1)
            method = make()
            result = fit(method, parts_["train"], parts_["val"], cfg_)
            probs = predict(method, parts["test"])
            test = classification_metrics(probs, parts["test"].labels, ds.classnames)
            out[name] = {"seconds_per_epoch": round(result.seconds / args.epochs, 3),
                         "val_accuracy": result.best_score, "test_accuracy": test["accuracy"]}
    plain = out["re-encode"]["seconds_per_epoch"] / out["cached"]["seconds_per_epoch"]
    aug = (out["re-encode, augmented every step"]["seconds_per_epoch"]
           / out[f"cached, {args.views} augmented views"]["seconds_per_epoch"])
    print(json.dumps({"dataset": ds.name, "train_images": len(split.parts["train"]), "epochs": args.epochs,
                      "one_off_encoding_seconds_all_images": round(encode_s, 2),
                      f"one_off_encoding_seconds_{args.views}_views": round(views_s, 2), **out,
                      "speedup_cached_vs_reencode": round(plain, 1),
                      "test_accuracy_difference_points": round(100 * abs(out["cached"]["test_accuracy"]
                                                                         - out["re-encode"]["test_accuracy"]), 2),
                      "speedup_cached_views_vs_augmented_reencode": round(aug, 1)}, indent=2))


if __name__ == "__main__":
    main()
