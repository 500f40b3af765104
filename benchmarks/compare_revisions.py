#!/usr/bin/env python3
"""Time `snapshot()` of this tree against an earlier revision's, alternating in one process.

On a shared machine, two runs of `bench_snapshot.py` minutes apart differ by more than most changes do.
Here both versions snapshot the same target in one process, one after the other in alternating order, so
whatever slows the machine slows both. The earlier revision's `src/pagewalk` is exported with `git archive`
and imported as `pagewalk_base` (the package imports itself relatively, so it loads under any name).

    python3 benchmarks/compare_revisions.py e06dae8 --targets T0,T3,T4 --rounds 200
    python3 benchmarks/compare_revisions.py HEAD~3 --cold     # other work before each timed call

`--cold` runs `snapshot(flags=True)` and reads `smaps_rollup` before every timed call, as the shuffled rounds
of `bench_snapshot.py` do: a snapshot's fixed cost is mostly numpy calls, each several times dearer once
other work has evicted the caches.
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_snapshot as bench  # the targets and the smaps_rollup reader

import pagewalk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_revision(revision: str, into: str) -> Any:
    """Import `src/pagewalk` as it was at `revision`, under the name `pagewalk_base`."""
    archive = subprocess.run(
        ["git", "-C", ROOT, "archive", "--format=tar", revision, "src/pagewalk"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    os.rename(os.path.join(into, "src", "pagewalk"), os.path.join(into, "pagewalk_base"))
    sys.path.insert(0, into)
    return importlib.import_module("pagewalk_base")


def compare(target: bench.Target, calls: dict[str, Callable[[int], Any]], rounds: int, cold: bool) -> None:
    proc = bench.start_target(target)
    try:
        pid = proc.pid
        for call in calls.values():  # warm-up: imports, capability probes
            call(pid)
        times: dict[str, list[float]] = {name: [] for name in calls}
        names = list(calls)
        for round_ in range(rounds):
            for name in names if round_ % 2 else reversed(names):
                if cold:
                    pagewalk.snapshot(pid, flags=True)
                    bench.smaps_rollup(pid)
                started = time.perf_counter()
                calls[name](pid)
                times[name].append((time.perf_counter() - started) * 1e3)
        base = statistics.median(times[names[0]])
        for name in names:
            low, median = statistics.quantiles(times[name], n=5)[0], statistics.median(times[name])
            print(f"  {name:28s} 20th percentile {low:7.3f} ms  median {median:7.3f} ms  ({median / base:.2f}x)")
    finally:
        bench._kill(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revision", help="the earlier revision (a commit, tag or HEAD~N)")
    parser.add_argument("--targets", default="T0,T3,T4", help="comma-separated targets of bench_snapshot.py")
    parser.add_argument("--rounds", type=int, default=100, help="timed calls per version and target")
    parser.add_argument("--cold", action="store_true", help="other work before each call (needs root: flags)")
    parser.add_argument("--quick", action="store_true", help="the small targets of bench_snapshot.py --quick")
    args = parser.parse_args()
    targets = bench.make_targets(args.quick)
    if args.cold and (missing := pagewalk.capabilities().missing_for_flags()):
        print(f"--cold takes flags snapshots between the timed calls: {missing}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="pagewalk-revision-") as scratch:
        try:
            base = load_revision(args.revision, scratch)
        except subprocess.CalledProcessError as exc:
            print(f"cannot export src/pagewalk at {args.revision!r}: {exc.stderr.decode().strip()}", file=sys.stderr)
            return 2
        calls = {f"{args.revision} snapshot()": base.snapshot, "this tree snapshot()": pagewalk.snapshot}
        for name in args.targets.split(","):
            if name not in targets:
                print(f"unknown target {name!r}: choose from {', '.join(targets)}", file=sys.stderr)
                return 2
            print(f"{name}: {targets[name].what}{' (cold: after other work)' if args.cold else ''}")
            compare(targets[name], calls, args.rounds, args.cold)
    return 0


if __name__ == "__main__":
    sys.exit(main())
