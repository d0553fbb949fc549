"""Profiles of the steps that remain slow once image features are cached (torch.profiler, CPU).

  coop step     one CoOp training step at batch 32 on cached `lite` features: the text tower runs
                forward and backward over the C class prompts (the image side is a lookup);
  deal step     one DEAL step at batch 32 on cached patch tokens: category + concept prompts through
                the text tower, Grad-CAM maps with create_graph, double backward;
  explain       Grad-CAM of 4 images x 3 classes: the frozen image tower's forward.

For each: mean wall time per step over `--steps` runs and the operators with the most self CPU time.
`--trace DIR` also writes Chrome traces (open in chrome://tracing or Perfetto).

    python benchmarks/profile_steps.py [--steps 5] [--top 8] [--trace runs/profiles]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch.profiler import ProfilerActivity, profile

CLASSES = ["common nevus", "atypical nevus", "melanoma"]
CONCEPTS = {"common nevus": ["typical pigment network", "regular dots and globules", "light-brown colour"],
            "atypical nevus": ["atypical pigment network", "irregular dots and globules", "dark-brown colour"],
            "melanoma": ["asymmetry", "blue-whitish veil", "streaks"]}


def batch_for(backbone, n: int, patches: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(n, 3, backbone.image_size, backbone.image_size, generator=g)
    with torch.no_grad():
        f = backbone.encode_image(pixels, patches=patches)
    batch = {"features": f.global_, "labels": torch.arange(n) % 3, "index": torch.arange(n)}
    if patches:
        batch["patches"] = f.patches
        batch["grid"] = torch.tensor([list(f.grid)] * n)
    return batch


def train_step(method, batch):
    params = method.trainable_parameters()
    opt = torch.optim.SGD(params, lr=0.002, momentum=0.9)

    def step():
        loss = method.loss(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def run_profile(name: str, step, steps: int, top: int, trace: Path | None) -> None:
    step()  # warm-up
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        for _ in range(steps):
            step()
    per_step = (time.perf_counter() - t0) / steps
    print(f"\n== {name}: {per_step * 1000:.1f} ms per step (profiled, {steps} steps)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top,
                                    max_name_column_width=40))
    if trace is not None:
        trace.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace / f"{name.replace(' ', '_')}.json"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--trace", type=Path, default=None)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    from conceptclip.backbones.lite import LiteBackbone
    from conceptclip.explain import explain_method
    from conceptclip.methods import create_method

    backbone = LiteBackbone().freeze()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    coop = create_method("coop", backbone, CLASSES).train()
    run_profile("coop step", train_step(coop, batch_for(backbone, 32, False)), args.steps, args.top, args.trace)
    deal = create_method("deal", backbone, CLASSES, {"concepts": CONCEPTS}).train()
    run_profile("deal step", train_step(deal, batch_for(backbone, 32, True)), args.steps, args.top, args.trace)
    zs = create_method("zeroshot", backbone, CLASSES).eval()
    pixels = torch.randn(4, 3, backbone.image_size, backbone.image_size, generator=torch.Generator().manual_seed(1))
    run_profile("explain", lambda: explain_method(zs, pixels), args.steps, args.top, args.trace)


if __name__ == "__main__":
    main()
