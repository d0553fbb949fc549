"""Progress for long work: a bar on a terminal, plain lines in a log, silent under TQDM_DISABLE=1.

On a terminal `progress` is a tqdm bar. When stderr (or the given `file`) is not a terminal — output
redirected to a log file, a CI job, `nohup` — carriage-return bars would fill the log, so it writes
one plain line at each tenth of the work (and at least once a minute), e.g.

    training coop: 10/50 epoch (20%), 3 s, loss=0.8123, val=0.667
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Iterable, Iterator, TextIO

from tqdm.auto import tqdm

LINE_EVERY_S = 60.0  # a progress line at least this often in logs (besides every tenth of the work)


class LineProgress:
    """The parts of tqdm's interface the project uses, writing plain progress lines to `file`."""

    disable = False

    def __init__(self, iterable: Iterable | None = None, *, desc: str = "", unit: str = "it", total: int | None = None,
                 initial: int = 0, file: TextIO | None = None, **_: Any) -> None:
        self.iterable = iterable
        self.desc, self.unit, self.file = desc, unit, file
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = initial + len(iterable)  # type: ignore[arg-type]
        self.total, self.n, self.initial = total, initial, initial
        self.postfix = ""
        self.t0 = self.last = time.monotonic()
        self.marks = ({math.ceil(total * k / 10) for k in range(1, 11)} if total else set())

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update(1)

    def __len__(self) -> int:
        return self.total or 0

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.n in self.marks or self.n == self.total or now - self.last >= LINE_EVERY_S:
            self.last = now
            self.write_line()

    def write_line(self) -> None:
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        of = f"/{self.total}" if self.total else ""
        post = f", {self.postfix}" if self.postfix else ""
        stream = self.file or sys.stderr
        print(f"{self.desc}: {self.n}{of} {self.unit}{pct}, {time.monotonic() - self.t0:.0f} s{post}",
              file=stream, flush=True)

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def progress(iterable: Iterable | None = None, *, enabled: bool = True, **kwargs: Any) -> Any:
    """`tqdm(iterable, **kwargs)` on a terminal; a `LineProgress` (plain lines) when the output stream
    is not a terminal; silent (a disabled tqdm that still iterates) when `enabled` is false or
    TQDM_DISABLE is set."""
    off = not enabled or os.environ.get("TQDM_DISABLE", "").lower() not in ("", "0", "false")
    if off:
        return tqdm(iterable, disable=True, **kwargs)
    stream = kwargs.get("file") or sys.stderr
    isatty = getattr(stream, "isatty", None)
    if not (callable(isatty) and isatty()):
        return LineProgress(iterable, **kwargs)
    return tqdm(iterable, **kwargs)
