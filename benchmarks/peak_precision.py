#!/usr/bin/env python3
"""How far the kernel's RSS high-water mark (VmHWM) is from a page walk, on this kernel and machine.

A child maps and touches N MiB, and is snapshotted (stopped) while it holds them: the walked RSS is the true
peak. It then unmaps them, which makes the kernel raise VmHWM from its per-CPU batched RSS counters. The
difference VmHWM - walked RSS is printed for several sizes and rounds, in pages.

    python3 benchmarks/peak_precision.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

try:
    import pagewalk
except ImportError:  # not installed: use the repository's source tree
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))
    import pagewalk

from pagewalk import tracking

CHILD = """
import mmap, sys
held = None
print("ready", flush=True)
for line in sys.stdin:
    verb, mib = line.split()
    if verb == "hold":
        held = mmap.mmap(-1, int(mib) << 20)
        for offset in range(0, int(mib) << 20, mmap.PAGESIZE):
            held[offset] = 1
    else:
        held.close()
        held = None
    print("ok", flush=True)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    child.stdout.readline()

    def say(line: str) -> None:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(line + "\n")
        child.stdin.flush()
        child.stdout.readline()

    page = pagewalk.capabilities().page_size
    errors = []
    try:
        for _ in range(args.rounds):
            for mib in (1, 2, 5, 16, 50, 100, 200):
                tracking.clear_refs(child.pid, tracking.CLEAR_PEAK)
                say(f"hold {mib}")
                walked = pagewalk.snapshot(child.pid).rss  # the true RSS at the peak, the process stopped
                say(f"free {mib}")
                high_water = tracking.read_peak(child.pid)
                assert high_water is not None
                errors.append((high_water - walked) // page)
                print(f"{mib:>4} MiB held: walked {walked >> 10} KiB, VmHWM {high_water >> 10} KiB, "
                      f"VmHWM - walked {errors[-1]:+d} pages")  # fmt: skip
    finally:
        child.kill()
        child.wait()
    cpus = os.cpu_count() or 1
    bound = 3 * cpus * max(32, 2 * cpus)
    print(f"kernel {pagewalk.capabilities().kernel}, {cpus} CPUs: VmHWM - walked RSS from {min(errors):+d} to "
          f"{max(errors):+d} pages; bound from the counter batches: +-{bound} pages")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
