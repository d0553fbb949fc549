"""Prompt learning on cached frozen image features vs re-encoding every image at every step.

Same data (PH2 16-shot split, seed 1, or generated images without ../shared/data), same seed, same
CoOp and training loop; only the source of the image features differs:

  cached      the engine's default: the frozen tower encodes each image once (FeatureCache), and
              every epoch reads (B, D) features;
  re-encode   what the reference implementations do: pixels through the frozen image tower at
              every step (a CoOp whose `inputs` is {"pixels"}).

Prints seconds per epoch of both, the ratio (target >= 10x), the one-off encoding cost of the
cache, and the validation/test accuracy of both (target: equal within 0.5 point).

    python benchmarks/bench_train_cache.py [--epochs 4] [--backbone lite]
"""

from __future__ import annotations

import argparse
import json
import os
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
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    from conceptclip.backbones import create_backbone
    from conceptclip.data import FeatureCache
    from conceptclip.engine import TrainConfig, classification_metrics, fit, predict
    from conceptclip.engine.data import build_parts
    from conceptclip.methods import create_method
    from conceptclip.methods.coop import CoOp

    class ReencodeCoOp(CoOp):
        """CoOp fed pixels: the frozen image tower runs inside every training step."""

        inputs = frozenset({"pixels"})

        def logits(self, batch):
            with torch.no_grad():
                feats = self.backbone.encode_image(batch["pixels"]).global_
            return super().logits({"features": feats})

    backbone = create_backbone(args.backbone)
    ds, split = dataset_and_split()
    cfg = TrainConfig(epochs=args.epochs, progress=False, seed=1)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(tmp)
        t0 = time.perf_counter()
        parts = build_parts(ds, split.parts, frozenset({"features"}), backbone, cache)
        encode_s = time.perf_counter() - t0
        for name, parts_, make in (
            ("cached", parts, lambda: create_method("coop", backbone, ds.classnames, template=ds.template)),
            ("re-encode", build_parts(ds, split.parts, frozenset({"pixels"}), backbone, cache),
             lambda: ReencodeCoOp(backbone, ds.classnames, template=ds.template)),
        ):
            torch.manual_seed(1)
            method = make()
            result = fit(method, parts_["train"], parts_["val"], cfg)
            probs = predict(method, parts_["test"])
            test = classification_metrics(probs, parts_["test"].labels, ds.classnames)
            out[name] = {"seconds_per_epoch": round(result.seconds / args.epochs, 3),
                         "val_accuracy": result.best_score, "test_accuracy": test["accuracy"]}
    ratio = out["re-encode"]["seconds_per_epoch"] / out["cached"]["seconds_per_epoch"]
    print(json.dumps({"train_images": len(split.parts["train"]), "epochs": args.epochs,
                      "one_off_encoding_seconds_all_images": round(encode_s, 2), **out,
                      "speedup_cached_vs_reencode": round(ratio, 1),
                      "test_accuracy_difference_points": round(100 * abs(out["cached"]["test_accuracy"]
                                                                         - out["re-encode"]["test_accuracy"]), 2)},
                     indent=2))


if __name__ == "__main__":
    main()
