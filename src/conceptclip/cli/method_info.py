"""What `conceptclip methods [NAME]` prints: a method's description (its paper), its options (every field of
its config dataclass: type, default, help, source) and its training defaults (`train_defaults_for`).

A field's help is `field(metadata={"help": ...})`, else the `# comment` on the field's line in the
source, else nothing; its source is `metadata["source"]` ("paper", "code: REPO/FILE" or "ours") when given.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import json
import re
import sys
import textwrap
import tokenize
from functools import lru_cache
from typing import Any

SHOTS = (1, 2, 4, 8, 16, None)  # the splits `train_defaults_for` is shown for (None: not a K-shot split)


def _paragraph(doc: str | None) -> str:
    """The first paragraph of a docstring, on one line."""
    text = inspect.cleandoc(doc or "")
    return " ".join(text.split("\n\n")[0].split())


def description(cls: type) -> str:
    """The method class's own docstring, else its module's (which names the paper): first paragraph."""
    own = _paragraph(cls.__dict__.get("__doc__"))
    return own or _paragraph(getattr(sys.modules.get(cls.__module__), "__doc__", ""))


_SENTENCE_END = re.compile(r"(?<!\bal)(?<!\be\.g)(?<!\bi\.e)(?<!\bcf)(?<!\bvs)\.(?=\s|$)")


def summary(cls: type, width: int = 110) -> str:
    """The first sentence of `description`, cut to `width` characters."""
    text = description(cls)
    m = _SENTENCE_END.search(text)
    text = text[: m.end()] if m else text
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


@lru_cache(maxsize=None)
def _inline_comments(klass: type) -> dict[str, str]:
    """{field name: the `# comment` on its line(s)} for the annotated fields written in `klass`'s body."""
    try:
        source = textwrap.dedent(inspect.getsource(klass))
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string.lstrip("#").strip()
        tree = ast.parse(source)
    except (tokenize.TokenError, SyntaxError):
        return {}
    out: dict[str, str] = {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for node in body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            text = " ".join(comments[i] for i in range(node.lineno, (node.end_lineno or node.lineno) + 1)
                            if i in comments)
            if text:
                out[node.target.id] = text
    return out


def _defined_in(config: type, name: str) -> type | None:
    """The class of `config`'s MRO whose body declares field `name` (the most derived one)."""
    for klass in config.__mro__:
        if name in klass.__dict__.get("__annotations__", {}):
            return klass
    return None


def _shown(value: Any) -> str:
    """A default as `--set KEY=VALUE` takes it (JSON) where it is JSON, else its repr."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def _type_name(tp: Any) -> str:
    if isinstance(tp, str):  # `from __future__ import annotations`: the annotation as written
        return tp
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def config_fields(config: type) -> list[dict[str, str]]:
    """Every field of a config dataclass: name, type, default, help, source (strings, '' when absent)."""
    rows = []
    for f in dataclasses.fields(config):
        if f.default is not dataclasses.MISSING:
            default = _shown(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = _shown(f.default_factory())
        else:
            default = "(required)"
        klass = _defined_in(config, f.name)
        help_text = f.metadata.get("help") or (_inline_comments(klass).get(f.name, "") if klass else "")
        rows.append({"name": f.name, "type": _type_name(f.type), "default": default, "help": str(help_text),
                     "source": str(f.metadata.get("source", ""))})
    return rows


def train_defaults(cls: type) -> dict[str, dict[str, Any]]:
    """{"K=1": {...}, ..., "not K-shot": {...}} from `train_defaults_for`, or {"all splits": {...}} when
    they do not depend on the shots."""
    per = {("not K-shot" if k is None else f"K={k}"): cls.train_defaults_for(k) for k in SHOTS}
    first = next(iter(per.values()))
    return {"all splits": first} if all(d == first for d in per.values()) else per


def method_info(name: str) -> dict[str, Any]:
    """Everything `conceptclip methods NAME` prints, as plain data (also `--json`)."""
    from conceptclip.methods import get_method_class

    cls = get_method_class(name)
    override = cls.train_defaults_for.__func__ is not _base_train_defaults_for()
    return {"name": name, "class": f"{cls.__module__}.{cls.__qualname__}", "description": description(cls),
            "inputs": sorted(cls.inputs), "config": f"{cls.Config.__module__}.{cls.Config.__qualname__}",
            "options": config_fields(cls.Config), "train_defaults": train_defaults(cls),
            "train_defaults_note": _paragraph(cls.train_defaults_for.__doc__) if override else ""}


def _base_train_defaults_for():
    from conceptclip.methods.base import Method

    return Method.train_defaults_for.__func__


def render(info: dict[str, Any], console) -> None:
    """`info` (from `method_info`) as text and rich tables on `console`."""
    from rich.markup import escape
    from rich.table import Table

    console.print(f"[bold]{escape(info['name'])}[/bold]: {escape(info['description'])}", highlight=False)
    console.print(f"class {info['class']}; reads {', '.join(info['inputs'])}; options with "
                  f"--set KEY=VALUE ({info['config']})", markup=False, highlight=False)
    table = Table(title=f"{info['name']} options", title_justify="left")
    cols = ["name", "type", "default", "help"] + (["source"] if any(r["source"] for r in info["options"]) else [])
    for col in cols:
        table.add_column("option" if col == "name" else col, no_wrap=col in ("name", "type"),
                         overflow="fold", ratio=3 if col == "help" else None,
                         max_width=30 if col == "default" else None)
    for row in info["options"]:
        table.add_row(*(escape(row[k]) for k in cols))
    if info["options"]:
        console.print(table)
    else:
        console.print("no options", highlight=False)
    defaults = info["train_defaults"]
    keys = sorted({k for d in defaults.values() for k in d})
    if keys:
        console.print("training defaults (--train KEY=VALUE):", markup=False, highlight=False)
        train = Table()
        train.add_column("option")
        for split in defaults:
            train.add_column(split)
        for key in keys:
            train.add_row(key, *(_shown(d[key]) if key in d else "-" for d in defaults.values()))
        console.print(train)
    else:
        console.print("training defaults: the engine's (engine.TrainConfig)", highlight=False)
    if info["train_defaults_note"]:
        console.print(info["train_defaults_note"], markup=False, highlight=False)
