"""Option parsing shared by the commands: KEY=VALUE lists, dataset specs, splits, devices."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from conceptclip.errors import ConfigError


def parse_options(items: list[str] | None, what: str) -> dict[str, Any]:
    """`["n_ctx=8", "ctx_init=a photo of a"]` -> dict, values parsed as JSON where they are JSON."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what} {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def load_dataset_spec(spec: str, root: Optional[str] = None, classes: str | list[str] | None = None):
    from conceptclip.data import load_dataset

    kwargs = {"root": root} if root else {}
    return load_dataset(spec, classes=classes, **kwargs)


CLASSES_HELP = ("class names in index order for a CSV/JSON manifest: NAME,NAME,... or a file with one per line "
                "(default: the manifest's <stem>.classes.txt, else the sorted labels)")


def make_split(dataset, split_file: Optional[Path], shots: int, seed: int, base2novel: bool = False):
    from conceptclip.data import Split, base2novel_split, fewshot_split, holdout_split

    if split_file is not None:
        split = Split.load(split_file, dataset)
        split.check_disjoint()
        return split
    pools = holdout_split(dataset)
    if base2novel:
        return base2novel_split(dataset, pools, shots, seed)
    if shots <= 0:
        return pools
    return fewshot_split(dataset, pools, shots, seed)



def pick_device(device: Optional[str]) -> str:
    """--device: None/'auto' -> cuda when available, else cpu; otherwise cpu, cuda or cuda:N."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"--device {device!r}: expected cpu, cuda or cuda:N")
    return device
