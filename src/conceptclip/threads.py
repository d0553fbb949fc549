"""Torch CPU threads for the commands (`--threads` on train, demo, bench).

Default ("auto", 0 in no command): half the CPU cores, at most 4, at least 1. On a 2-core machine that
is one thread, which ran the demo in 33 s where torch's default (all cores) took 147 s beside other
work: the small batches of prompt learning gain little from more threads and lose much to contention.
"""

from __future__ import annotations

import os

from conceptclip.errors import ConfigError

AUTO = -1


def auto_threads(cores: int | None = None) -> int:
    """Half the CPU cores (os.cpu_count()), between 1 and 4."""
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return max(1, min(4, cores // 2))


def set_threads(threads: int = AUTO) -> int:
    """Set torch's intra-op CPU threads: N > 0 exactly N, 0 torch's own default (left as it is),
    -1 (`AUTO`) `auto_threads()`. Returns the number in force."""
    import torch

    if threads < AUTO:
        raise ConfigError(f"--threads {threads}: expected a positive number, 0 (torch's default) or -1 (auto)")
    if threads == AUTO:
        threads = auto_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


THREADS_HELP = ("torch CPU threads: N, 0 = torch's default (all cores), -1 = auto (half the cores, 1-4; one "
                "thread on a 2-core machine)")
