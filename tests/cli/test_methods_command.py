"""`conceptclip methods` lists every method with one line of description; `conceptclip methods NAME`
prints every option of its config dataclass (type, default, help from the field's metadata or its
`# comment`, source) and its training defaults from `train_defaults_for`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import pytest

import conceptclip.methods as registry
from conceptclip.methods import available_methods, get_method_class, register_method
from conceptclip.methods.base import Method, MethodConfig


@dataclass
class _ToyConfig(MethodConfig):
    width: int = 4  # hidden units of the toy head
    scale: float = field(default=10.0, metadata={"help": "logit scale tau", "source": "paper"})
    names: list = field(default_factory=lambda: ["a", "b"], metadata={"source": "code: someone/toy (toy.py)"})
    mode: str = "end"
    # a comment on its own line is no field's help
    note: str = "x#y"  # '#' inside the default; this is the help


class _Toy(Method):
    """Toy: a head for the registry tests (Nobody et al., 'Toys', 2099). A second sentence."""

    Config = _ToyConfig
    train_defaults = {"epochs": 7, "lr": 0.5}

    @classmethod
    def train_defaults_for(cls, shots=None):
        """Toy schedule: 3 epochs at 1 shot, else 7."""
        return {**cls.train_defaults, "epochs": 3 if shots == 1 else 7}


@pytest.fixture
def toy(monkeypatch):
    available_methods()  # the package's methods first: the copy below is restored after the test
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    register_method("toy_head")(_Toy)
    return "toy_head"


def test_listing_names_every_method_with_its_first_sentence(run_cli, toy):
    code, out, err = run_cli("methods")
    assert code == 0, err
    rows = dict(line.split(None, 1) for line in out.splitlines())
    assert list(rows) == available_methods()
    assert rows["toy_head"] == "Toy: a head for the registry tests (Nobody et al., 'Toys', 2099)."
    assert "CoOp" in rows["coop"] and "Learning to Prompt for Vision-Language Models" in rows["coop"]


def test_one_method_prints_every_option_with_help_and_source(run_cli, toy):
    code, out, err = run_cli("methods", "toy_head", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["description"] == "Toy: a head for the registry tests (Nobody et al., 'Toys', 2099). A second sentence."
    assert info["options"] == [
        {"name": "width", "type": "int", "default": "4", "help": "hidden units of the toy head", "source": ""},
        {"name": "scale", "type": "float", "default": "10.0", "help": "logit scale tau", "source": "paper"},
        {"name": "names", "type": "list", "default": '["a", "b"]', "help": "", "source": "code: someone/toy (toy.py)"},
        {"name": "mode", "type": "str", "default": '"end"', "help": "", "source": ""},
        {"name": "note", "type": "str", "default": '"x#y"', "help": "'#' inside the default; this is the help",
         "source": ""}]
    per_k = {f"K={k}": {"epochs": 3 if k == 1 else 7, "lr": 0.5} for k in (1, 2, 4, 8, 16)}
    assert info["train_defaults"] == {**per_k, "not K-shot": {"epochs": 7, "lr": 0.5}}
    assert info["train_defaults_note"] == "Toy schedule: 3 epochs at 1 shot, else 7."

    code, out, err = run_cli("methods", "toy_head")  # the same as tables
    assert code == 0, err
    for text in ("hidden units of the toy head", "logit scale tau", "code: someone/toy (toy.py)", "source",
                 "Toy schedule: 3 epochs at 1 shot, else 7.", "not K-shot"):
        assert text in out, text


def test_coop_shows_its_config_fields_and_paper_schedule(run_cli):
    code, out, err = run_cli("methods", "coop", "--json")
    assert code == 0, err
    info = json.loads(out)
    cls = get_method_class("coop")
    fields = dataclasses.fields(cls.Config)
    assert [o["name"] for o in info["options"]] == [f.name for f in fields]
    for o, f in zip(info["options"], fields):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        assert json.loads(o["default"]) == (list(default) if isinstance(default, tuple) else default), f.name
        assert o["help"] == f.metadata.get("help", o["help"]) and o["source"] == f.metadata.get("source", "")
    assert info["train_defaults"]["K=16"] == cls.train_defaults_for(16)
    assert info["train_defaults"]["K=1"] == cls.train_defaults_for(1)
    assert info["train_defaults"]["K=1"]["epochs"] != info["train_defaults"]["K=16"]["epochs"]  # CoOp: by shots


def test_a_method_without_shot_dependent_defaults_shows_one_column(run_cli):
    code, out, err = run_cli("methods", "clip_adapter", "--json")
    assert code == 0, err
    expected = get_method_class("clip_adapter").train_defaults_for(None)
    assert json.loads(out)["train_defaults"] == {"all splits": expected}


def test_unknown_method_lists_the_names(run_cli):
    code, out, err = run_cli("methods", "coopp")
    assert code == 2 and out == ""
    assert err == f"error: unknown method 'coopp': expected one of {', '.join(available_methods())}\n"
