"""Scale of the `embeddings:DIR` path: 1,000,000 x 512 float16 synthetic image embeddings (~1 GB, four
.npy shards), 1,000 classes. Zero-shot evaluation and a Tip-Adapter cache lookup stream the whole store
through the methods' own `logits`, one memory-mapped window at a time; a plain numpy matmul over the
same memory-mapped arrays is the baseline. Each measurement runs in its own process, so its peak RSS
(ru_maxrss) is its own.

    python benchmarks/bench_embeddings_scale.py --dir /tmp/emb_scale [--rows 1000000] [--repeats 2]

Prints, for zero-shot and Tip-Adapter: seconds and rows/s of ours, of numpy, and of the numpy
baseline's arithmetic written in torch (which separates torch's BLAS from numpy's), the throughput
ratio ours / numpy (>= 0.8 wanted) and the peak RSS (VmHWM) of each process (< 1.5 GB wanted for
ours), plus the accuracy every path reaches (they must agree). Threads: 1 for torch and BLAS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402

DIM, CLASSES, SHARDS, BLOCK = 512, 1000, 4, 16384
NOISE = 6.0  # noise norm vs unit class signal: accuracies well away from 0 and 1


def _peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM): ru_maxrss would also count the RSS of the parent it was
    forked from (Linux folds the pre-exec high-water mark into it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def generate(out: Path, rows: int, seed: int = 0) -> None:
    """Shards written chunk by chunk through memory maps; class k's prompt embedding is its centre."""
    from conceptclip.backbones.embeddings import write_manifest

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLASSES, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    images = []
    bounds = np.linspace(0, rows, SHARDS + 1).astype(int)
    for s in range(SHARDS):
        lo, hi = int(bounds[s]), int(bounds[s + 1])
        f = out / f"images-{s:05d}-of-{SHARDS:05d}.npy"
        mm = np.lib.format.open_memmap(f, mode="w+", dtype=np.float16, shape=(hi - lo, DIM))
        for a in range(0, hi - lo, 65536):
            b = min(a + 65536, hi - lo)
            labels = (np.arange(lo + a, lo + b)) % CLASSES
            x = centres[labels] + NOISE * rng.standard_normal((b - a, DIM)).astype(np.float32) / np.sqrt(DIM)
            mm[a:b] = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
        mm.flush()
        del mm
        ids = out / f"images-{s:05d}-of-{SHARDS:05d}_ids.csv"
        with open(ids, "w", encoding="utf-8") as fh:
            fh.write("row,id\n")
            fh.writelines(f"{r},s{lo + r:07d}\n" for r in range(hi - lo))
        images.append((f, ids))
    np.save(out / "classes.npy", centres)
    write_manifest(out / "manifest.json", images, [(out / "classes.npy", [f"class {k}" for k in range(CLASSES)])],
                   embed_dim=DIM, hashes=False, source={"synthetic": True, "rows": rows, "classes": CLASSES})


def _labels(start: int, n: int) -> np.ndarray:
    return np.arange(start, start + n) % CLASSES


def _cache_rows(rows: int) -> np.ndarray:
    """The Tip-Adapter cache: the first image of every class (1 shot x 1000 classes)."""
    return np.arange(CLASSES)


def phase_ours(store: Path, method: str) -> dict:
    import torch

    torch.set_num_threads(1)
    from conceptclip.backbones import create_backbone
    from conceptclip.methods import create_method

    bb = create_backbone(f"embeddings:{store}")
    names = [f"class {k}" for k in range(CLASSES)]
    m = create_method(method, bb, names, {"search": False, "init_alpha": 1.0, "init_beta": 5.5} if method == "tip_adapter"
                      else None, template="{}")
    if method == "tip_adapter":
        ids = [bb.store.ids[r] for r in _cache_rows(len(bb.store))]  # cache keys joined by id, as in a run
        keys = bb.stored_image_features(ids)
        m.fit_closed_form({"features": keys, "labels": torch.from_numpy(_labels(0, CLASSES))}, {})
    t0 = time.perf_counter()
    correct = n = 0
    with torch.no_grad():
        for start, block in bb.store.blocks(BLOCK):
            pred = m.logits({"features": torch.from_numpy(block)}).argmax(1).numpy()
            correct += int((pred == _labels(start, len(block))).sum())
            n += len(block)
    secs = time.perf_counter() - t0
    return {"seconds": secs, "rows": n, "accuracy": correct / n, "peak_rss_mb": _peak_rss_mb()}


def phase_torch(store: Path, method: str) -> dict:
    """The baseline's arithmetic in torch (no backbone, no method): separates the BLAS library (torch's MKL
    vs numpy's OpenBLAS) from what the embeddings path adds."""
    import torch

    torch.set_num_threads(1)
    doc = json.loads((store / "manifest.json").read_text())
    text = torch.from_numpy(np.load(store / "classes.npy"))
    text = text / text.norm(dim=1, keepdim=True)
    arrays = [np.load(store / e["file"], mmap_mode="r") for e in doc["images"]]
    if method == "tip_adapter":
        keys = torch.from_numpy(np.asarray(arrays[0][_cache_rows(0)], dtype=np.float32))
        keys = keys / keys.norm(dim=1, keepdim=True)
        values = torch.eye(CLASSES)[torch.from_numpy(_labels(0, CLASSES))]
    t0 = time.perf_counter()
    correct = n = start = 0
    with torch.no_grad():
        for arr in arrays:
            for a in range(0, arr.shape[0], BLOCK):
                x = torch.from_numpy(np.asarray(arr[a:a + BLOCK], dtype=np.float32))
                logits = 100.0 * (x @ text.T)
                if method == "tip_adapter":
                    logits += 1.0 * torch.exp(-5.5 * (1.0 - x @ keys.T)) @ values
                correct += int((logits.argmax(1).numpy() == _labels(start, len(x))).sum())
                n += len(x)
                start += len(x)
    secs = time.perf_counter() - t0
    return {"seconds": secs, "rows": n, "accuracy": correct / n, "peak_rss_mb": _peak_rss_mb()}


def phase_numpy(store: Path, method: str) -> dict:
    """The baseline: np.load(mmap_mode='r') per shard, float32 blocks, one matmul (+ the cache terms)."""
    doc = json.loads((store / "manifest.json").read_text())
    text = np.load(store / "classes.npy")
    text = text / np.linalg.norm(text, axis=1, keepdims=True)
    arrays = [np.load(store / e["file"], mmap_mode="r") for e in doc["images"]]
    if method == "tip_adapter":
        keys = np.asarray(arrays[0][_cache_rows(0)], dtype=np.float32)
        keys /= np.linalg.norm(keys, axis=1, keepdims=True)
        values = np.eye(CLASSES, dtype=np.float32)[_labels(0, CLASSES)]
    t0 = time.perf_counter()
    correct = n = start = 0
    for arr in arrays:
        for a in range(0, arr.shape[0], BLOCK):
            x = np.asarray(arr[a:a + BLOCK], dtype=np.float32)
            logits = 100.0 * (x @ text.T)
            if method == "tip_adapter":
                logits += 1.0 * np.exp(-5.5 * (1.0 - x @ keys.T)) @ values
            correct += int((logits.argmax(1) == _labels(start, len(x))).sum())
            n += len(x)
            start += len(x)
    secs = time.perf_counter() - t0
    return {"seconds": secs, "rows": n, "accuracy": correct / n, "peak_rss_mb": _peak_rss_mb()}


def _child(phase: str, store: Path, method: str) -> dict:
    r = subprocess.run([sys.executable, __file__, "--dir", str(store), "--phase", phase, "--method", method],
                       capture_output=True, text=True, env=os.environ.copy())
    if r.returncode:
        raise SystemExit(f"{phase} {method} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/conceptclip_emb_scale"))
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--phase", choices=("ours", "numpy", "torch"), default=None)
    ap.add_argument("--methods", nargs="+", default=["zeroshot", "tip_adapter"], choices=("zeroshot", "tip_adapter"))
    ap.add_argument("--method", choices=("zeroshot", "tip_adapter"), default="zeroshot")
    args = ap.parse_args()
    if args.phase:
        fn = {"ours": phase_ours, "numpy": phase_numpy, "torch": phase_torch}[args.phase]
        print(json.dumps(fn(args.dir, args.method)))
        return
    if not (args.dir / "manifest.json").is_file():
        t0 = time.perf_counter()
        generate(args.dir, args.rows)
        print(f"generated {args.rows} x {DIM} float16 in {SHARDS} shards in {time.perf_counter() - t0:.0f} s "
              f"({sum(f.stat().st_size for f in args.dir.glob('*.npy')) / 1e9:.2f} GB)", flush=True)
    for f in sorted(args.dir.glob("images-*.npy")):  # warm the page cache once for both paths
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass
    print("| method | path | seconds (best of %d) | rows/s | peak RSS (MB) | accuracy |" % args.repeats)
    print("|---|---|---|---|---|---|")
    names = {"numpy": "plain numpy matmul (np.load mmap)", "torch": "the same arithmetic in torch (no backbone)",
             "ours": "embeddings backbone + method.logits"}
    for method in args.methods:
        best: dict[str, dict] = {}
        for _ in range(args.repeats):  # interleaved, so machine load hits every path alike
            for phase in ("numpy", "torch", "ours"):
                r = _child(phase, args.dir, method)
                if phase not in best or r["seconds"] < best[phase]["seconds"]:
                    best[phase] = {**r, "peak_rss_mb": max(r["peak_rss_mb"], best.get(phase, {}).get("peak_rss_mb", 0))}
        for phase in ("numpy", "torch", "ours"):
            r = best[phase]
            print(f"| {method} | {names[phase]} | {r['seconds']:.1f} | {r['rows'] / r['seconds']:,.0f} | "
                  f"{r['peak_rss_mb']:.0f} | {r['accuracy']:.4f} |")
        print(f"| {method} | throughput ratio ours / numpy | {best['numpy']['seconds'] / best['ours']['seconds']:.2f} "
              f"| (torch / numpy {best['numpy']['seconds'] / best['torch']['seconds']:.2f}; ours / torch "
              f"{best['torch']['seconds'] / best['ours']['seconds']:.2f}) | | |", flush=True)


if __name__ == "__main__":
    main()
