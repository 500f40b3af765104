#!/usr/bin/env python3
"""What a freeze costs: the ptrace freeze (`pagewalk.freeze.frozen`) next to the SIGSTOP freeze it replaced.

For targets of 1, 16 and 256 threads (each thread blocked in a sleep, as a server's idle workers), times an
empty freeze (stop every thread, resume) with each method, and a whole `snapshot()` of a small process, in
alternating rounds in the same run. Prints medians in microseconds and the ratio new/old.

    python3 benchmarks/bench_freeze.py                 # about ten seconds
    python3 benchmarks/bench_freeze.py --rounds 500
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

try:
    import pagewalk
except ImportError:  # not installed: use the repository's source tree
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))
    import pagewalk

from pagewalk import procfs
from pagewalk.freeze import frozen

TARGET = """
import sys, threading, time
for _ in range(int(sys.argv[1]) - 1):
    threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
print("ready", flush=True)
sys.stdin.readline()
"""


@contextlib.contextmanager
def sigstop_frozen(pid: int, timeout: float = 2.0) -> Iterator[bool]:
    """The previous freeze, for comparison: SIGSTOP, poll every thread's state, SIGCONT."""
    os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + timeout
        while not all(state in "Tt" for state in procfs.thread_states(pid)):
            if time.monotonic() > deadline:
                break
            os.sched_yield()
        yield True
    finally:
        os.kill(pid, signal.SIGCONT)


def median_us(action: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def empty_freeze(freezer: Callable[[], contextlib.AbstractContextManager[object]]) -> Callable[[], None]:
    def run() -> None:
        with freezer():
            pass

    return run


def compare(pid: int, threads: int, rounds: int) -> None:
    old_us, new_us = [], []
    for _ in range(5):  # alternate, so load on the machine falls on both alike
        old_us.append(median_us(empty_freeze(lambda: sigstop_frozen(pid)), rounds // 5))
        new_us.append(median_us(empty_freeze(lambda: frozen([pid])), rounds // 5))
    before, after = statistics.median(old_us), statistics.median(new_us)
    print(f"{threads:>8} {'freeze and resume':<22} {before:>11.0f} {after:>10.0f} {after / before:>8.2f}")
    for name, freeze in (("snapshot() frozen", True), ("snapshot() unfrozen", False)):
        cost = median_us(lambda: pagewalk.snapshot(pid, freeze=freeze), max(rounds // 10, 5))  # noqa: B023
        print(f"{threads:>8} {name:<22} {'':>11} {cost:>10.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--threads", default="1,16,256")
    args = parser.parse_args()
    print(f"pagewalk {pagewalk.__version__}, Linux {os.uname().release}, {os.cpu_count()} CPUs, {args.rounds} rounds")
    print(f"{'threads':>8} {'what':<22} {'SIGSTOP us':>11} {'ptrace us':>10} {'new/old':>8}")
    for threads in (int(text) for text in args.threads.split(",")):
        target = subprocess.Popen(
            [sys.executable, "-c", TARGET, str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            assert target.stdout is not None and target.stdout.readline() == "ready\n"
            compare(target.pid, threads, args.rounds)
        finally:
            target.kill()
            target.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
