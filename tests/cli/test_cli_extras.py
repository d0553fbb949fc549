"""A missing optional extra is one line `error: ...` naming the extra to install, exit code 2: the web
extra for `serve` (fastapi, uvicorn, python-multipart), open_clip for an `open_clip:` backbone, and the
report's own dependencies for `report`."""

from __future__ import annotations

import sys

import pytest

from conceptclip.cli.options import install_hint, require
from conceptclip.errors import ConfigError

WEB = 'pip install -c constraints.txt "conceptclip[web]"'


@pytest.mark.parametrize("missing", [["fastapi"], ["uvicorn"], ["multipart", "python_multipart"]])
def test_serve_names_the_web_extra(run_cli, monkeypatch, tmp_path, missing):
    for module in missing:
        monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    code, out, err = run_cli("serve", "--run", str(tmp_path / "no-run"))
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: serve needs the web extra"), err
    assert WEB in lines[0] and missing[0] in lines[0]


def test_report_names_what_it_needs(run_cli, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "jinja2", None)
    code, out, err = run_cli("report", str(tmp_path), "-o", str(tmp_path / "r.html"))
    assert code == 2 and out == ""
    assert err.strip() == ("error: report needs dependencies of conceptclip (jinja2 could not be imported): "
                           "pip install -c constraints.txt conceptclip")
    assert not (tmp_path / "r.html").exists()


def test_open_clip_backbone_names_its_extra(run_cli, monkeypatch, image_folder, tmp_path):
    monkeypatch.setitem(sys.modules, "open_clip", None)
    code, out, err = run_cli("train", "-m", "zeroshot", "--backbone", "open_clip:ViT-B-16", "--dataset",
                             str(image_folder), "--shots", "2", "-o", str(tmp_path / "run"), "--device", "cpu")
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert 'pip install -c constraints.txt "conceptclip[open_clip]"' in lines[0]


def test_require_accepts_any_of_the_alternatives(monkeypatch):
    monkeypatch.setitem(sys.modules, "multipart", None)
    require("serve", ["python_multipart|multipart", "json"], "web")  # python_multipart imports: no error
    monkeypatch.setitem(sys.modules, "python_multipart", None)
    with pytest.raises(ConfigError, match=r"serve needs the web extra \(python_multipart could not be imported\)"):
        require("serve", ["python_multipart|multipart", "json"], "web")
    assert install_hint("web") == WEB
