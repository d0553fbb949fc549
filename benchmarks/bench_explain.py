"""Batched Grad-CAM vs per-image loops on the `lite` backbone, side by side.

Explains the 3 PH2 class logits of a zero-shot method on N images (the first N PH2 images when
../shared/data is present, else seeded random pixels) three ways:

  batched      one `explain_method` call: one forward of all N images, one vectorised backward
               for the 3 targets;
  per-image    a loop over images, each explained on its own (targets still batched);
  textbook     a loop over images and targets: forward, `.backward()` through a tensor hook,
               Grad-CAM weights, as a straightforward per-image implementation does.

Prints the three times, the speed-ups and the largest absolute difference between the maps.

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
    from conceptclip.explain import explain_method
    from conceptclip.methods import create_method

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = LiteBackbone(heads=args.heads).freeze()
    method = create_method("zeroshot", backbone, PH2_CLASSES, template=PH2_TEMPLATE).eval()
    pixels, source = load_pixels(backbone, args.n)
    n_t = len(PH2_CLASSES)
    explain_method(method, pixels[:2])  # warm-up (allocator, vmap)

    t0 = time.perf_counter()
    batched = explain_method(method, pixels).maps
    t_batched = time.perf_counter() - t0

    t0 = time.perf_counter()
    per_image = torch.cat([explain_method(method, pixels[i:i + 1]).maps for i in range(pixels.shape[0])])
    t_loop = time.perf_counter() - t0

    report = {"images": source, "targets": n_t, "threads": torch.get_num_threads(),
              "batched_s": round(t_batched, 3), "per_image_loop_s": round(t_loop, 3),
              "speedup_vs_per_image_loop": round(t_loop / t_batched, 2),
              "max_abs_diff_vs_per_image_loop": float((batched - per_image).abs().max()),
              "map_max": float(batched.max())}
    if not args.skip_textbook:
        t0 = time.perf_counter()
        textbook = textbook_gradcam(method, pixels, n_t)
        t_text = time.perf_counter() - t0
        report.update({"textbook_per_image_per_target_s": round(t_text, 3),
                       "speedup_vs_textbook": round(t_text / t_batched, 2),
                       "max_abs_diff_vs_textbook": float((batched - textbook).abs().max())})
    for k, v in report.items():
        print(f"{k:>34}: {v}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
