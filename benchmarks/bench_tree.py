#!/usr/bin/env python3
"""Benchmark a tree snapshot of 10 processes against reading their 10 smaps_rollup files.

Builds a family of 10 processes (a parent that touched `--mib` MiB, and 9 forked children, each of which
writes its own `--mib`/4 MiB of it and keeps sharing the rest), then times, in the same run and in a shuffled
order each round:

- `snapshot(root, tree=True)`: the whole tree stopped together, totals summed, the tree's own USS (with
  visible PFNs and page counts it reads kpagecount; otherwise the per-process USS sum);
- `snapshot(root, tree=True, freeze=False)`: the same without stopping anything;
- ten `snapshot(pid)` calls, one process at a time (each stopped on its own);
- reading and parsing the ten `/proc/PID/smaps_rollup` files (nothing stopped, no tree USS).

Prints the median of each and its ratio to the smaps_rollup reads.

    python3 benchmarks/bench_tree.py                 # 10 processes, 64 MiB, 15 rounds
    python3 benchmarks/bench_tree.py --mib 256 --rounds 21
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

try:
    import pagewalk
except ImportError:  # not installed: use the repository's source tree
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))
    import pagewalk

from pagewalk.tree import descendants

FAMILY = """
import mmap, os, signal, sys
mib, children = int(sys.argv[1]), int(sys.argv[2])
area = mmap.mmap(-1, mib << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
area.write(b"p" * (mib << 20))
for number in range(children):
    ready_r, ready_w = os.pipe()
    if os.fork() == 0:
        own = (mib << 20) // 4
        area[:own] = bytes([number]) * own  # copy-on-write: a quarter becomes this child's own
        os.write(ready_w, b"x")
        signal.pause()
        os._exit(0)
    os.read(ready_r, 1)
print("ready", flush=True)
signal.pause()
"""


def read_rollups(pids: list[int]) -> dict[int, dict[str, int]]:
    """Parse each process's smaps_rollup into kB values: what a tool without pagewalk would do."""
    result = {}
    for pid in pids:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            values = {}
            for line in rollup.read().splitlines()[1:]:
                name, value, *_ = line.split()
                values[name] = int(value)
            result[pid] = values
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=10, help="processes in the tree (default 10)")
    parser.add_argument("--mib", type=int, default=64, help="MiB the parent touches (default 64)")
    parser.add_argument("--rounds", type=int, default=15, help="rounds of every method (default 15)")
    args = parser.parse_args()
    family = subprocess.Popen(
        [sys.executable, "-c", FAMILY, str(args.mib), str(args.processes - 1)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert family.stdout is not None and family.stdout.readline() == "ready\n"
        pids = [family.pid, *descendants(family.pid)]
        assert len(pids) == args.processes, pids
        methods: dict[str, Callable[[], object]] = {
            "snapshot(tree=True)": lambda: pagewalk.snapshot(family.pid, tree=True),
            "snapshot(tree=True, freeze=False)": lambda: pagewalk.snapshot(family.pid, tree=True, freeze=False),
            f"{len(pids)} x snapshot(pid)": lambda: [pagewalk.snapshot(pid) for pid in pids],
            f"{len(pids)} x smaps_rollup": lambda: read_rollups(pids),
        }
        times: dict[str, list[float]] = {name: [] for name in methods}
        for method in methods.values():  # warm up: imports, capability probes, page cache
            method()
        for _ in range(args.rounds):
            order = list(methods)
            random.shuffle(order)
            for name in order:
                start = time.perf_counter()
                methods[name]()
                times[name].append(time.perf_counter() - start)
        tree = pagewalk.snapshot(family.pid, tree=True)
        rollups = read_rollups(pids)
    finally:
        os.killpg(family.pid, signal.SIGKILL)
        family.wait()
    caps = pagewalk.capabilities()
    print(
        f"{len(pids)} processes, parent {args.mib} MiB touched, each child {args.mib // 4} MiB copied; "
        f"kernel {caps.kernel}, {os.cpu_count()} CPUs, PFNs {'visible' if caps.pfn_visible else 'hidden'}, "
        f"{args.rounds} rounds, medians"
    )
    baseline = statistics.median(times[f"{len(pids)} x smaps_rollup"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:<36} {median * 1000:9.2f} ms  {median / baseline:6.2f}x smaps_rollup")
    summed = sum(values["Rss:"] for values in rollups.values()) * 1024
    print(
        f"tree rss {tree.rss >> 20} MiB (smaps_rollup sum {summed >> 20} MiB), tree uss {tree.uss >> 20} MiB, "
        f"sum of per-process uss {sum(snap.uss for snap in tree.processes.values()) >> 20} MiB"  # type: ignore[attr-defined]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
