"""Turn a split part into batches: cached frozen features where the method allows, pixels otherwise."""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch

from conceptclip.data.dataset import Dataset
from conceptclip.data.feature_cache import FeatureCache
from conceptclip.data.images import PixelDataset
from conceptclip.errors import DataError


def label_tensor(dataset: Dataset, ids: Sequence[str]) -> torch.Tensor:
    if dataset.multilabel:
        y = torch.zeros(len(ids), len(dataset.classnames))
        for r, i in enumerate(ids):
            y[r, list(dataset.by_id(i).labels or ())] = 1.0
        return y
    return torch.tensor([dataset.by_id(i).label for i in ids], dtype=torch.long)


def sample_rows(dataset: Dataset, ids: Sequence[str]) -> torch.Tensor:
    """(N,) long: the row of each id in `dataset.samples` (the batches' "sample" key)."""
    pos = {s.id: r for r, s in enumerate(dataset.samples)}
    missing = [i for i in ids if i not in pos]
    if missing:
        raise DataError(f"dataset {dataset.name!r} has no sample with id(s) {missing[:5]}")
    return torch.tensor([pos[i] for i in ids], dtype=torch.long)


class Part:
    """A split part: `tensors` (features/patches/labels/index/sample, all on one first axis) or a pixel dataset.

    Batch keys besides the inputs: "labels"; "index" (B,) the position within the part; "sample" (B,)
    long, the row of each image in `dataset.samples` (parts built by `build_part`; pixel parts get it
    from `rows`), so a method constructed with `dataset=` can look up per-image annotations (ECOR's
    rationale truth).

    A train part with augmented views holds "views" (N, V, D); shuffled batches (training) then take
    each sample's features from one of its views, drawn per epoch; unshuffled ones the plain features."""

    def __init__(self, ids: Sequence[str], labels: torch.Tensor, tensors: dict[str, torch.Tensor] | None = None,
                 pixels: PixelDataset | None = None, num_workers: int = 0, rows: torch.Tensor | None = None) -> None:
        self.ids = list(ids)
        self.labels = labels
        self.tensors = tensors
        self.pixels = pixels
        self.num_workers = num_workers
        self.rows = rows

    def __len__(self) -> int:
        return len(self.ids)

    def all(self) -> dict[str, torch.Tensor]:
        """The whole part as one batch (cached features only)."""
        if self.tensors is None:
            raise ValueError("this part serves pixels; iterate batches instead")
        return {k: v for k, v in self.tensors.items() if k != "views"}

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                rank: int = 0, world: int = 1, drop_last: bool = False) -> Iterator[dict[str, torch.Tensor]]:
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        if world > 1:  # equal shards (pad by wrapping) so every process takes the same number of steps
            per = -(-n // world)
            order = torch.cat([order, order[: per * world - n]])[rank::world]
        stop = len(order) - (len(order) % batch_size if drop_last and len(order) > batch_size else 0)
        order = order[:stop]
        if self.tensors is not None:
            views = self.tensors.get("views")
            # one augmented view per sample and epoch, drawn after the order (same generator, so reproducible)
            pick = torch.randint(views.shape[1], (n,), generator=generator) if views is not None and shuffle else None
            for s in range(0, stop, batch_size):
                idx = order[s:s + batch_size]
                batch = {k: v[idx] for k, v in self.tensors.items() if k != "views"}
                if pick is not None:
                    batch["features"] = views[idx, pick[idx]]
                yield batch
            return
        loader = torch.utils.data.DataLoader(self.pixels, batch_size=batch_size, sampler=order.tolist(),
                                             num_workers=self.num_workers)
        for pixels, idx in loader:
            batch = {"pixels": pixels, "labels": self.labels[idx], "index": idx}
            if self.rows is not None:
                batch["sample"] = self.rows[idx]
            yield batch


def build_part(dataset: Dataset, ids: Sequence[str], inputs: frozenset[str], backbone, cache: FeatureCache,
               augment: Callable | None = None, num_workers: int = 0, _all_features: dict | None = None,
               views: int = 0, view_seed: int = 0) -> Part:
    labels = label_tensor(dataset, ids)
    index = torch.arange(len(ids))
    rows = sample_rows(dataset, ids)
    if "pixels" in inputs:
        return Part(ids, labels, pixels=PixelDataset(dataset.subset(ids), backbone.preprocess, augment),
                    num_workers=num_workers, rows=rows)
    feats = _all_features or cache.image_features(backbone, dataset, patches="patches" in inputs,
                                                  num_workers=num_workers, views=views, view_seed=view_seed)
    tensors = {"features": feats["global"][rows], "labels": labels, "index": index, "sample": rows}
    if "patches" in inputs:
        tensors["patches"] = feats["patches"][rows]
    if views:
        tensors["views"] = feats["views"][rows]
    return Part(ids, labels, tensors=tensors)


def build_parts(dataset: Dataset, parts: dict[str, Sequence[str]], inputs: frozenset[str], backbone,
                cache: FeatureCache, augment: Callable | None = None, num_workers: int = 0,
                views: int = 0, view_seed: int = 0) -> dict[str, Part]:
    """All parts of a split, encoding the dataset's images at most once (through the cache).

    `views` > 0 caches that many augmented views of every image (global features only) and trains on
    them; methods reading pixels augment on the fly with `augment` instead, and methods reading patch
    tokens train on the plain features (caching patch tokens of every view would cost V times the memory)."""
    feats = None
    views = views if "pixels" not in inputs and "patches" not in inputs else 0
    if "pixels" not in inputs:
        feats = cache.image_features(backbone, dataset, patches="patches" in inputs, num_workers=num_workers,
                                     views=views, view_seed=view_seed)
    return {name: build_part(dataset, ids, inputs, backbone, cache, augment if name == "train" else None,
                             num_workers, feats, views if name == "train" else 0, view_seed)
            for name, ids in parts.items()}
