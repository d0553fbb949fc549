"""Option parsing shared by the commands (train, bench, rctpl, ...): KEY=VALUE lists, per-method
options, the training options with the device, dataset specs, splits, devices, optional extras, and
the typer Options several commands declare alike.

Only the standard library, typer and `conceptclip.errors` are imported here: `conceptclip --help`
must not import torch (tests/foundation/test_cli_startup.py).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import typer

from conceptclip.errors import ConfigError

# -- KEY=VALUE lists -----------------------------------------------------------------------------


def _value(text: str) -> Any:
    """A value of KEY=VALUE: JSON where it is JSON (numbers, true/false, null, lists, objects), else the text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_options(items: list[str] | None, what: str, example: str | None = None) -> dict[str, Any]:
    """`["n_ctx=8", "ctx_init=a photo of a"]` -> dict, values parsed as JSON where they are JSON.
    `what` names the option in the error (`--set`), `example` ends it (`, e.g. epochs=20`)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what} {item!r}: expected KEY=VALUE" + (f", e.g. {example}" if example else ""))
        out[key.strip()] = _value(value)
    return out


def parse_method_options(items: list[str] | None, what: str = "--set") -> dict[str, dict[str, Any]]:
    """["biomedcoop.lambda_sccm=10", ...] -> {"biomedcoop": {"lambda_sccm": 10}} (values parsed as JSON):
    options of several methods in one list (`bench --set`)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        method, dot, name = key.strip().partition(".")
        if not sep or not dot or not method or not name:
            raise ConfigError(f"{what} {item!r}: expected METHOD.KEY=VALUE, e.g. biomedcoop.tau=2.0")
        out.setdefault(method, {})[name] = _value(value)
    return out


def parse_method_counts(items: list[str] | None, what: str = "--epochs") -> dict[str, int]:
    """["coop=20", "cocoop=5"] -> {"coop": 20, "cocoop": 5}: a non-negative integer per method."""
    out: dict[str, int] = {}
    for item in items or []:
        method, sep, value = item.partition("=")
        if not sep or not method.strip() or not value.strip().isdigit():
            raise ConfigError(f"{what} {item!r}: expected METHOD=N with N a non-negative integer, e.g. coop=20")
        out[method.strip()] = int(value)
    return out


def train_options(items: list[str] | None, device: Optional[str] = None, example: str | None = None,
                  **defaults: Any) -> dict[str, Any]:
    """The training options of `--train KEY=VALUE` over `defaults` (e.g. seed); `--device D` (when given)
    becomes the training loop's accelerator, as in `train` and `rctpl train`."""
    out = {**defaults, **parse_options(items, "--train", example)}
    if device:
        out["accelerator"] = device
    return out


def split_names(values: Optional[Sequence[str]]) -> list[str] | None:
    """`--classes a,b --classes c` -> ["a", "b", "c"]; None when nothing is given."""
    out = [c.strip() for v in values or [] for c in v.split(",") if c.strip()]
    return out or None


# -- devices -------------------------------------------------------------------------------------


def given_device(device: Optional[str]) -> Optional[str]:
    """--device of the commands that load a finished run (explain, predict, report, serve): None stays
    None (the run loads on the CPU); anything else is checked as `pick_device` checks it."""
    return None if device is None else pick_device(device)


def pick_device(device: Optional[str]) -> str:
    """--device: None/'auto' -> cuda when available, else cpu; otherwise cpu, cuda or cuda:N."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"--device {device!r}: expected cpu, cuda or cuda:N")
    return device


# -- datasets and splits ---------------------------------------------------------------------------


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


# -- optional extras -------------------------------------------------------------------------------


def install_hint(extra: str | None) -> str:
    """The pip line that installs an extra (None: the package itself, for its core dependencies)."""
    target = f'"conceptclip[{extra}]"' if extra else "conceptclip"
    return f"pip install -c constraints.txt {target}"


def require(command: str, modules: Sequence[str], extra: str | None) -> None:
    """Import `modules` (a name, or alternatives "a|b" of which one must import) or raise one ConfigError
    naming the command, what is missing and the extra to install. Commands call this first in their
    body, so a missing extra never hides a command from `--help`."""
    missing = []
    for spec in modules:
        for name in spec.split("|"):
            try:
                importlib.import_module(name)
                break
            except ImportError:
                continue
        else:
            missing.append(spec.split("|")[0])
    if missing:
        what = f"the {extra} extra" if extra else "dependencies of conceptclip"
        raise ConfigError(f"{command} needs {what} ({', '.join(missing)} could not be imported): {install_hint(extra)}")


# -- Options several commands declare alike ----------------------------------------------------------
# Called like typer.Option (a fresh OptionInfo per command); the help text may differ per command.

DEVICE_HELP = "cpu | cuda (default: cuda when available)"
RUN_DEVICE_HELP = "cpu | cuda | cuda:N (default: cpu)"


def DeviceOption(help: str = DEVICE_HELP) -> Any:
    return typer.Option(None, help=help)


def SetOption(help: str = "method option KEY=VALUE (repeatable)") -> Any:
    return typer.Option(None, "--set", help=help)


def TrainOption(help: str = "training option KEY=VALUE, e.g. epochs=50") -> Any:
    return typer.Option(None, "--train", help=help)


def OverwriteOption(help: str = "replace an existing results folder") -> Any:
    return typer.Option(False, help=help)


def ResumeOption() -> Any:
    return typer.Option(False, help="continue an interrupted run in --out")


DATASET_HELP = "'ph2', a class-folder directory, a .csv or .json manifest"
