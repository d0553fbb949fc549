"""Atomic, safe file writes and reads: a kill never leaves a half-written file behind."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from conceptclip.errors import CheckpointError


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_orphaned_temps(path: Path) -> list[Path]:
    """Delete temp files of earlier writes of `path` whose writing process is gone (killed before
    its rename); temps of live writers are left alone. Returns what was removed."""
    removed = []
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _process_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _process_umask()  # read once: os.umask can only be read by setting it, which is not thread-safe


def _file_mode(path: Path) -> int:
    """The mode a new file gets from open() under the process umask (0644 under umask 022); a file
    that already exists keeps its mode."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_UMASK


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temp file beside `path`, fsync it, then rename it over `path`.

    The temp file's name carries the writer's pid, so the next write of `path` removes the temp a
    killed writer left behind. The file gets the permissions of a plainly created one (mkstemp's
    temp files are owner-only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphaned_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, _file_mode(path))
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


def save_tensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Save a flat dict of tensors as safetensors, atomically."""
    from safetensors.torch import save_file

    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda p: save_file(clean, str(p), metadata=metadata))


PICKLE_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle"}


def _looks_pickled(path: Path) -> bool:
    """Not a safetensors layout (8-byte header length, then `{`) and either torch.save zip bytes
    (`PK\\x03\\x04`), a raw pickle (protocol byte 0x80) or a pickle suffix (.pt, .pth, .bin, ...)."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if head[8:9] == b"{":
        return False
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80" or path.suffix.lower() in PICKLE_SUFFIXES


def _load_pickled(path: Path) -> dict:
    """torch.load with weights_only=True (restricted unpickler: tensors and plain containers only)."""
    import pickle

    import torch

    try:
        with open(path, "rb") as fh:  # a file object: torch.load would hand a *.safetensors name to safetensors
            obj = torch.load(fh, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError, AttributeError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a loadable weights-only PyTorch file ({msg})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        raise CheckpointError(f"{path}: expected a flat dict of named tensors, got {type(obj).__name__}")
    return obj


def load_tensors(path: str | os.PathLike, allow_pickle: bool = False) -> dict:
    """Load a safetensors file; a missing or corrupt file raises CheckpointError naming it.

    Pickled PyTorch files (.pt/.pth/.bin/.ckpt, or torch.save/pickle bytes) are refused: unpickling
    can run arbitrary code. With `allow_pickle=True` they are read with `torch.load(weights_only=True)`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        pickled = _looks_pickled(path)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint ({exc})") from None
    if pickled:
        if not allow_pickle:
            raise CheckpointError(f"{path}: is a pickled PyTorch file; refusing to unpickle it (it can run code). "
                                  "Convert it to safetensors, or pass allow_pickle=True if you trust it")
        return _load_pickled(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file ({exc})") from None
