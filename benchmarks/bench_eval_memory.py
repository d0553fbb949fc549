"""Evaluation throughput against the bare backbone, peak memory, and a leak check, side by side.

1. throughput: the same N preprocessed images through (a) the bare image tower
   (`backbone.encode_image`) and (b) the tower plus each method's `logits` (class text features
   once per batch); ratio = bare time / method time (target >= 0.9).
2. peak memory (peak resident memory, VmHWM, each measured in a fresh subprocess): CoOp training at batch 32
   on cached features, and Grad-CAM explanation of 64 images.
3. leak check: resident memory after each of 30 CoOp epochs; growth from epoch 5 to 30 (target ~0).

    python benchmarks/bench_eval_memory.py [--n 64] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from the parent
    that forked this subprocess)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def pixels_for(backbone, n: int) -> torch.Tensor:
    from conceptclip.paths import shared_data_dir

    ph2 = shared_data_dir() / "ph2"
    if (ph2 / "labels.csv").is_file():
        from conceptclip.data import load_dataset, load_image

        return backbone.preprocess([load_image(s.path) for s in load_dataset("ph2").samples[:n]])
    return torch.randn(n, 3, backbone.image_size, backbone.image_size, generator=torch.Generator().manual_seed(0))


CLASSES = ["common nevus", "atypical nevus", "melanoma"]


def throughput(n: int, batch: int, repeats: int = 3) -> dict:
    from conceptclip.backbones import create_backbone
    from conceptclip.methods import create_method

    bb = create_backbone("lite")
    pix = pixels_for(bb, n)
    methods = {name: create_method(name, bb, CLASSES, template="a dermoscopy image of a {}.").eval()
               for name in ("zeroshot", "coop")}
    def bare():
        for i in range(0, n, batch):
            bb.encode_image(pix[i:i + batch])

    def with_method(m):
        def run():
            for i in range(0, n, batch):
                m.logits({"features": bb.encode_image(pix[i:i + batch]).global_})
        return run

    out = {}
    with torch.no_grad():
        bare()  # warm-up
        for name, m in methods.items():
            tb = tm = 0.0
            for _ in range(repeats):  # interleaved, so machine noise hits both sides alike
                t = time.perf_counter(); bare(); tb += time.perf_counter() - t
                t = time.perf_counter(); with_method(m)(); tm += time.perf_counter() - t
            out[name] = {"bare_images_per_s": round(n * repeats / tb, 1),
                         "method_images_per_s": round(n * repeats / tm, 1), "ratio": round(tb / tm, 3)}
    return out


def peak_training(batch: int) -> None:
    from conceptclip.backbones import create_backbone
    from conceptclip.engine import TrainConfig, fit
    from conceptclip.engine.data import Part
    from conceptclip.methods import create_method

    bb = create_backbone("lite")
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat(32)
    x = torch.randn(96, bb.embed_dim, generator=g)
    part = Part([str(i) for i in range(96)], y, tensors={"features": x, "labels": y, "index": torch.arange(96)})
    m = create_method("coop", bb, CLASSES)
    base = rss_mb()
    trace = []
    fit(m, part, part, TrainConfig(epochs=30, batch_size=batch, progress=False),
        on_epoch=lambda r: trace.append(rss_mb()))
    print(json.dumps({"rss_before_fit_mb": round(base, 1), "rss_per_epoch_mb": [round(v, 1) for v in trace],
                      "peak_rss_mb": round(peak_rss_mb(), 1)}))


def peak_explain(n: int) -> None:
    from conceptclip.backbones import create_backbone
    from conceptclip.explain import explain_method
    from conceptclip.methods import create_method

    bb = create_backbone("lite")
    pix = pixels_for(bb, n)
    m = create_method("zeroshot", bb, CLASSES)
    base = rss_mb()
    result = explain_method(m, pix)
    print(json.dumps({"rss_before_mb": round(base, 1), "maps_shape": list(result.maps.shape),
                      "peak_rss_mb": round(peak_rss_mb(), 1)}))


def _sub(what: str, arg: int) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", what, "--n", str(arg), "--batch", str(arg)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--child", default="")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    if args.child == "train":
        return peak_training(args.batch)
    if args.child == "explain":
        return peak_explain(args.n)
    report = {"throughput": throughput(args.n, args.batch), "training_batch_%d" % args.batch: _sub("train", args.batch),
              "explain_%d_images" % args.n: _sub("explain", args.n)}
    train = report["training_batch_%d" % args.batch]
    trace = train.pop("rss_per_epoch_mb", [])
    if len(trace) > 5:
        train["rss_epochs_1_5_10_20_30_mb"] = [trace[i] for i in (0, 4, 9, 19, len(trace) - 1) if i < len(trace)]
        report["leak_check_rss_growth_epoch5_to_end_mb"] = round(trace[-1] - trace[4], 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
