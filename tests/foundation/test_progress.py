"""Progress bars: off when asked, under TQDM_DISABLE, and when stderr is not a terminal (logs)."""

from __future__ import annotations

import io
import sys

from conceptclip.progress import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_shows_on_a_terminal_only_and_obeys_switches(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    term = _Terminal()
    assert not progress(range(3), file=term).disable
    assert progress(range(3), file=io.StringIO()).disable  # a log file: no carriage-return spam
    assert progress(range(3), file=term, enabled=False).disable
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert progress(range(3), file=term).disable
    assert list(progress(range(3), file=sys.stderr)) == [0, 1, 2]  # a disabled bar still iterates
