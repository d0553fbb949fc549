"""What the command line prints: install hints keep their extras, warnings are one line, the thread
default, the alignment pool held out of every split part, and the demo's zero-shot caveat."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch


def test_install_hint_keeps_the_extra(monkeypatch, capsys):
    """rich read `[web]` in "conceptclip[web]" as markup and printed `"conceptclip"`."""
    from conceptclip.cli import main

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # the web extra is not installed
    monkeypatch.setattr(sys, "argv", ["conceptclip", "serve", "--run", "somewhere"])
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert 'pip install -c constraints.txt "conceptclip[web]"' in err and err.startswith("error: ")


def test_error_text_with_brackets_is_printed_verbatim(monkeypatch, capsys):
    from conceptclip import cli
    from conceptclip.errors import ConfigError

    def boom(**_) -> None:
        raise ConfigError('open_clip: pip install "conceptclip[open_clip]" ([bold]not markup[/bold])')

    monkeypatch.setattr(cli, "app", boom)
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    with pytest.raises(SystemExit):
        cli.main()
    assert 'pip install "conceptclip[open_clip]" ([bold]not markup[/bold])' in capsys.readouterr().err


def test_warnings_print_as_one_clean_line(monkeypatch):
    from conceptclip import cli

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    monkeypatch.setattr(sys, "argv", ["conceptclip", "methods"])
    with pytest.raises(SystemExit) as exc:  # main() exits with the command's code (0: success)
        cli.main()
    assert exc.value.code == 0
    assert warnings.formatwarning is cli._one_line_warning
    text = warnings.formatwarning("backbone 'lite' without aligned heads: image and text spaces are not aligned\n"
                                  "   yet; run `conceptclip align`", UserWarning, "/x/conceptclip/backbones/lite.py", 217,
                                  "    warnings.warn(...)")
    assert text == ("warning: backbone 'lite' without aligned heads: image and text spaces are not aligned yet; "
                    "run `conceptclip align`\n")


def test_thread_default_is_half_the_cores_between_1_and_4():
    from conceptclip.errors import ConfigError
    from conceptclip.threads import auto_threads, set_threads

    assert [auto_threads(n) for n in (1, 2, 3, 4, 8, 16, 64)] == [1, 1, 1, 2, 4, 4, 4]
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
        assert set_threads(-1) == auto_threads()
        assert set_threads(0) == torch.get_num_threads()  # 0 leaves torch's setting alone
        with pytest.raises(ConfigError, match="--threads -2"):
            set_threads(-2)
    finally:
        torch.set_num_threads(before)


def test_align_pool_is_held_out_of_every_part(image_folder):
    from conceptclip.data import from_folder, holdout_split

    ds = from_folder(image_folder)  # 3 classes x 10 images
    plain, held = holdout_split(ds), holdout_split(ds, align=0.2)
    assert "align" not in plain.parts and "align" not in plain.params  # the default pools are unchanged
    assert held.params["align"] == 0.2
    parts = held.parts
    ids = [i for p in parts.values() for i in p]
    assert len(ids) == len(set(ids)) == 30  # disjoint, and every image is somewhere
    per_class = {c: sum(ds.by_id(i).label == c for i in parts["align"]) for c in range(3)}
    assert per_class == {0: 2, 1: 2, 2: 2}  # stratified: 20% of each class
    held.check_disjoint()


def test_demo_says_what_its_zeroshot_has_seen():
    from conceptclip.demo import zeroshot_note

    note = zeroshot_note("train", 100)
    assert "aligned on the 100 train-pool images' captions" in note and "not CLIP's zero-shot" in note
    assert "--align-on disjoint" in note
    assert "no train, val or test part holds" in zeroshot_note("disjoint", 40)
