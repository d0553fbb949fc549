"""`conceptclip --help` start-up: wall and CPU time of the command line before and after, side by side.

Each side is the `src/` tree of a git revision (exported with `git archive` into a temporary folder) or
the working tree (`WORKTREE`), run as the console script runs it (`from conceptclip.cli import main;
main()` with `--help`) in a fresh interpreter, HF_HUB_OFFLINE=1 and one thread. The runs interleave
(A, B, A, B, ...) so load on the machine falls on both sides alike; CPU time is the child's user +
system time (resource.getrusage of the children). Also printed: whether torch was imported.

    python benchmarks/bench_cli_startup.py [--before 368ced2] [--after WORKTREE] [--also e7ce61e] [--runs 5]

Prints one row per side (median and min wall, median CPU, torch imported?) and the ratios against
the first side.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HELP = ("import sys; from conceptclip.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    code = e.code\n"
        "print('torch' in sys.modules, file=sys.stderr); sys.exit(code)")


def source_tree(rev: str, tmp: Path) -> Path:
    """The `src` folder of `rev` ("WORKTREE": this checkout's own)."""
    if rev == "WORKTREE":
        return REPO / "src"
    dest = tmp / rev
    dest.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "src"


def one_run(src: Path) -> tuple[float, float, bool]:
    """(wall s, CPU s, torch imported) of one `conceptclip --help` in a fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", HELP], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0 or "Usage:" not in res.stdout:
        raise SystemExit(f"conceptclip --help failed with {src}: {res.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, res.stderr.strip().splitlines()[-1] == "True"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", default="368ced2", help="git revision of the 'before' side")
    ap.add_argument("--after", default="WORKTREE", help="git revision of the 'after' side (WORKTREE: this checkout)")
    ap.add_argument("--also", nargs="*", default=[], help="more revisions to time (e.g. e7ce61e, the single cli.py)")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    sides = [args.before, args.after, *args.also]
    with tempfile.TemporaryDirectory() as tmp:
        trees = {rev: source_tree(rev, Path(tmp)) for rev in sides}
        for src in trees.values():  # one untimed run each: bytecode compiled, files in the page cache
            one_run(src)
        runs: dict[str, list[tuple[float, float, bool]]] = {rev: [] for rev in sides}
        for _ in range(args.runs):
            for rev in sides:
                runs[rev].append(one_run(trees[rev]))
    base_wall = statistics.median(w for w, _, _ in runs[args.before])
    base_cpu = statistics.median(c for _, c, _ in runs[args.before])
    print(f"`conceptclip --help`, {args.runs} runs per side (interleaved), Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs\n")
    print("| side | wall median (s) | wall min (s) | CPU median (s) | torch imported | wall / before | CPU / before |")
    print("|---|---|---|---|---|---|---|")
    for rev in sides:
        walls, cpus = [w for w, _, _ in runs[rev]], [c for _, c, _ in runs[rev]]
        torch = "yes" if any(t for _, _, t in runs[rev]) else "no"
        label = "working tree" if rev == "WORKTREE" else rev
        print(f"| {label} | {statistics.median(walls):.3f} | {min(walls):.3f} | {statistics.median(cpus):.3f} | "
              f"{torch} | {statistics.median(walls) / base_wall:.2f} | {statistics.median(cpus) / base_cpu:.2f} |")


if __name__ == "__main__":
    main()
