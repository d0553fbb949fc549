"""`conceptclip encode`: embed a dataset once with any backbone and store what `embeddings:DIR` reads.

    out/
      manifest.json                       shards, prompt files, sha256 of every file, provenance
      images-00000-of-00002.npy           (rows, D) image embeddings of one process's shard
      images-00000-of-00002_ids.csv       row,id of that shard (rows belong to ids)
      texts.npy                           (T, D) prompt embeddings (text tower output, not normalised)
      encode.json                         what the shards depend on (a rerun with others is refused)

With `devices` = N > 1 the engine's Fabric launcher starts N processes (forked on CPU, spawned on
CUDA); process r encodes the r-th contiguous slice of the samples and writes shard r, so the shards
are merged by the manifest, never by copying. A rerun skips the finished shards (a shard is finished
when both its files exist: each is written to a temp file and renamed), so a killed encode resumes.
Each shard is written through a memory map, so the image embeddings never have to fit in memory.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from conceptclip.errors import ConfigError

DTYPES = ("float32", "float16")


def shard_names(rank: int, world: int) -> tuple[str, str]:
    stem = f"images-{rank:05d}-of-{world:05d}"
    return f"{stem}.npy", f"{stem}_ids.csv"


def shard_slices(n: int, world: int) -> list[tuple[int, int]]:
    """Contiguous [lo, hi) sample ranges, one per process, sizes differing by at most one."""
    per, extra = divmod(n, world)
    out, lo = [], 0
    for r in range(world):
        hi = lo + per + (1 if r < extra else 0)
        out.append((lo, hi))
        lo = hi
    return out


def _write_ids(path: Path, ids: Sequence[str]) -> None:
    from conceptclip.io import write_text

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["row", "id"])
    w.writerows(enumerate(ids))
    write_text(path, buf.getvalue())


def encode_shard(backbone, samples: Sequence, path: Path, ids_path: Path, *, dtype: str = "float32",
                 batch_size: int = 32, num_workers: int = 0, progress: bool = True, desc: str = "encoding") -> int:
    """Encode `samples` into `path` (written through a memory map to a temp file, then renamed: `io.atomic_write`)
    and their ids into `ids_path` (last: its presence marks the shard finished). Returns the number of rows."""
    from conceptclip.data.images import PixelDataset
    from conceptclip.io import atomic_write
    from conceptclip.progress import progress as bar

    def write(tmp: Path) -> None:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(len(samples), backbone.embed_dim))
        loader = torch.utils.data.DataLoader(PixelDataset(list(samples), backbone.preprocess), batch_size=batch_size,
                                             num_workers=num_workers)
        row = 0
        with torch.no_grad():
            for pixels, _ in bar(loader, enabled=progress, desc=desc, unit="batch", leave=False):
                f = backbone.encode_image(pixels.to(backbone.device)).global_.float().cpu().numpy()
                out[row:row + len(f)] = f
                row += len(f)
        out.flush()
        del out

    atomic_write(path, write)  # temp file in the same folder, fsync, rename
    _write_ids(ids_path, [s.id for s in samples])
    return len(samples)


def _shard_done(out: Path, rank: int, world: int) -> bool:
    f, i = shard_names(rank, world)
    return (out / f).is_file() and (out / i).is_file()


def _encode_in_process(fabric, backbone_or_spec, samples: Sequence, out: Path, world: int, dtype: str, batch_size: int,
                       num_workers: int, progress: bool) -> int:
    """One launched process: encode shard `global_rank` unless it is finished."""
    rank = fabric.global_rank
    lo, hi = shard_slices(len(samples), world)[rank]
    if not _shard_done(out, rank, world):
        backbone = backbone_or_spec
        if isinstance(backbone, str):
            from conceptclip.backbones import create_backbone

            backbone = create_backbone(backbone, device=str(fabric.device))
        else:
            backbone.to(fabric.device)
        f, i = shard_names(rank, world)
        encode_shard(backbone, samples[lo:hi], out / f, out / i, dtype=dtype, batch_size=batch_size,
                     num_workers=num_workers, progress=progress and rank == 0,
                     desc=f"encoding shard {rank + 1}/{world}")
    fabric.barrier()
    return hi - lo


def _text_groups(dataset, bank: str | None) -> list[tuple[str, list[str]]]:
    """(kind, prompts) groups: each class prompt on its own (as methods encode them), then a bank's prompts
    per class and, for a concept bank, its raw concept phrases."""
    groups = [("class", [dataset.template.format(c.replace("_", " "))]) for c in dataset.classnames]
    if bank:
        from conceptclip.prompts.ensembles import bank_prompts, load_bank_any

        b = load_bank_any(bank)
        for c, prompts in bank_prompts(b).items():
            groups.append((f"bank:{c}", list(prompts)))
        if b.kind != "prompts":
            for c in b.classes:
                groups.append((f"concepts:{c}", list(b.phrases(c))))
    return groups


def encode_dataset(backbone, dataset, out: str | Path, *, spec: str | None = None, devices: int = 1,
                   accelerator: str = "auto", dtype: str = "float32", batch_size: int = 32, num_workers: int = 0,
                   bank: str | None = None, texts: bool = True, overwrite: bool = False, progress: bool = True,
                   log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Encode every image of `dataset` (and the class prompts, plus a bank's prompts) into `out`; return the
    manifest. `backbone` is a Backbone (or a spec, built here); `spec` re-creates it in spawned processes."""
    import shutil

    from conceptclip.backbones import create_backbone
    from conceptclip.backbones.embeddings import write_manifest
    from conceptclip.engine.config import TrainConfig
    from conceptclip.engine.trainer import make_fabric
    from conceptclip.io import write_json

    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: expected one of {DTYPES}")
    if devices < 1:
        raise ConfigError(f"--devices {devices}: expected a positive number of processes")
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: expected a positive integer")
    if len(dataset) == 0:
        raise ConfigError(f"dataset {dataset.name!r} has no samples to encode")
    if isinstance(backbone, str):
        spec, backbone = backbone, create_backbone(backbone)
    spec = spec or backbone.name
    if getattr(backbone, "stored_image_features", None) is not None:
        raise ConfigError(f"backbone {spec!r} already serves stored embeddings; encode with the backbone they came from")
    world = min(devices, len(dataset))
    out = Path(out)
    state = {"backbone": spec, "weights_id": backbone.weights_id(), "dataset": dataset.name,
             "dataset_fingerprint": dataset.fingerprint(), "n": len(dataset), "processes": world, "dtype": dtype,
             "bank": bank, "texts": texts}
    state_file = out / "encode.json"
    if out.exists() and any(out.iterdir()):
        if overwrite:
            shutil.rmtree(out)
        elif not state_file.is_file():
            raise ConfigError(f"{out}: folder exists and holds no encode; use another -o or --overwrite")
        else:
            old = json.loads(state_file.read_text(encoding="utf-8"))
            diff = sorted(k for k in state if old.get(k) != state[k])
            if diff:
                raise ConfigError(f"{out}: holds an encode made with other settings ({', '.join(diff)} differ); "
                                  "use another -o or --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    write_json(state_file, state)

    samples = list(dataset.samples)
    todo = [r for r in range(world) if not _shard_done(out, r, world)]
    if todo:
        log(f"encoding {len(samples)} images of {dataset.name!r} with {spec} in {world} process(es), "
            f"{len(todo)} shard(s) to write")
    if todo and world > 1:
        fabric = make_fabric(TrainConfig(devices=world, accelerator=accelerator, progress=False))
        # CPU processes are forked and inherit the backbone; CUDA ones are spawned and build it from its spec
        forked = not (accelerator == "cuda" or (accelerator == "auto" and torch.cuda.is_available()))
        fabric.launch(_encode_in_process, backbone if forked else spec, samples, out, world, dtype, batch_size,
                      num_workers, progress)
    elif todo:
        f, i = shard_names(0, 1)
        device = "cuda" if accelerator == "cuda" or (accelerator == "auto" and torch.cuda.is_available()) else "cpu"
        backbone.to(device)
        encode_shard(backbone, samples, out / f, out / i, dtype=dtype, batch_size=batch_size,
                     num_workers=num_workers, progress=progress, desc=f"encoding {dataset.name}")
    missing = [r for r in range(world) if not _shard_done(out, r, world)]
    if missing:
        raise ConfigError(f"{out}: shard(s) {missing} were not written; rerun the same command to resume")

    text_files = []
    if texts:
        from conceptclip.io import atomic_write

        groups = _text_groups(dataset, bank)
        prompts = [p for _, g in groups for p in g]
        tfile = out / "texts.npy"
        prompts_file = out / "texts.json"
        done = tfile.is_file() and prompts_file.is_file() and \
            json.loads(prompts_file.read_text(encoding="utf-8")) == prompts
        if not done:
            with torch.no_grad():
                feats = [backbone.encode_texts(g).float().cpu() for _, g in groups]
            arr = torch.cat(feats).numpy().astype(np.float32)
            # unique prompts only (the same text from two groups is one row)
            keep = list(dict.fromkeys(prompts))
            rows = {p: arr[prompts.index(p)] for p in keep}
            table = np.stack([rows[k] for k in keep])

            def save(p: Path) -> None:
                with open(p, "wb") as fh:
                    np.save(fh, table)

            atomic_write(tfile, save)
            write_json(prompts_file, keep)
        text_files.append((tfile, json.loads(prompts_file.read_text(encoding="utf-8"))))

    images = [tuple(out / n for n in shard_names(r, world)) for r in range(world)]
    preprocessing = (type(backbone).preprocess.__doc__ or "").strip().splitlines()[0] if type(backbone).preprocess.__doc__ else ""
    source = {"backbone": spec, "weights_id": state["weights_id"],
              "preprocessing": f"{type(backbone).__name__}.preprocess, {backbone.image_size} px: {preprocessing}",
              "dataset": dataset.name, "dataset_fingerprint": state["dataset_fingerprint"], "n_images": len(samples),
              "template": dataset.template, "classnames": list(dataset.classnames), "dtype": dtype,
              "processes": world, "bank": bank, "normalized": False}
    path = write_manifest(out / "manifest.json", images, text_files, embed_dim=backbone.embed_dim,
                          logit_scale=float(backbone.logit_scale), source=source)
    return json.loads(path.read_text(encoding="utf-8"))
