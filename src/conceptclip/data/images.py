"""Reading images safely and a torch Dataset of preprocessed pixels (with optional augmentation)."""

from __future__ import annotations

import hashlib
import random
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image, UnidentifiedImageError

from conceptclip.data.dataset import Sample
from conceptclip.errors import DataError

MAX_PIXELS = 64_000_000  # decompression-bomb guard: refuse images larger than this many pixels


def load_image(path: str | Path) -> Image.Image:
    """Open, fully decode and convert to RGB; any failure is a one-line DataError naming the file."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise DataError(f"{path}: image of {im.width}x{im.height} pixels exceeds the limit of {MAX_PIXELS}")
                im.load()
                return im.convert("RGB")
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise DataError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None


class PixelDataset(torch.utils.data.Dataset):
    """Samples -> (pixels, index) with the backbone's preprocessing and an optional PIL augmentation:
    `augment(image)`, or `keyed_augment(image, sample_id)` for augmentations drawn per sample (the
    same view of an image whatever the worker or batch order)."""

    def __init__(self, samples: Sequence[Sample], preprocess: Callable, augment: Callable | None = None,
                 keyed_augment: Callable | None = None) -> None:
        self.samples = list(samples)
        self.preprocess = preprocess
        self.augment = augment
        self.keyed_augment = keyed_augment

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        im = load_image(self.samples[i].path)
        if self.augment is not None:
            im = self.augment(im)
        if self.keyed_augment is not None:
            im = self.keyed_augment(im, self.samples[i].id)
        return self.preprocess([im])[0], i


def random_resized_flip(rng: "random.Random", scale: tuple[float, float] = (0.5, 1.0)) -> Callable:
    """CoOp-style augmentation without torchvision: random resized crop + horizontal flip (PIL),
    drawn from `rng` so a cached augmented view is reproducible."""

    def aug(im: Image.Image) -> Image.Image:
        w, h = im.size
        s = rng.uniform(*scale)
        cw, ch = max(1, int(w * s ** 0.5)), max(1, int(h * s ** 0.5))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        im = im.crop((x, y, x + cw, y + ch))
        return im.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else im

    return aug


def view_augment(seed: int, view: int, scale: tuple[float, float] = (0.5, 1.0)) -> Callable:
    """`aug(image, sample_id)`: augmented view number `view` of a sample (random resized crop + flip),
    drawn from an RNG seeded by (seed, view, sample id), so a cached view is the same in every run,
    worker and batch order."""

    def aug(im: Image.Image, sample_id: str) -> Image.Image:
        key = hashlib.sha256(f"{seed}/{view}/{sample_id}".encode()).digest()
        return random_resized_flip(random.Random(int.from_bytes(key[:8], "little")), scale)(im)

    return aug
