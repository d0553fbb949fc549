"""Small mutation tester: would the tests notice a flipped sign, a dropped term or a moved search?

Usage (from the repository root, with the project's environment active)::

    python tools/mutate.py src/conceptclip/methods/kgcoop.py -t tests/methods/test_kgcoop.py \
        [--function loss --function logits] [--lines 40-90] [--max 200] [--timeout 120] \
        [--json mutation.json] [--list]

Each mutant is one AST edit of the target file, applied to a copy of ``src/`` in a temporary folder;
the given tests run against that copy (``PYTHONPATH`` first, ``-x``). A mutant is *killed* when the
tests fail or time out, *survives* when they pass. Mutations, the kinds the project's standards name:

- ``sign``:   ``a + b`` <-> ``a - b``, ``a * b`` <-> ``a / b``, unary minus dropped
- ``term``:   ``a + b`` / ``a - b`` -> ``a`` and -> ``b`` (a dropped term)
- ``reduce``: ``.sum(`` <-> ``.mean(``, ``.max(`` <-> ``.min(``, ``torch.sum`` <-> ``torch.mean``,
  ``logsumexp`` -> ``amax``
- ``compare``: ``<`` <-> ``<=``, ``>`` <-> ``>=``, ``==`` <-> ``!=``
- ``const``:  a number ``n`` -> ``n + 1`` (ints) or ``n * 2`` (floats, 0.0 -> 1.0); ``True`` <-> ``False``
- ``split``:  the strings ``"val"``/``"train"``/``"test"`` rotated (a search moved onto another part)

``--list`` prints the mutants without running tests. The exit code is 0 whatever survives: read the
report (survivors are listed with line, kind and the edited source line) and explain each one.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

_SIGN = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult}
_COMPARE = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
            ast.NotEq: ast.Eq}
_REDUCE = {"sum": "mean", "mean": "sum", "max": "min", "min": "max", "amax": "amin", "amin": "amax",
           "logsumexp": "amax"}
_SPLITS = {"val": "train", "train": "test", "test": "val"}


@dataclass
class Mutant:
    index: int
    kind: str
    line: int
    description: str
    source_line: str
    status: str = "pending"
    seconds: float = 0.0


def _in_scope(node: ast.AST, functions: set[str], lines: tuple[int, int] | None, parents: dict) -> bool:
    line = getattr(node, "lineno", None)
    if line is None:
        return False
    if lines is not None and not (lines[0] <= line <= lines[1]):
        return False
    if functions:
        p = parents.get(node)
        while p is not None:
            if isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef)) and p.name in functions:
                return True
            p = parents.get(p)
        return False
    return True


def _is_docstring(node: ast.AST, parents: dict) -> bool:
    parent = parents.get(node)
    return isinstance(parent, ast.Expr) and isinstance(parents.get(parent), (ast.Module, ast.ClassDef,
                                                                              ast.FunctionDef,
                                                                              ast.AsyncFunctionDef))


def _edits(tree: ast.Module, functions: set[str], lines: tuple[int, int] | None):
    """Yield (kind, node path, description, apply) for every mutation site, in source order."""
    parents: dict = {}
    for parent in ast.walk(tree):
        for child in ast.iter_child_nodes(parent):
            parents[child] = parent
    nodes = [n for n in ast.walk(tree) if _in_scope(n, functions, lines, parents)]
    nodes.sort(key=lambda n: (n.lineno, getattr(n, "col_offset", 0)))
    ids = {id(n): i for i, n in enumerate(ast.walk(tree))}
    for node in nodes:
        key = ids[id(node)]
        if isinstance(node, ast.BinOp) and type(node.op) in _SIGN:
            new = _SIGN[type(node.op)]
            yield "sign", key, f"{type(node.op).__name__} -> {new.__name__}", ("op", new)
            if isinstance(node.op, (ast.Add, ast.Sub)):
                yield "term", key, "keep left operand only", ("left", None)
                yield "term", key, "keep right operand only", ("right", None)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            yield "sign", key, "drop unary minus", ("operand", None)
        elif isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _COMPARE:
            new = _COMPARE[type(node.ops[0])]
            yield "compare", key, f"{type(node.ops[0]).__name__} -> {new.__name__}", ("cmp", new)
        elif isinstance(node, ast.Attribute) and node.attr in _REDUCE and isinstance(parents.get(node), ast.Call) \
                and parents[node].func is node:
            yield "reduce", key, f".{node.attr} -> .{_REDUCE[node.attr]}", ("attr", _REDUCE[node.attr])
        elif isinstance(node, ast.Constant) and not _is_docstring(node, parents):
            v = node.value
            if isinstance(v, bool):
                yield "const", key, f"{v} -> {not v}", ("value", not v)
            elif isinstance(v, int):
                yield "const", key, f"{v} -> {v + 1}", ("value", v + 1)
            elif isinstance(v, float):
                new_v = v * 2 if v != 0.0 else 1.0
                yield "const", key, f"{v} -> {new_v}", ("value", new_v)
            elif isinstance(v, str) and v in _SPLITS:
                yield "split", key, f"{v!r} -> {_SPLITS[v]!r}", ("value", _SPLITS[v])


def _apply(tree: ast.Module, key: int, action: tuple) -> ast.Module:
    tree = copy.deepcopy(tree)
    nodes = list(ast.walk(tree))
    node = nodes[key]
    what, arg = action
    if what == "op":
        node.op = arg()
    elif what == "cmp":
        node.ops = [arg()]
    elif what == "attr":
        node.attr = arg
    elif what == "value":
        node.value = arg
    else:  # replace the node by one of its children: left/right/operand
        replacement = getattr(node, what)
        for parent in ast.walk(tree):
            for field, value in ast.iter_fields(parent):
                if value is node:
                    setattr(parent, field, replacement)
                elif isinstance(value, list):
                    for i, item in enumerate(value):
                        if item is node:
                            value[i] = replacement
    return ast.fix_missing_locations(tree)


def _parse_lines(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    a, _, b = text.partition("-")
    return int(a), int(b or a)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("target", type=Path, help="source file under src/ to mutate")
    ap.add_argument("-t", "--tests", action="append", default=[], help="test file/dir/node id (repeatable)")
    ap.add_argument("--function", action="append", default=[], help="only mutate inside these functions")
    ap.add_argument("--lines", help="only mutate lines A-B")
    ap.add_argument("--kinds", default="sign,term,reduce,compare,const,split")
    ap.add_argument("--max", type=int, default=0, help="at most this many mutants (evenly spread)")
    ap.add_argument("--timeout", type=float, default=180.0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--list", action="store_true", help="list mutants, run nothing")
    args = ap.parse_args(argv)

    root = Path.cwd()
    target = args.target.resolve()
    src = root / "src"
    if not target.is_file() or src not in target.parents:
        ap.error(f"{args.target}: expected a .py file under {src}")
    if not args.tests and not args.list:
        ap.error("give the tests to run with -t")
    original = target.read_text()
    tree = ast.parse(original)
    src_lines = original.splitlines()
    kinds = set(args.kinds.split(","))
    edits = [e for e in _edits(tree, set(args.function), _parse_lines(args.lines)) if e[0] in kinds]
    if args.max and len(edits) > args.max:
        step = len(edits) / args.max
        edits = [edits[int(i * step)] for i in range(args.max)]
    nodes = list(ast.walk(tree))
    mutants = [Mutant(i, kind, nodes[key].lineno, desc, src_lines[nodes[key].lineno - 1].strip())
               for i, (kind, key, desc, _) in enumerate(edits)]
    if args.list:
        for m in mutants:
            print(f"#{m.index:3d} {m.kind:7s} L{m.line:<4d} {m.description:28s} | {m.source_line}")
        return 0

    with tempfile.TemporaryDirectory(prefix="mutate-") as tmp:
        copy_src = Path(tmp) / "src"
        shutil.copytree(src, copy_src, ignore=shutil.ignore_patterns("__pycache__"))
        copy_target = copy_src / target.relative_to(src)
        env = dict(os.environ, PYTHONPATH=f"{copy_src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                   PYTHONDONTWRITEBYTECODE="1", HF_HUB_OFFLINE="1")
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *args.tests]
        start = time.time()
        base = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=args.timeout * 3)
        if base.returncode != 0:
            print(base.stdout[-3000:])
            print("the tests fail on the unmutated code; fix that first", file=sys.stderr)
            return 1
        print(f"baseline green in {time.time() - start:.1f} s; {len(mutants)} mutants", flush=True)
        for (kind, key, desc, action), m in zip(edits, mutants):
            try:
                copy_target.write_text(ast.unparse(_apply(tree, key, action)))
            except Exception as exc:  # an edit that makes no valid program counts as not generated
                m.status = f"skipped ({exc.__class__.__name__})"
                continue
            t0 = time.time()
            try:
                r = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=args.timeout)
                m.status = "killed" if r.returncode != 0 else "survived"
            except subprocess.TimeoutExpired:
                m.status = "killed (timeout)"
            m.seconds = round(time.time() - t0, 1)
            print(f"#{m.index:3d} {m.status:16s} {m.kind:7s} L{m.line:<4d} {m.description:28s} | {m.source_line}",
                  flush=True)
        copy_target.write_text(original)

    ran = [m for m in mutants if not m.status.startswith("skipped")]
    killed = [m for m in ran if m.status.startswith("killed")]
    survivors = [m for m in ran if m.status == "survived"]
    print(f"\n{args.target}: killed {len(killed)}/{len(ran)} "
          f"({100 * len(killed) / max(len(ran), 1):.1f} %), {len(survivors)} survived")
    for m in survivors:
        print(f"  survived #{m.index} L{m.line} {m.kind}: {m.description} | {m.source_line}")
    if args.json:
        args.json.write_text(json.dumps({"target": str(args.target), "tests": args.tests,
                                         "killed": len(killed), "total": len(ran),
                                         "mutants": [asdict(m) for m in mutants]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
