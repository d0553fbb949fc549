"""Turn a split part into batches: cached frozen features where the method allows, pixels otherwise."""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch

from conceptclip.data.dataset import Dataset
from conceptclip.data.feature_cache import FeatureCache
from conceptclip.data.images import PixelDataset


def label_tensor(dataset: Dataset, ids: Sequence[str]) -> torch.Tensor:
    if dataset.multilabel:
        y = torch.zeros(len(ids), len(dataset.classnames))
        for r, i in enumerate(ids):
            y[r, list(dataset.by_id(i).labels or ())] = 1.0
        return y
    return torch.tensor([dataset.by_id(i).label for i in ids], dtype=torch.long)


class Part:
    """A split part: `tensors` (features/patches/labels/index, all on one first axis) or a pixel dataset."""

    def __init__(self, ids: Sequence[str], labels: torch.Tensor, tensors: dict[str, torch.Tensor] | None = None,
                 pixels: PixelDataset | None = None, num_workers: int = 0) -> None:
        self.ids = list(ids)
        self.labels = labels
        self.tensors = tensors
        self.pixels = pixels
        self.num_workers = num_workers

    def __len__(self) -> int:
        return len(self.ids)

    def all(self) -> dict[str, torch.Tensor]:
        """The whole part as one batch (cached features only)."""
        if self.tensors is None:
            raise ValueError("this part serves pixels; iterate batches instead")
        return dict(self.tensors)

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
            for s in range(0, stop, batch_size):
                idx = order[s:s + batch_size]
                yield {k: v[idx] for k, v in self.tensors.items()}
            return
        loader = torch.utils.data.DataLoader(self.pixels, batch_size=batch_size, sampler=order.tolist(),
                                             num_workers=self.num_workers)
        for pixels, idx in loader:
            yield {"pixels": pixels, "labels": self.labels[idx], "index": idx}


def build_part(dataset: Dataset, ids: Sequence[str], inputs: frozenset[str], backbone, cache: FeatureCache,
               augment: Callable | None = None, num_workers: int = 0, _all_features: dict | None = None) -> Part:
    labels = label_tensor(dataset, ids)
    index = torch.arange(len(ids))
    if "pixels" in inputs:
        return Part(ids, labels, pixels=PixelDataset(dataset.subset(ids), backbone.preprocess, augment),
                    num_workers=num_workers)
    feats = _all_features or cache.image_features(backbone, dataset, patches="patches" in inputs,
                                                  num_workers=num_workers)
    pos = {s.id: r for r, s in enumerate(dataset.samples)}
    rows = torch.tensor([pos[i] for i in ids], dtype=torch.long)
    tensors = {"features": feats["global"][rows], "labels": labels, "index": index}
    if "patches" in inputs:
        tensors["patches"] = feats["patches"][rows]
    return Part(ids, labels, tensors=tensors)


def build_parts(dataset: Dataset, parts: dict[str, Sequence[str]], inputs: frozenset[str], backbone,
                cache: FeatureCache, augment: Callable | None = None, num_workers: int = 0) -> dict[str, Part]:
    """All parts of a split, encoding the dataset's images at most once (through the cache)."""
    feats = None
    if "pixels" not in inputs:
        feats = cache.image_features(backbone, dataset, patches="patches" in inputs, num_workers=num_workers)
    return {name: build_part(dataset, ids, inputs, backbone, cache, augment if name == "train" else None,
                             num_workers, feats) for name, ids in parts.items()}
