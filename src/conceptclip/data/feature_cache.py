"""On-disk cache of frozen-encoder image features.

Prompt learning on a frozen image tower needs each image encoded once, not once per epoch. The
cache key is the backbone's `weights_id()` (weights + preprocessing), the dataset fingerprint
(ids, file sizes and mtimes) and what was computed; one safetensors file per key, written
atomically under a file lock so parallel runs never read or write half a file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

import torch
from filelock import FileLock

from conceptclip.data.dataset import Dataset, Sample
from conceptclip.data.images import PixelDataset, view_augment
from conceptclip.errors import CheckpointError, ConfigError, MissingTowerError
from conceptclip.io import load_tensors, save_tensors
from conceptclip.paths import cache_dir
from conceptclip.progress import progress


class FeatureCache:
    """`FeatureCache(root).image_features(backbone, dataset, patches=...)` -> {"ids", "global", "patches"?}."""

    def __init__(self, root: str | Path | None = None, enabled: bool = True) -> None:
        self.root = Path(root) if root else cache_dir() / "features"
        self.enabled = enabled
        self.hits = 0
        self.misses = 0

    def path_for(self, *key_parts: object) -> Path:
        key = hashlib.sha256(json.dumps([str(k) for k in key_parts]).encode()).hexdigest()[:24]
        return self.root / f"{key}.safetensors"

    def get_or_compute(self, key_parts: Sequence[object], samples: Sequence[Sample],
                       encode: Callable[[torch.Tensor], dict[str, torch.Tensor]], preprocess: Callable,
                       batch_size: int = 32, desc: str = "encoding images", device: torch.device | str = "cpu",
                       num_workers: int = 0, keyed_augment: Callable | None = None) -> dict[str, torch.Tensor]:
        """Tensors from `encode(pixels)` for every sample, in `samples` order, from cache when present."""
        path = self.path_for(*key_parts, *(s.id for s in samples))
        if self.enabled:
            self.root.mkdir(parents=True, exist_ok=True)
            with FileLock(str(path) + ".lock"):
                if path.exists():
                    try:
                        out = load_tensors(path)
                    except CheckpointError:
                        out = None
                    # a corrupt entry, or a valid file of another size (e.g. copied over), is recomputed, never trusted
                    if out and all(v.ndim >= 1 and v.shape[0] == len(samples) for v in out.values()):
                        self.hits += 1
                        return out
                    path.unlink(missing_ok=True)
                out = self._compute(samples, encode, preprocess, batch_size, desc, device, num_workers, keyed_augment)
                save_tensors(path, out)
                self.misses += 1
                return out
        self.misses += 1
        return self._compute(samples, encode, preprocess, batch_size, desc, device, num_workers, keyed_augment)

    @staticmethod
    def _compute(samples, encode, preprocess, batch_size, desc, device, num_workers,
                 keyed_augment=None) -> dict[str, torch.Tensor]:
        loader = torch.utils.data.DataLoader(PixelDataset(samples, preprocess, keyed_augment=keyed_augment),
                                             batch_size=batch_size, num_workers=num_workers)
        chunks: dict[str, list[torch.Tensor]] = {}
        with torch.no_grad():
            for pixels, _ in progress(loader, desc=desc, unit="batch", leave=False):
                for k, v in encode(pixels.to(device)).items():
                    chunks.setdefault(k, []).append(v.float().cpu())
        return {k: torch.cat(v) for k, v in chunks.items()}

    def image_features(self, backbone, dataset: Dataset, *, patches: bool = False, batch_size: int = 32,
                       num_workers: int = 0, views: int = 0, view_seed: int = 0) -> dict[str, torch.Tensor]:
        """Projected global features (N, D) and, with `patches`, patch tokens (N, P, D) of every sample;
        with `views` = V > 0 also "views" (N, V, D): the global features of V augmented views of every
        image (random resized crop + flip, `view_augment(view_seed, v)`), each view cached on its own,
        so training with augmentation reads features instead of re-encoding pixels every step."""
        if views < 0:
            raise ConfigError(f"views={views!r}: expected a non-negative number of augmented views")
        stored = getattr(backbone, "stored_image_features", None)
        if stored is not None:  # a backbone serving stored embeddings: joined by id, nothing to encode or cache
            if patches or views:
                raise MissingTowerError(f"{backbone.name} serves stored global embeddings only: no "
                                        f"{'patch tokens' if patches else 'augmented views'} (those need an image tower)")
            return {"global": stored([s.id for s in dataset.samples], dataset.name)}

        def encode(pixels: torch.Tensor) -> dict[str, torch.Tensor]:
            f = backbone.encode_image(pixels, patches=patches)
            out = {"global": f.global_}
            if patches:
                out["patches"] = f.patches
                out["grid"] = torch.tensor([list(f.grid)] * pixels.shape[0])
            return out

        out = self.get_or_compute(("image", backbone.weights_id(), dataset.fingerprint(), patches),
                                  dataset.samples, encode, backbone.preprocess, batch_size,
                                  desc=f"encoding {dataset.name}", device=backbone.device, num_workers=num_workers)
        if views:

            def encode_global(pixels: torch.Tensor) -> dict[str, torch.Tensor]:
                return {"global": backbone.encode_image(pixels).global_}

            out = dict(out)
            out["views"] = torch.stack([self.get_or_compute(
                ("image-view", backbone.weights_id(), dataset.fingerprint(), view_seed, v), dataset.samples,
                encode_global, backbone.preprocess, batch_size, desc=f"encoding {dataset.name} view {v + 1}/{views}",
                device=backbone.device, num_workers=num_workers, keyed_augment=view_augment(view_seed, v))["global"]
                for v in range(views)], dim=1)
        return out
