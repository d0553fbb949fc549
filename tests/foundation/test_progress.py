"""Progress: a bar on a terminal, plain lines in a log (not carriage-return bars), silent when asked
or under TQDM_DISABLE."""

from __future__ import annotations

import io
import sys

from conceptclip.progress import LineProgress, progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_on_a_terminal_lines_in_a_log_and_switches(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    term = _Terminal()
    bar = progress(range(3), file=term)
    assert not bar.disable and not isinstance(bar, LineProgress)
    assert isinstance(progress(range(3), file=io.StringIO()), LineProgress)  # a log file: lines, no \r spam
    assert progress(range(3), file=term, enabled=False).disable
    assert progress(range(3), file=io.StringIO(), enabled=False).disable
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert progress(range(3), file=term).disable
    assert list(progress(range(3), file=sys.stderr)) == [0, 1, 2]  # a disabled bar still iterates


def test_log_lines_every_tenth_with_postfix(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    log = io.StringIO()
    bar = progress(range(20), file=log, desc="training coop", unit="epoch")
    seen = []
    for i in bar:
        seen.append(i)
        bar.set_postfix(loss=f"{1 / (i + 1):.3f}")
    bar.close()
    lines = log.getvalue().splitlines()
    assert seen == list(range(20)) and "\r" not in log.getvalue()
    assert len(lines) == 10  # one per tenth of the work
    assert lines[0].startswith("training coop: 2/20 epoch (10%), ") and lines[0].endswith("loss=0.500")
    assert lines[-1].startswith("training coop: 20/20 epoch (100%), ") and lines[-1].endswith("loss=0.050")


def test_resumed_work_counts_from_initial(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    log = io.StringIO()
    list(progress(range(8, 10), file=log, desc="training", unit="epoch", initial=8, total=10))
    assert log.getvalue().splitlines()[-1].startswith("training: 10/10 epoch (100%)")
