#!/usr/bin/env python3
"""What walking empty page tables costs PAGEMAP_SCAN, next to smaps_rollup's walk of the same tables.

A sparse address space (T3 of bench_snapshot.py: a 64 GiB reservation with pages touched in 128 blocks) has a
page-middle-directory table under every GiB it touches, and almost all of their entries are empty. The kernel's
page walker calls PAGEMAP_SCAN's hole callback for each empty entry; smaps_rollup has no such callback and skips
them. So a snapshot of a sparse process pays, in the kernel, for entries that hold nothing, and smaps_rollup
does not: that is most of T3's "one PAGEMAP_SCAN" floor. This script shows that cost alone.

Two children each touch one page in each of 128 evenly spaced blocks of a reservation, one of `--size` GiB and
one of a quarter of that. Both have 128 page tables of 512 entries (one per touched page), so the difference
between them is the walk over the larger one's extra empty page-middle-directory entries, timed for each
method in shuffled rounds in the same run.

    python3 benchmarks/bench_scan_holes.py                 # about ten seconds
    python3 benchmarks/bench_scan_holes.py --size 256 --rounds 301
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import statistics
import time
from collections.abc import Callable

from bench_snapshot import PAGE, GiB, Target, start_target  # sets up the import of pagewalk from the tree

import pagewalk

BLOCKS = 128  # as T3: the child touches `touched // 128` bytes at the start of each of 128 evenly spaced blocks


def reservation(pid: int) -> tuple[int, int]:
    """The child's largest mapping: its reservation."""
    largest = max(pagewalk.procfs.read_maps(pid), key=lambda m: m.end - m.start)
    return largest.start, largest.end


def read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def empty_entries(start: int, end: int) -> tuple[int, int]:
    """The page-middle-directory tables the touched blocks of the reservation `[start, end)` need, and how many
    of their entries inside it are empty (each maps 2 MiB; one per block holds the touched page)."""
    pmd, pud = 2 << 20, 1 << 30
    stride = (end - start) // BLOCKS
    tables = sorted({(start + block * stride) // pud for block in range(BLOCKS)})
    inside = sum((min(end, (t + 1) * pud) - max(start, t * pud)) // pmd for t in tables)
    return len(tables), inside - BLOCKS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="the reservation in GiB (default 64, as T3)")
    parser.add_argument("--rounds", type=int, default=201)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    if not pagewalk.capabilities().pagemap_scan:
        parser.exit(1, "this kernel has no PAGEMAP_SCAN (Linux 6.7+)\n")
    sizes = {"small": args.size * GiB // 4, "large": args.size * GiB}
    children = {name: start_target(Target(name, "", "sparse", size, BLOCKS * PAGE)) for name, size in sizes.items()}
    present = pagewalk.bits.PAGE_IS_PRESENT | pagewalk.bits.PAGE_IS_SWAPPED
    methods: dict[str, Callable[[], object]] = {}
    empty: dict[str, int] = {}
    for name, child in children.items():
        fd = os.open(f"/proc/{child.pid}/pagemap", os.O_RDONLY)
        start, end = reservation(child.pid)
        tables, empty[name] = empty_entries(start, end)
        print(
            f"{name}: {sizes[name] // GiB} GiB, one page touched in each of {BLOCKS} blocks: {tables} page-middle-"
            f"directory tables, {empty[name]:,} of their entries empty"
        )
        methods[f"PAGEMAP_SCAN, {name}"] = functools.partial(
            pagewalk.scan.pagemap_scan, fd, start, end, category_anyof_mask=present, return_mask=present
        )
        methods[f"smaps_rollup, {name}"] = functools.partial(read_file, f"/proc/{child.pid}/smaps_rollup")
    times: dict[str, list[float]] = {name: [] for name in methods}
    rng = random.Random(args.seed)
    for round_ in range(args.rounds + 1):
        order = list(methods)
        rng.shuffle(order)
        for name in order:
            began = time.perf_counter()
            methods[name]()
            if round_:  # the first round warms up
                times[name].append(time.perf_counter() - began)
    print(f"{args.rounds} rounds, shuffled; medians in ms")
    median = {name: statistics.median(values) * 1e3 for name, values in times.items()}
    for name, value in median.items():
        print(f"  {name:22s} {value:7.3f}")
    extra = empty["large"] - empty["small"]
    cost = {
        method: median[f"{method}, large"] - median[f"{method}, small"] for method in ("PAGEMAP_SCAN", "smaps_rollup")
    }
    print(f"The large reservation's {extra:,} more empty entries cost:")
    for method, value in cost.items():
        print(f"  {method:14s} {value:6.3f} ms, {value * 1e6 / extra:5.1f} ns an entry")
    if cost["smaps_rollup"] > 0:
        print(f"  PAGEMAP_SCAN / smaps_rollup: {cost['PAGEMAP_SCAN'] / cost['smaps_rollup']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
