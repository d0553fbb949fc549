"""The import layering of DESIGN.md holds: imports point down, no cycles, small method files
(measured by tools/layers.py, which counts lazy imports too)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location("layers_tool", ROOT / "tools" / "layers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def measured() -> dict:
    return _tool().measure(ROOT / "src" / "conceptclip")


def test_no_import_points_up_the_layers(measured):
    assert measured["up_imports"] == []


def test_no_package_or_module_cycle(measured):
    assert measured["package_cycles"] == []
    assert measured["module_cycles"] == []


def test_every_method_file_is_under_300_lines(measured):
    assert [(p, n) for n, p in measured["longest_method_files"] if n >= 300] == []


def _write(root: Path, files: dict[str, str]) -> Path:
    src = root / "conceptclip"
    for name, text in files.items():
        path = src / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return src


def test_the_tool_sees_a_lazy_upward_import_and_a_cycle(tmp_path):
    """A planted violation is found: the checks above can fail."""
    src = _write(tmp_path, {
        "__init__.py": "",
        "data/__init__.py": "",
        "data/a.py": "def f():\n    from conceptclip.engine import b\n",  # lazy, data -> engine: up
        "engine/__init__.py": "",
        "engine/b.py": "from conceptclip.data import a\n",
        "methods/__init__.py": "",
        "methods/m.py": "\n" * 300,
    })
    m = _tool().measure(src)
    assert m["up_package_edges"] == ["data -> engine"]
    assert m["package_cycles"] == [["data", "engine"]]
    assert m["module_cycles"] == [["conceptclip.data.a", "conceptclip.engine.b"]]
    assert m["longest_method_files"][0][0] == 300


def test_type_checking_imports_do_not_count(tmp_path):
    src = _write(tmp_path, {
        "__init__.py": "",
        "data/__init__.py": "",
        "data/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from conceptclip.engine import b\n",
        "engine/__init__.py": "",
        "engine/b.py": "",
    })
    assert _tool().measure(src)["up_imports"] == []
