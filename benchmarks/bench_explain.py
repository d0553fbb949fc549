"""Batched Grad-CAM vs per-image loops on the `lite` backbone, side by side.

Explains a zero-shot method's scores on N images (the first N PH2 images when ../shared/data is
present, else seeded random pixels) four ways:

  batched      one `explain_method` call: images in chunks of `default_image_batch` (2 on CPU),
               one forward per chunk, one vectorised backward for all targets;
  per-image    a loop over images, each explained on its own (targets still batched);
  textbook     a loop over images and targets: forward, `.backward()` through a tensor hook,
               Grad-CAM weights, as the reference implementations do, one map at a time;
  one forward  all N images in a single forward (shows why the default chunks on CPU).

Two workloads: the 3 PH2 class logits, and the class + 17 concept scores whose maps concept
methods (DEAL, XCoOp) draw. Prints the times, the speed-ups and the largest absolute difference
between the maps.

    python benchmarks/bench_explain.py [--n 64] [--heads lite_heads.safetensors] [--threads 0]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch


def load_pixels(backbone, n: int) -> tuple[torch.Tensor, str]:
    from conceptclip.paths import shared_data_dir

    ph2 = shared_data_dir() / "ph2"
    if (ph2 / "labels.csv").is_file():
        from conceptclip.data import load_dataset, load_image

        ds = load_dataset("ph2")
        images = [load_image(s.path) for s in ds.samples[:n]]
        return backbone.preprocess(images), f"PH2 ({len(images)} images)"
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, backbone.image_size, backbone.image_size, generator=g), f"random pixels ({n})"


def textbook_gradcam(method, pixels: torch.Tensor, n_targets: int) -> torch.Tensor:
    """Per image, per target: forward through the tower with a tensor hook on the feature map,
    backward of the class logit, alpha = mean gradient, ReLU(sum alpha A)."""
    bb = method.backbone
    out = []
    for i in range(pixels.shape[0]):
        rows = []
        for t in range(n_targets):
            fmap = bb.tower_features(pixels[i:i + 1]).detach().requires_grad_(True)
            logits = method.logits({"features": bb.project_feature_map(fmap).global_})
            logits[0, t].backward()
            alpha = fmap.grad.mean(dim=(2, 3), keepdim=True)
            rows.append(torch.relu((alpha * fmap.detach()).sum(dim=1))[0])
        out.append(torch.stack(rows))
    return torch.stack(out)


CONCEPTS = ("asymmetry", "typical pigment network", "atypical pigment network", "regular dots and globules",
            "irregular dots and globules", "streaks", "regression areas", "blue-whitish veil", "light-brown colour",
            "dark-brown colour", "black colour", "blue-grey colour", "white colour", "red colour",
            "milia-like cysts", "irregular border", "a symmetric lesion")


def measure(method, pixels: torch.Tensor, skip_textbook: bool) -> dict:
    from conceptclip.explain import explain_method

    n_t = len(method.classnames)
    explain_method(method, pixels)  # warm-up (allocator, vmap)
    t0 = time.perf_counter()
    batched = explain_method(method, pixels).maps
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    per_image = torch.cat([explain_method(method, pixels[i:i + 1]).maps for i in range(pixels.shape[0])])
    t_loop = time.perf_counter() - t0
    t0 = time.perf_counter()
    one_forward = explain_method(method, pixels, image_batch=pixels.shape[0]).maps
    t_one = time.perf_counter() - t0
    report = {"targets": n_t, "batched_s": round(t_batched, 3), "per_image_loop_s": round(t_loop, 3),
              "speedup_vs_per_image_loop": round(t_loop / t_batched, 2),
              "all_images_in_one_forward_s": round(t_one, 3),
              "max_abs_diff_vs_per_image_loop": float((batched - per_image).abs().max()),
              "max_abs_diff_one_forward": float((batched - one_forward).abs().max())}
    if not skip_textbook:
        t0 = time.perf_counter()
        textbook = textbook_gradcam(method, pixels, n_t)
        t_text = time.perf_counter() - t0
        report.update({"textbook_per_image_per_target_s": round(t_text, 3),
                       "speedup_vs_textbook": round(t_text / t_batched, 2),
                       "max_abs_diff_vs_textbook": float((batched - textbook).abs().max())})
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--heads", default=None, help="aligned lite heads (default: the fixed initial heads)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--skip-textbook", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from conceptclip.backbones.lite import LiteBackbone
    from conceptclip.data.ph2 import PH2_CLASSES, PH2_TEMPLATE
    from conceptclip.methods import create_method

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = LiteBackbone(heads=args.heads).freeze()
    pixels, source = load_pixels(backbone, args.n)
    workloads = {
        "class logits": create_method("zeroshot", backbone, PH2_CLASSES, template=PH2_TEMPLATE).eval(),
        "class + concept scores": create_method("zeroshot", backbone, [*PH2_CLASSES, *CONCEPTS],
                                                template="a dermoscopy image with {}.").eval(),
    }
    report = {"images": source, "threads": torch.get_num_threads()}
    for name, method in workloads.items():
        report[name] = measure(method, pixels, args.skip_textbook)
        for k, v in report[name].items():
            print(f"{name:>24} {k:>34}: {v}", flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
