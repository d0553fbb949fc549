"""Self-contained results folders: files a run's options name travel with the run.

Any string in a method's config that names an existing file (a bank JSON, an ensemble, heads, ...)
is copied into the results folder under `files/`, the config in config.json then names the copy
(a path relative to the run), and config.json's "files" records each copy:

    "files": {"method.bank": {"path": "files/bank-my_bank.json", "sha256": "...", "source": "/abs/my_bank.json"},
              "backbone":    {"path": "lite_heads.safetensors", "sha256": "...", "source": "..."}}

`load_run` resolves those paths against the run folder (so eval, explain, report and serve work from
any working directory) after `check_files` has verified every copy: a missing or changed piece is
an error that names it, never a silent skip.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

from conceptclip.errors import CheckpointError

FILES_DIR = "files"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_file(value: Any) -> bool:
    if not isinstance(value, str) or not value or "\n" in value or len(value) > 4096:
        return False
    try:
        return Path(value).is_file()
    except (OSError, ValueError):
        return False


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:80] or "file"


def bundle_files(config: dict[str, Any], out: Path, prefix: str = "method",
                 copy: bool = True) -> tuple[dict[str, Any], dict[str, dict]]:
    """Copy every file that a (nested) string of `config` names into `out/files/`; return the config
    with those strings replaced by the copies' run-relative paths, and the "files" records. With
    `copy=False` nothing is written: the same result, the hashes read from the sources (what a run
    validates before it creates its folder)."""
    records: dict[str, dict] = {}

    def walk(value: Any, key: str) -> Any:
        if isinstance(value, dict):
            return {k: walk(v, f"{key}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, f"{key}[{i}]") for i, v in enumerate(value)]
        if _is_file(value):
            src = Path(value).resolve()
            rel = f"{FILES_DIR}/{_safe(key.split('.', 1)[-1])}-{_safe(src.name)}"
            if copy:
                (out / FILES_DIR).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, out / rel)
            records[key] = {"path": rel, "sha256": sha256_file(out / rel if copy else src), "source": str(src)}
            return rel
        return value

    return walk(config, prefix), records


def record_file(out: Path, rel: str, source: str | Path) -> dict[str, str]:
    """The "files" record of a file already copied to `out/rel`."""
    return {"path": rel, "sha256": sha256_file(out / rel), "source": str(Path(source).resolve())}


def check_files(run: str | Path, config: dict[str, Any]) -> list[str]:
    """Problems with the files config.json's "files" lists (missing, or changed since training);
    [] when every piece is there and intact."""
    run = Path(run)
    problems = []
    for key, rec in (config.get("files") or {}).items():
        try:
            path, sha = run / rec["path"], rec["sha256"]
        except (TypeError, KeyError):
            problems.append(f"config.json files[{key!r}]: expected an object with 'path' and 'sha256'")
            continue
        if not path.is_file():
            problems.append(f"{path} is missing (option {key}, copied from {rec.get('source', '?')} at training)")
        elif sha256_file(path) != sha:
            problems.append(f"{path} has changed since training (option {key}: sha256 differs from config.json)")
    return problems


def resolve_files(run: str | Path, config: dict[str, Any], value: Any) -> Any:
    """`value` (a method config, nested) with every run-relative path that "files" lists made
    absolute under `run`. Raises CheckpointError naming the piece when one is missing or changed."""
    run = Path(run)
    problems = check_files(run, config)
    if problems:
        raise CheckpointError(f"{run}: results folder is incomplete: {'; '.join(problems)}")
    listed = {rec["path"] for rec in (config.get("files") or {}).values()}

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, str) and v in listed:
            return str(run / v)
        return v

    return walk(value)
