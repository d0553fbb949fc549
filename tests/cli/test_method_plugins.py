"""Methods of other packages, through the entry-point group "conceptclip.methods": an installed
distribution (a dist-info folder on sys.path, as pip writes it) whose entry points name a Method class
or a module that registers itself; a broken plugin is a warning naming its entry point, never a crash."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

import conceptclip.methods as registry
from conceptclip.errors import ConfigError
from conceptclip.methods import ENTRY_POINT_GROUP, available_methods, create_method, get_method_class
from doc_blocks import blocks

SRC = Path(__file__).resolve().parents[2] / "src"

PLUGIN = textwrap.dedent('''
    """A method package outside conceptclip."""
    from dataclasses import dataclass, field

    from torch import nn

    from conceptclip.methods.base import Method, MethodConfig


    @dataclass
    class CentroidConfig(MethodConfig):
        scale: float = field(default=10.0, metadata={"help": "logit scale of the head", "source": "ours"})


    class Centroid(Method):
        """Centroid: a linear head on L2-normalised frozen features (a plugin of the tests)."""

        Config = CentroidConfig
        train_defaults = {"epochs": 2, "lr": 0.1}

        def __init__(self, backbone, classnames, config=None, **kw):
            super().__init__(backbone, classnames, config, **kw)
            self.head = nn.Linear(backbone.embed_dim, len(self.classnames))

        def logits(self, batch):
            f = batch["features"].float()
            return self.config.scale * self.head(f / f.norm(dim=-1, keepdim=True))
''')
SELF_REGISTERING = textwrap.dedent('''
    from conceptclip.methods import register_method
    from cc_plugin_demo import Centroid


    @register_method("centroid_x2")
    class CentroidTwice(Centroid):
        """Centroid with twice the logits."""

        def logits(self, batch):
            return 2 * super().logits(batch)
''')


@pytest.fixture
def fresh_registry(monkeypatch):
    """The package's methods loaded; plugins read again; what a test registers is undone afterwards."""
    available_methods()
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    monkeypatch.setattr(registry, "_PLUGINS", None)
    yield
    for name in [m for m in sys.modules if m.split(".")[0] in ("cc_plugin_demo", "my_methods")]:
        del sys.modules[name]


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch, fresh_registry):
    """`cc-plugin-demo` installed the way pip installs it: the package and its dist-info folder on sys.path."""
    site = tmp_path / "site"
    (site / "cc_plugin_demo").mkdir(parents=True)
    (site / "cc_plugin_demo" / "__init__.py").write_text(PLUGIN)
    (site / "cc_plugin_demo" / "registered.py").write_text(SELF_REGISTERING)
    dist = site / "cc_plugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: cc-plugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\ncentroid = cc_plugin_demo:Centroid\n"
                                           "more = cc_plugin_demo.registered\n")
    monkeypatch.syspath_prepend(str(site))
    return site


def test_installed_plugin_methods_are_listed_built_and_described(installed_plugin, tiny_clip):
    names = available_methods()
    assert {"centroid", "centroid_x2", "coop", "zeroshot"} <= set(names)
    cls = get_method_class("centroid")
    assert cls.__module__ == "cc_plugin_demo" and cls.name == "centroid"
    assert get_method_class("centroid_x2").__module__ == "cc_plugin_demo.registered"
    import torch

    method = create_method("centroid", tiny_clip, ["cat", "dog"], {"scale": 5.0})
    feats = torch.randn(3, tiny_clip.embed_dim)
    expected = 5.0 * (feats / feats.norm(dim=-1, keepdim=True)) @ method.head.weight.t() + 5.0 * method.head.bias
    torch.testing.assert_close(method.logits({"features": feats}), expected)


def test_plugin_is_described_by_the_command_line(installed_plugin, run_cli):
    code, out, err = run_cli("methods")
    assert code == 0, err
    assert dict(line.split(None, 1) for line in out.splitlines())["centroid"].startswith("Centroid: a linear head")
    code, out, err = run_cli("methods", "centroid", "--json")
    assert code == 0, err
    assert json.loads(out)["options"] == [{"name": "scale", "type": "float", "default": "10.0",
                                           "help": "logit scale of the head", "source": "ours"}]
    code, out, err = run_cli("methods", "centroid_x2", "--json")
    assert code == 0 and json.loads(out)["description"] == "Centroid with twice the logits."


def test_the_documented_external_package_works(tmp_path, monkeypatch, fresh_registry, run_cli, image_folder):
    """docs/add-a-method.md's pyproject table and module, installed as pip installs them, then trained."""
    project = tomllib.loads(blocks("add-a-method.md", "toml")[0])["project"]
    table = project["entry-points"][ENTRY_POINT_GROUP]
    assert table == {"my_bottleneck": "my_methods.bottleneck:Bottleneck"}
    site = tmp_path / "site"
    (site / "my_methods").mkdir(parents=True)
    (site / "my_methods" / "__init__.py").write_text("")
    (site / "my_methods" / "bottleneck.py").write_text(blocks("add-a-method.md", "python")[0])
    dist = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\n" + "".join(f"{k} = {v}\n" for k, v in table.items()))
    monkeypatch.syspath_prepend(str(site))
    registry._METHODS.pop("my_bottleneck", None)  # tests/report/test_report_docs.py registers the same example

    code, out, err = run_cli("methods", "my_bottleneck", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["class"] == "my_methods.bottleneck.Bottleneck"
    assert [(o["name"], o["help"]) for o in info["options"]] == [
        ("concepts", "the bottleneck: concept phrases"), ("template", "how a phrase becomes a prompt"),
        ("scale", "tau: temperature of the concept scores")]
    run = tmp_path / "run"
    code, out, err = run_cli("train", "-m", "my_bottleneck", "--backbone", "tiny-clip", "--dataset", str(image_folder),
                             "--shots", "2", "-o", str(run), "--set", 'concepts=["red", "green", "blue"]',
                             "--train", "epochs=1", "--train", "progress=false", "--device", "cpu", "--threads", "1")
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["method"]["method"] == "my_bottleneck"


def _fake_entry_points(monkeypatch, *lines: str) -> None:
    eps = [importlib.metadata.EntryPoint(*(p.strip() for p in line.split("=")), ENTRY_POINT_GROUP) for line in lines]
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None, **_: [ep for ep in eps if group in (None, ep.group)])


def test_a_broken_plugin_is_a_warning_naming_it(fresh_registry, monkeypatch):
    _fake_entry_points(monkeypatch, "broken = cc_no_such_module:Thing", "notamethod = json:dumps",
                       "coop = conceptclip.methods.base:Method")
    with pytest.warns(UserWarning) as caught:
        names = available_methods()
    messages = sorted(str(w.message) for w in caught)
    assert messages == [
        "method plugin 'broken' not loaded: entry point broken = 'cc_no_such_module:Thing' (group "
        "'conceptclip.methods') failed to import: ModuleNotFoundError: No module named 'cc_no_such_module'",
        "method plugin 'coop' not loaded: entry point coop = 'conceptclip.methods.base:Method' (group "
        "'conceptclip.methods'): method name 'coop' registered twice",
        "method plugin 'notamethod' not loaded: entry point notamethod = 'json:dumps' (group 'conceptclip.methods') "
        "is neither a Method subclass nor a module"]
    assert "broken" not in names and "notamethod" not in names
    assert get_method_class("coop").__module__ == "conceptclip.methods.coop"  # the package's own coop is kept
    with pytest.raises(ConfigError, match=r"^method 'broken': entry point broken = 'cc_no_such_module:Thing'"):
        get_method_class("broken")
    with pytest.raises(ConfigError, match=r"^unknown method 'other'"):
        get_method_class("other")


def test_broken_plugin_does_not_stop_the_command_line(tmp_path):
    """Through the console entry point in a fresh interpreter: one `warning:` line, the command still runs;
    asking for the broken method is one `error:` line naming its entry point."""
    site = tmp_path / "site"
    dist = site / "cc_broken-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: cc-broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nbroken = cc_no_such_module:Thing\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(site), str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])}
    cmd = [sys.executable, "-c", "from conceptclip.cli import main; main()"]
    res = subprocess.run([*cmd, "methods"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0 and "coop" in res.stdout.split()
    assert res.stderr == ("warning: method plugin 'broken' not loaded: entry point broken = 'cc_no_such_module:Thing' "
                          "(group 'conceptclip.methods', distribution cc-broken) failed to import: "
                          "ModuleNotFoundError: No module named 'cc_no_such_module'\n")
    res = subprocess.run([*cmd, "methods", "broken"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.splitlines()[-1].startswith(
        "error: method 'broken': entry point broken = 'cc_no_such_module:Thing'")
