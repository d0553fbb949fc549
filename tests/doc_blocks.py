"""The fenced code blocks of a file in docs/, for tests that run the docs' examples as written."""

from __future__ import annotations

from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def blocks(doc: str, lang: str) -> list[str]:
    """The fenced code blocks of docs/`doc` whose info string is `lang` ("" for unlabelled fences)."""
    out, current, info = [], None, ""
    for line in (DOCS / doc).read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            if current is None:
                current, info = [], line[3:].strip()
            else:
                if info == lang:
                    out.append("\n".join(current) + "\n")
                current = None
        elif current is not None:
            current.append(line)
    return out
