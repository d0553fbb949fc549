"""Measure how the package's imports follow the layering of DESIGN.md.

    python tools/layers.py [--src src/conceptclip] [--json]

Prints the package edges that point up, package cycles, module cycles and the longest method file.
Every `conceptclip` import counts, also those inside functions (a lazy import is still a
dependency); imports under `if TYPE_CHECKING:` do not, nor do the registries' loading by name
(`importlib.import_module` of the method modules, `conceptclip.rctpl.method` and entry-point plugins
in `methods/__init__.py`): a registered module imports the registry, not the other way round. The test `tests/foundation/test_layers.py`
keeps the counts at zero.
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

# rank of each top-level module or package: imports may point to the same rank or lower.
# cli / web / report / bench / demo / predict are the faces; errors, io, paths, progress, threads
# are leaf utilities every layer may use.
LAYERS: dict[str, int] = {
    "cli": 9, "web": 9, "report": 9, "bench": 9, "demo": 9, "predict": 9, "__main__": 9, "app": 9,
    "cli.options": 9,  # the option parsing every command face shares (rctpl.cli too): its own unit, no cycle
    "engine": 8,
    # rctpl is a vertical slice: each of its modules sits at the layer of what it is
    "rctpl": 8, "rctpl.cli": 9, "rctpl.train": 8, "rctpl.evaluate": 8, "rctpl.grounding": 8,
    "rctpl.method": 7, "rctpl.corpus": 4,
    "methods": 7,
    "prompts": 6,
    "explain": 5, "metrics": 5,
    "knowledge": 4,
    "data": 3,
    "backbones": 2,
    "errors": 0, "io": 0, "paths": 0, "progress": 0, "threads": 0, "__init__": 0,
}


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                for n in ast.walk(sub):
                    if hasattr(n, "lineno"):
                        lines.add(n.lineno)
    return lines


def module_name(path: Path, src: Path) -> str:
    rel = path.relative_to(src.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, src: Path, modules: set[str]) -> set[str]:
    """The conceptclip modules `path` imports (resolved to the longest existing module name)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_lines(tree)
    me = module_name(path, src)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for name in names:
            if not name.startswith("conceptclip"):
                continue
            while name and name not in modules:
                name = name.rsplit(".", 1)[0] if "." in name else ""
            if name and name != me:
                found.add(name)
    return found


def top(module: str) -> str:
    """The layer unit of a module: the longest key of LAYERS it falls under (a package, or a
    module of a package that is a vertical slice, e.g. "rctpl.method"), else its top package."""
    parts = module.split(".")[1:] or ["__init__"]
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return key
    return parts[0]


def elementary_cycles(nodes: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle of a small graph (each listed once, from its smallest node)."""
    cycles: list[list[str]] = []
    order = sorted(nodes)
    for i, start in enumerate(order):
        allowed = set(order[i:])
        stack = [(start, [start])]
        while stack:
            v, path = stack.pop()
            for w in sorted(nodes.get(v, ())):
                if w == start:
                    cycles.append(path)
                elif w in allowed and w not in path:
                    stack.append((w, path + [w]))
    return cycles


def graph(src: Path) -> dict[str, set[str]]:
    files = {module_name(p, src): p for p in src.rglob("*.py")}
    modules = set(files)
    return {m: imports_of(p, src, modules) for m, p in files.items()}


def _sccs(nodes: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(sorted(nodes[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            advanced = False
            for w in it:
                if w not in nodes:
                    continue
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(nodes[w]))))
                    advanced = True
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def measure(src: Path) -> dict:
    g = graph(src)
    pkg: dict[str, set[str]] = {}
    up: list[dict] = []
    for mod, deps in g.items():
        a = top(mod)
        pkg.setdefault(a, set())
        for d in deps:
            b = top(d)
            if a == b:
                continue
            pkg[a].add(b)
            ra, rb = LAYERS.get(a), LAYERS.get(b)
            if ra is None or rb is None or rb > ra:
                up.append({"from": mod, "to": d, "edge": f"{a} -> {b}"})
    up_edges = sorted({u["edge"] for u in up})
    method_files = sorted(
        ((len(p.read_text(encoding="utf-8").splitlines()), str(p.relative_to(src.parent)))
         for p in (src / "methods").glob("*.py")), reverse=True)
    return {
        "up_package_edges": up_edges,
        "up_imports": sorted(up, key=lambda u: (u["edge"], u["from"])),
        "package_cycles": _sccs(pkg),
        "package_elementary_cycles": elementary_cycles(pkg),
        "module_cycles": _sccs(g),
        "longest_method_files": method_files[:5],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1] / "src" / "conceptclip")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    m = measure(args.src)
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    print(f"package edges pointing up: {len(m['up_package_edges'])}")
    for u in m["up_imports"]:
        print(f"  {u['edge']:28s} {u['from']} -> {u['to']}")
    print(f"package cycles (strongly connected groups): {len(m['package_cycles'])}")
    for c in m["package_cycles"]:
        print("  " + " <-> ".join(c))
    print(f"package elementary cycles: {len(m['package_elementary_cycles'])}")
    for c in m["package_elementary_cycles"]:
        print("  " + " -> ".join(c + c[:1]))
    print(f"module cycles (strongly connected groups): {len(m['module_cycles'])}")
    for c in m["module_cycles"]:
        print("  " + " <-> ".join(c))
    print("longest method files: " + ", ".join(f"{p} {n}" for n, p in m["longest_method_files"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
