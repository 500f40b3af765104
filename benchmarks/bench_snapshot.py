#!/usr/bin/env python3
"""Benchmark pagewalk.snapshot against smaps_rollup, psutil and the pagemap doc's naive procedure.

Builds target processes one at a time (T1 1 GiB touched, T2 8 GiB touched, T3 a 64 GiB MAP_NORESERVE
reservation with 100 MiB touched, T4 1 GiB of THP), times every method for several rounds in shuffled
order in the same run, and prints medians, ratios and the project's performance goals. See README.md.

    python3 benchmarks/bench_snapshot.py --quick           # smoke run, seconds
    python3 benchmarks/bench_snapshot.py                   # full run (T2 needs 8 GiB free)
    python3 benchmarks/bench_snapshot.py --targets T1,T3 --rounds 11 --json out.json
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import json
import os
import platform
import random
import select
import signal
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

try:
    import pagewalk
except ImportError:  # not installed: use the repository's source tree
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))
    import pagewalk

import numpy as np
import psutil

# The parts of the library the benchmark times alone or instruments (the package loads them on first use).
import pagewalk.bits
import pagewalk.freeze
import pagewalk.procfs
import pagewalk.reader
import pagewalk.scan
import pagewalk.snapshot
import pagewalk.tree

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
PAGE = os.sysconf("SC_PAGE_SIZE")


# --- targets --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    what: str
    kind: str  # idle, dense, sparse or thp
    size: int  # bytes mapped
    touched: int  # bytes touched


def make_targets(quick: bool) -> dict[str, Target]:
    idle = Target("T0", "an idle Python process: the fixed cost of a snapshot", "idle", 0, 0)
    if quick:
        return {
            "T0": idle,
            "T1": Target("T1", "64 MiB anonymous, touched", "dense", 64 * MiB, 64 * MiB),
            "T2": Target("T2", "128 MiB anonymous, touched", "dense", 128 * MiB, 128 * MiB),
            "T3": Target("T3", "4 GiB MAP_NORESERVE, 8 MiB touched", "sparse", 4 * GiB, 8 * MiB),
            "T4": Target("T4", "64 MiB THP (MADV_HUGEPAGE)", "thp", 64 * MiB, 64 * MiB),
        }
    return {
        "T0": idle,
        "T1": Target("T1", "1 GiB anonymous, touched", "dense", 1 * GiB, 1 * GiB),
        "T2": Target("T2", "8 GiB anonymous, touched", "dense", 8 * GiB, 8 * GiB),
        "T3": Target("T3", "64 GiB MAP_NORESERVE, 100 MiB touched", "sparse", 64 * GiB, 100 * MiB),
        "T4": Target("T4", "1 GiB THP (MADV_HUGEPAGE, 2 MiB aligned)", "thp", 1 * GiB, 1 * GiB),
    }


# The child: map, touch, print "ready", block on stdin. It dies with the parent (PR_SET_PDEATHSIG and EOF).
# T3's touched bytes are spread over 128 evenly spaced blocks, so any 1/64 prefix holds exactly 1/64 of them.
CHILD = r"""
import ctypes, mmap, sys
ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
kind, size, touched = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
PAGE, HUGE = mmap.PAGESIZE, 2 << 20
if kind == "idle":
    print("ready", 0, flush=True)
    sys.stdin.read()
    sys.exit()
flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | (getattr(mmap, "MAP_NORESERVE", 0x4000) if kind == "sparse" else 0)
extra = HUGE if kind == "thp" else 0
m = mmap.mmap(-1, size + extra, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
base = ctypes.addressof(ctypes.c_char.from_buffer(m))
start = (-base) % HUGE if kind == "thp" else 0
if kind == "thp":
    m.madvise(mmap.MADV_HUGEPAGE)
if kind == "sparse":
    blocks = 128
    stride, length = size // blocks, touched // blocks // PAGE * PAGE
    for b in range(blocks):
        m[b * stride:b * stride + length:PAGE] = b"\x01" * (length // PAGE)
else:
    m[start:start + touched:PAGE] = b"\x01" * (touched // PAGE)
print("ready", base + start, flush=True)
for line in sys.stdin:  # "change": give every 100th touched page a new frame (freed, then written again)
    chosen = range(start, start + touched, 100 * PAGE)
    for offset in chosen:  # free them all first: a page freed and faulted at once gets its own frame back
        m.madvise(mmap.MADV_DONTNEED, offset, PAGE)
    for offset in chosen:
        m[offset] = 2
    print("changed", flush=True)
"""

# The churn child: `count` two-page read-write mappings, each kept apart from its neighbours by PROT_NONE, in
# one of two reservations; "churn" moves every one of them to the other reservation (removed there, added here).
CHURN_CHILD = r"""
import ctypes, sys
ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
PAGE, count = 4096, int(sys.argv[1])
PRIVATE_ANON, FIXED, NORESERVE = 0x22, 0x10, 0x4000
span = count * 4 * PAGE
areas = [libc.mmap(None, span, 0, PRIVATE_ANON | NORESERVE, -1, 0) for _ in range(2)]
def place(area):
    for i in range(count):
        at = area + i * 4 * PAGE
        libc.mmap(at, 2 * PAGE, 3, PRIVATE_ANON | FIXED, -1, 0)
        ctypes.c_char.from_address(at).value = b"\x01"
place(areas[0])
print("ready", flush=True)
here = 0
for line in sys.stdin:
    libc.mmap(areas[here], span, 0, PRIVATE_ANON | FIXED | NORESERVE, -1, 0)  # one PROT_NONE mapping again
    here = 1 - here
    place(areas[here])
    print("churned", flush=True)
"""


class StopClock:
    """How long the target stays stopped: each freeze (`pagewalk.freeze.frozen`) a snapshot takes, timed from
    the call that stops the target to its resumption, recorded while the clock is installed."""

    USERS = ("pagewalk.snapshot", "pagewalk.tree")  # the modules that freeze, each holding the name `frozen`

    def __init__(self) -> None:
        self.spans: list[float] = []
        self.original = pagewalk.freeze.frozen

    def __enter__(self) -> StopClock:
        original, spans = self.original, self.spans

        @contextlib.contextmanager
        def timed(pids: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                with original(pids, **kwargs) as stopped:
                    yield stopped
            finally:
                spans.append((time.perf_counter() - t0) * 1e3)

        for name in self.USERS:
            sys.modules[name].frozen = timed  # type: ignore[attr-defined]
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.USERS:
            sys.modules[name].frozen = self.original  # type: ignore[attr-defined]

    def take(self) -> list[float]:
        spans, self.spans[:] = list(self.spans), []
        return spans


_LIVE: list[subprocess.Popen[bytes]] = []


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()  # SIGKILL works on a SIGSTOPped child too
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    if proc in _LIVE:
        _LIVE.remove(proc)


def _kill_all() -> None:
    for proc in list(_LIVE):
        _kill(proc)


atexit.register(_kill_all)


def start_target(target: Target, timeout: float = 300.0) -> subprocess.Popen[bytes]:
    return start_child(target.name, CHILD, [target.kind, str(target.size), str(target.touched)], timeout)


def start_child(name: str, code: str, args: list[str], timeout: float = 300.0) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-S", "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    _LIVE.append(proc)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline().decode() if ready else ""
    if not line.startswith("ready"):
        _kill(proc)
        raise RuntimeError(f"{name}: the target did not become ready (exit code {proc.poll()})")
    return proc


def tell(proc: subprocess.Popen[bytes], command: bytes, answer: bytes) -> None:
    """Send the child a command line and wait for its answer."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(command + b"\n")
    proc.stdin.flush()
    assert proc.stdout.readline().startswith(answer)


# --- the methods ----------------------------------------------------------------------------------------


def smaps_rollup(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
        text = f.read()
    values = {}
    for line in text.splitlines()[1:]:
        key, _, rest = line.partition(b":")
        parts = rest.split()
        if parts:
            values[key.decode()] = int(parts[0])  # kB
    return values


def rollup_uss(values: dict[str, int]) -> int:
    return sum(v for k, v in values.items() if k.startswith("Private_")) * KiB


def read_maps_ranges(pid: int) -> list[tuple[int, int]]:
    ranges = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            lo, hi = line.split(None, 1)[0].split("-")
            ranges.append((int(lo, 16) // PAGE, int(hi, 16) // PAGE))
    return ranges


def naive_procedure(pid: int, sample: int = 1, small: int = 1 << 16) -> dict[str, Any]:
    """The pagemap doc's procedure as written: per page of each VMA, seek + read 8 bytes of pagemap, and
    for present pages seek + read 8 bytes of kpagecount; USS = pages with count 1.

    With `sample` > 1, VMAs of more than `small` pages are walked only over their first 1/sample and their
    time and USS are extrapolated by pages; smaller VMAs are walked whole."""
    pfn_mask = (1 << 55) - 1
    pm = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    kc = os.open("/proc/kpagecount", os.O_RDONLY)

    def walk(lo: int, stop: int) -> tuple[int, int]:
        walked = uss_pages = 0
        for vpn in range(lo, stop):
            os.lseek(pm, vpn * 8, os.SEEK_SET)
            raw = os.read(pm, 8)
            if len(raw) < 8:  # [vsyscall]: above the task size, end of file
                break
            walked += 1
            entry = int.from_bytes(raw, "little")
            if entry >> 63:
                os.lseek(kc, (entry & pfn_mask) * 8, os.SEEK_SET)
                if int.from_bytes(os.read(kc, 8), "little") == 1:
                    uss_pages += 1
        return walked, uss_pages

    # [whole VMAs, sampled VMAs]: seconds, pages walked, pages in the VMAs, USS pages
    part = [[0.0, 0, 0, 0], [0.0, 0, 0, 0]]
    try:
        t0 = time.perf_counter()
        ranges = read_maps_ranges(pid)
        part[0][0] += time.perf_counter() - t0
        for lo, hi in ranges:
            sampled = sample > 1 and hi - lo > small
            stop = lo + -(-(hi - lo) // sample) if sampled else hi
            t0 = time.perf_counter()
            walked, uss_pages = walk(lo, stop)
            p = part[sampled]
            p[0] += time.perf_counter() - t0
            p[1] += walked
            p[2] += hi - lo if walked == stop - lo else walked
            p[3] += uss_pages
    finally:
        os.close(pm)
        os.close(kc)
    scale = part[1][2] / part[1][1] if part[1][1] else 0.0
    return {
        "ms": (part[0][0] + part[1][0] * scale) * 1e3,
        "measured_ms": (part[0][0] + part[1][0]) * 1e3,
        "pages_walked": part[0][1] + part[1][1],
        "pages_total": part[0][2] + part[1][2],
        "extrapolated": part[1][1] > 0,
        "uss": int((part[0][3] + part[1][3] * scale) * PAGE),
    }


def snapshot_methods() -> dict[str, Callable[[int], Any]]:
    return {
        "snapshot() USS-only": lambda pid: pagewalk.snapshot(pid),
        "snapshot(method=read)": lambda pid: pagewalk.snapshot(pid, method="read"),
        "snapshot(method=scan)": lambda pid: pagewalk.snapshot(pid, method="scan"),
        "snapshot(flags)": lambda pid: pagewalk.snapshot(pid, flags=True),
        "snapshot(flags,counts)": lambda pid: pagewalk.snapshot(pid, flags=True, counts=True),
    }


def all_methods(caps: pagewalk.Capabilities) -> dict[str, Callable[[int], Any]]:
    methods = snapshot_methods()
    if not caps.pagemap_scan:
        del methods["snapshot(method=scan)"]
    if caps.missing_for_flags():
        del methods["snapshot(flags)"]
    if caps.missing_for_flags() or caps.missing_for_pss():
        del methods["snapshot(flags,counts)"]
    methods["smaps_rollup read+parse"] = smaps_rollup
    methods["psutil memory_full_info"] = lambda pid: psutil.Process(pid).memory_full_info()
    return methods


ROLLUP, PSUTIL = "smaps_rollup read+parse", "psutil memory_full_info"


def floor_methods(pid: int, caps: pagewalk.Capabilities) -> dict[str, Callable[[int], Any]]:
    """The kernel's own costs a snapshot cannot avoid, each alone: stopping and resuming the target, reading
    its maps, one PAGEMAP_SCAN of its address space, one pread per mapped range of pagemap (or per huge page),
    and kpageflags for its present frames (or for as many frames in one run). They show where a goal lies
    below what the kernel charges."""
    from pagewalk import procfs  # the benchmark reaches into the library to time the kernel's parts alone

    snap = pagewalk.snapshot(pid)
    page = caps.page_size
    span = pagewalk.bits.pmd_pages(page)
    runs = snap.vpn_runs
    first = runs.first.tolist()
    end = (runs.first + runs.lengths).tolist()
    buffer = memoryview(bytearray(8 * max([b - a for a, b in zip(first, end, strict=True)] + [1])))
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    atexit.register(os.close, fd)
    maps = procfs.read_maps(pid)
    low, high = min(m.start for m in maps), max(m.end for m in maps if m.path != "[vsyscall]")

    def freeze(_: int) -> None:
        with pagewalk.freeze.frozen([pid]):
            pass

    def entries(_: int) -> None:
        for a, b in zip(first, end, strict=True):
            os.preadv(fd, [buffer[: 8 * (b - a)]], 8 * a)

    methods: dict[str, Callable[[int], Any]] = {
        "kernel: stop+resume": freeze,
        "kernel: read maps": lambda _: procfs.read_maps(pid),
        "kernel: pagemap, each run": entries,
    }
    if caps.pagemap_scan:
        methods["kernel: one PAGEMAP_SCAN"] = lambda _: pagewalk.reader.scan_mapped_ranges(fd, low, high, page)
        huge = pagewalk.reader.scan_mapped_ranges(fd, low, high, page)
        huge = huge[(huge[:, 2] & np.uint64(pagewalk.bits.PAGE_IS_HUGE)) != 0]
        heads = [h for a, b in huge[:, :2].tolist() for h in range(-(-a // span) * span, b - span + 1, span)]
        if heads:

            def head_entries(_: int) -> None:
                pread = os.pread  # the cheapest way to read one entry
                for head in heads:
                    pread(fd, 8, 8 * head)

            # The rest of the target (its interpreter and libraries) is read run by run, as any reader must.
            rest = pagewalk.reader._subtract(
                list(zip(first, end, strict=True)), [(head, head + span) for head in heads]
            )

            def rest_entries(_: int) -> None:
                for a, b in rest:
                    os.preadv(fd, [buffer[: 8 * (b - a)]], 8 * a)

            # Finding them: a PAGEMAP_SCAN for present huge pages over the mappings that hold them.
            holding = [(m.start, m.end) for m in maps if any(m.start <= head * page < m.end for head in heads)]
            present_huge = pagewalk.bits.PAGE_IS_PRESENT | pagewalk.bits.PAGE_IS_HUGE

            def find_huge(_: int) -> None:
                for a, b in holding:
                    pagewalk.scan.pagemap_scan(fd, a, b, category_mask=present_huge)

            methods["kernel: PAGEMAP_SCAN, huge pages"] = find_huge
            methods["kernel: pagemap, one per huge page"] = head_entries
            methods["kernel: pagemap, runs outside them"] = rest_entries
    if not caps.missing_for_flags():
        present = snap.entries[snap.entries >= np.uint64(pagewalk.bits.PM_PRESENT)]
        pfns = present & np.uint64(pagewalk.bits.PM_PFN_MASK)
        contiguous = np.arange(int(pfns.min()), int(pfns.min()) + len(pfns), dtype=np.uint64)
        methods["kernel: kpageflags, its frames"] = lambda _: pagewalk.reader.lookup_pfns(["/proc/kpageflags"], pfns)
        methods["kernel: kpageflags, one run"] = lambda _: pagewalk.reader.lookup_pfns(["/proc/kpageflags"], contiguous)
    return methods


# --- measuring ------------------------------------------------------------------------------------------


@dataclass
class Result:
    times_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)  # this process's CPU time, the kernel's work for it included
    retained_per_page: float | None = None
    peak_per_page: float | None = None
    extrapolated: bool = False
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def min(self) -> float:
        return min(self.times_ms)

    @property
    def cpu(self) -> float | None:
        return statistics.median(self.cpu_ms) if self.cpu_ms else None


def time_rounds(
    pid: int, methods: dict[str, Callable[[int], Any]], rounds: int, rng: random.Random
) -> dict[str, Result]:
    results = {name: Result() for name in methods}
    for fn in methods.values():  # warm-up: capabilities probe, imports, page cache of /proc
        fn(pid)
    names = list(methods)
    for _ in range(rounds):
        rng.shuffle(names)
        gc.collect()
        for name in names:
            t0, c0 = time.perf_counter(), time.process_time()
            methods[name](pid)
            results[name].times_ms.append((time.perf_counter() - t0) * 1e3)
            results[name].cpu_ms.append((time.process_time() - c0) * 1e3)
    return results


def snapshot_memory(pid: int, fn: Callable[[int], Any]) -> tuple[float, float, int]:
    """(retained bytes, peak traced bytes during the call) per present page, and the present pages."""
    gc.collect()
    tracemalloc.start()
    try:
        snap = fn(pid)
        # Everything the snapshot still holds (arrays, regions, ...) while it is alive, and the call's peak.
        retained, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    present = max(snap.present_pages, 1)
    return retained / present, peak / present, snap.present_pages


def stop_times(pid: int, caps: pagewalk.Capabilities, rounds: int) -> dict[str, list[float]]:
    """Milliseconds the target stayed stopped per call: per snapshot, and per measure() (both its snapshots)."""

    def measure_once() -> None:
        with pagewalk.measure(pid):
            pass

    calls: dict[str, Callable[[], Any]] = {"snapshot()": lambda: pagewalk.snapshot(pid)}
    if not caps.missing_for_flags():
        calls["snapshot(flags)"] = lambda: pagewalk.snapshot(pid, flags=True)
    calls["measure()"] = measure_once
    stopped: dict[str, list[float]] = {}
    with StopClock() as clock:
        for name, call in calls.items():
            call()  # warm-up
            clock.take()
            stopped[name] = []
            for _ in range(rounds):
                call()
                stopped[name].append(sum(clock.take()))
    return stopped


def thp_check(pid: int, target: Target) -> str | None:
    huge = smaps_rollup(pid).get("AnonHugePages", 0) * KiB
    if huge < 0.95 * target.touched:
        expected = target.touched / MiB
        return f"WARNING: {target.name} AnonHugePages is {huge / MiB:.0f} MiB, expected about {expected:.0f} MiB"
    return None


def run_target(
    target: Target, args: argparse.Namespace, caps: pagewalk.Capabilities, rng: random.Random
) -> dict[str, Any]:
    t0 = time.perf_counter()
    proc = start_target(target)
    try:
        pid = proc.pid
        build_s = time.perf_counter() - t0
        warning = thp_check(pid, target) if target.kind == "thp" else None
        methods = all_methods(caps)
        if not args.no_floors:
            methods.update(floor_methods(pid, caps))
        results = time_rounds(pid, methods, args.rounds, rng)
        present = 0
        for name, fn in snapshot_methods().items():
            if name in results:
                retained, peak, present = snapshot_memory(pid, fn)
                results[name].retained_per_page, results[name].peak_per_page = retained, peak
        stopped = stop_times(pid, caps, args.rounds)
        if not args.no_naive and caps.kpagecount and caps.pfn_visible:
            sample = 64 if target.kind == "sparse" else 1
            naive = naive_procedure(pid, sample)
            r = Result([naive["ms"]], extrapolated=naive["extrapolated"])
            if naive["extrapolated"]:
                walked, total, measured = naive["pages_walked"], naive["pages_total"], naive["measured_ms"]
                r.note = f"extrapolated from {walked:,} of {total:,} pages ({measured:.0f} ms)"
            results["naive: seek+read per page"] = r
        snap = pagewalk.snapshot(pid)
        rollup = smaps_rollup(pid)
        info = psutil.Process(pid).memory_full_info()
        check = {
            "snapshot_uss": snap.uss,
            "snapshot_rss": snap.rss,
            "snapshot_thp": snap.thp,
            "auto_method": snap.method,
            "rollup_uss": rollup_uss(rollup),
            "rollup_rss": rollup.get("Rss", 0) * KiB,
            "rollup_anon_huge": rollup.get("AnonHugePages", 0) * KiB,
            "psutil_uss": info.uss,
        }
        if "naive: seek+read per page" in results:
            check["naive_uss"] = naive["uss"]
        return {
            "target": target,
            "results": results,
            "present": present,
            "check": check,
            "warning": warning,
            "build_s": build_s,
            "stopped_ms": stopped,
        }
    finally:
        _kill(proc)


def run_delta(target: Target, args: argparse.Namespace, caps: pagewalk.Capabilities, rng: random.Random) -> None:
    """The delta of a dense target in which 1% of the pages changed frame: diff() alone and with the
    after-snapshot, USS-only and with flags, against the smaps_rollup read of the same target."""
    proc = start_target(target)
    try:
        pid = proc.pid
        with_flags = caps.missing_for_flags() is None
        before = pagewalk.snapshot(pid)
        before_flags = pagewalk.snapshot(pid, flags=True) if with_flags else None
        tell(proc, b"change", b"changed")
        after = pagewalk.snapshot(pid)
        methods: dict[str, Callable[[int], Any]] = {
            "diff (USS-only snapshots)": lambda _: pagewalk.diff(before, after),
            "snapshot + diff": lambda p: pagewalk.diff(before, pagewalk.snapshot(p)),
            ROLLUP: smaps_rollup,
        }
        if before_flags is not None:
            after_flags = pagewalk.snapshot(pid, flags=True)
            methods["diff (flags snapshots)"] = lambda _: pagewalk.diff(before_flags, after_flags)
            methods["snapshot(flags) + diff"] = lambda p: pagewalk.diff(before_flags, pagewalk.snapshot(p, flags=True))
        results = time_rounds(pid, methods, args.rounds, rng)
        delta = pagewalk.diff(before_flags, after_flags) if before_flags is not None else pagewalk.diff(before, after)
        base = results[ROLLUP].median
        print(f"\nD: delta of {target.name} ({target.what}) with 1% of the pages given new frames")
        print(
            f"  pages appeared {delta.pages_appeared:,}, disappeared {delta.pages_disappeared:,}, "
            f"frames changed {delta.frames_changed if delta.frames_changed is not None else 'unknown'}"
        )
        print(f"  {'method':<33}{'median ms':>10}{'min ms':>10}{'/rollup':>9}")
        for name, result in results.items():
            print(f"  {name:<33}{result.median:10.2f}{result.min:10.2f}{ratio(result.median, base)}")
    finally:
        _kill(proc)


def run_churn(count: int, args: argparse.Namespace) -> dict[str, Any]:
    """diff() of two snapshots between which `count` mappings moved elsewhere (removed, and added there)."""
    proc = start_child("churn", CHURN_CHILD, [str(count)])
    try:
        before = pagewalk.snapshot(proc.pid)
        tell(proc, b"churn", b"churned")
        after = pagewalk.snapshot(proc.pid)
    finally:
        _kill(proc)
    delta = pagewalk.diff(before, after)  # warm-up
    wall, cpu = [], []
    for _ in range(args.rounds):
        gc.collect()
        t0, c0 = time.perf_counter(), time.process_time()
        pagewalk.diff(before, after)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    result = {
        "mappings_moved": count,
        "regions_before": len(before.regions),
        "regions_after": len(after.regions),
        "regions_added": len(delta.regions_added),
        "regions_removed": len(delta.regions_removed),
        "diff_s": statistics.median(wall),
        "diff_cpu_s": statistics.median(cpu),
    }
    print(
        f"\nC: diff() after {count:,} mappings moved ({result['regions_before']:,} and {result['regions_after']:,} "
        f"regions; {result['regions_added']:,} added, {result['regions_removed']:,} removed): "
        f"median {result['diff_s'] * 1e3:.1f} ms (CPU {result['diff_cpu_s'] * 1e3:.1f} ms)"
    )
    return result


# --- reporting ------------------------------------------------------------------------------------------


def environment(caps: pagewalk.Capabilities) -> dict[str, Any]:
    return {
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "loadavg": os.getloadavg(),
        "mem_total_gib": round(psutil.virtual_memory().total / GiB, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "psutil": psutil.__version__,
        "pagewalk": f"{pagewalk.__version__} ({os.path.dirname(pagewalk.__file__)})",
        "capabilities": caps.as_dict(),
    }


def print_environment(env: dict[str, Any]) -> None:
    caps = env["capabilities"]
    print(
        f"kernel {env['kernel']} {env['machine']}, {env['cpus']} CPUs ({env['cpus_usable']} usable), "
        f"{env['mem_total_gib']} GiB RAM, load {' '.join(f'{x:.2f}' for x in env['loadavg'])}"
    )
    print(f"python {env['python']}, numpy {env['numpy']}, psutil {env['psutil']}, pagewalk {env['pagewalk']}")
    flags = [k for k, v in caps.items() if v is True]
    print(
        f"capabilities: {' '.join(flags)}; thp={caps['thp_mode']} page={caps['page_size']} euid={caps['euid']} "
        f"zero_pfn={caps['zero_pfn']}"
    )
    print(f"  scan categories: {','.join(caps['scan_categories']) or '-'}")


def ratio(value: float, base: float | None) -> str:
    if not base:
        return f"{'-':>9}"
    r = value / base
    return f"{r:8.2f}x" if r < 100 else f"{r:8.0f}x"


def print_target(run: dict[str, Any]) -> None:
    target, results = run["target"], run["results"]
    base_r = results[ROLLUP].median
    base_p = results[PSUTIL].median
    base_cpu = results[ROLLUP].cpu
    print(f"\n{target.name}: {target.what}; {run['present']:,} present pages; built in {run['build_s']:.1f} s")
    if run["warning"]:
        print("  " + run["warning"])
    print(
        f"  {'method':<33}{'median ms':>10}{'min ms':>10}{'/rollup':>9}{'/psutil':>9}{'cpu ms':>8}{'cpu/roll':>9}"
        f"{'B/pg kept':>10}{'B/pg peak':>10}"
    )
    for name, r in results.items():
        kept = f"{r.retained_per_page:10.1f}" if r.retained_per_page is not None else f"{'':10}"
        peak = f"{r.peak_per_page:10.1f}" if r.peak_per_page is not None else f"{'':10}"
        if len(r.times_ms) == 1:
            median, low = f"{r.median:10.1f}", f"{'(1 run)':>10}"
        else:
            median, low = f"{r.median:10.2f}", f"{r.min:10.2f}"
        label = name + (" ~" if r.extrapolated else "")
        cpu = f"{r.cpu:8.2f}{ratio(r.cpu, base_cpu)}" if r.cpu is not None else f"{'':17}"
        print(f"  {label:<33}{median}{low}{ratio(r.median, base_r)}{ratio(r.median, base_p)}{cpu}{kept}{peak}")
        if r.note:
            print(f"    ~ {r.note}")
    c = run["check"]
    parts = [
        f"snapshot {c['snapshot_uss'] / MiB:.1f} ({c['auto_method']})",
        f"smaps_rollup {c['rollup_uss'] / MiB:.1f}",
        f"psutil {c['psutil_uss'] / MiB:.1f}",
    ]
    if "naive_uss" in c:
        parts.append(
            f"naive {c['naive_uss'] / MiB:.1f}" + ("~" if results["naive: seek+read per page"].extrapolated else "")
        )
    line = "  USS MiB: " + ", ".join(parts)
    if target.kind == "thp":
        thp = c["snapshot_thp"]
        thp_mib = f"{thp / MiB:.0f}" if thp is not None else "unknown"
        line += f"; thp {thp_mib} vs AnonHugePages {c['rollup_anon_huge'] / MiB:.0f}"
    print(line)
    stops = ", ".join(
        f"{name} {statistics.median(spans):.2f} (max {max(spans):.2f})" for name, spans in run["stopped_ms"].items()
    )
    print(f"  target stopped, ms per call: {stops}; measure() stops it twice")


def goals(runs: list[dict[str, Any]], churn: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    out = []
    if churn is not None:
        what = f"diff() after {churn['mappings_moved']:,} mappings moved"
        out.append({"target": "C", "what": what, "value": churn["diff_s"], "limit": 0.1, "unit": " s"})
    for run in runs:
        target, results = run["target"], run["results"]
        if target.kind == "idle":
            continue  # no goal: it shows what every snapshot costs whatever the memory
        base = results[ROLLUP].median
        limit = 1.1 if target.kind == "dense" else 2.0
        uss = results["snapshot() USS-only"]
        uss_floor = kernel_floor(target, results)
        out.append(
            {
                "target": target.name,
                "what": "USS-only snapshot vs smaps_rollup",
                "value": uss.median / base,
                "limit": limit,
                "unit": "x",
                "floor": None if uss_floor is None else uss_floor / base,
            }
        )
        if uss.cpu is not None and results[ROLLUP].cpu:
            out.append(
                {
                    "target": target.name,
                    "what": "... in CPU time (steadier on a busy machine)",
                    "value": uss.cpu / results[ROLLUP].cpu,
                    "limit": limit,
                    "unit": "x",
                }
            )
        if target.name in ("T1", "T2") and "snapshot(flags)" in results:
            flags_floor = None
            if uss_floor is not None and FLAGS_FLOOR in results:
                flags_floor = (uss_floor + results[FLAGS_FLOOR].median) / base
            out.append(
                {
                    "target": target.name,
                    "what": "flags snapshot vs smaps_rollup",
                    "value": results["snapshot(flags)"].median / base,
                    "limit": 3.5,
                    "unit": "x",
                    "floor": flags_floor,
                }
            )
            flags_cpu = results["snapshot(flags)"].cpu
            if flags_cpu is not None and results[ROLLUP].cpu:
                out.append(
                    {
                        "target": target.name,
                        "what": "... in CPU time",
                        "value": flags_cpu / results[ROLLUP].cpu,
                        "limit": 3.5,
                        "unit": "x",
                    }
                )
        if uss.retained_per_page is not None:
            out.append(
                {
                    "target": target.name,
                    "what": "USS-only memory kept per present page",
                    "value": uss.retained_per_page,
                    "limit": 16.0,
                    "unit": " B",
                }
            )
            out.append(
                {
                    "target": target.name,
                    "what": "USS-only peak memory per present page",
                    "value": uss.peak_per_page,
                    "limit": 16.0,
                    "unit": " B",
                }
            )
    for g in out:
        g["met"] = g["value"] <= g["limit"]
    return out


FLAGS_FLOOR = "kernel: kpageflags, its frames"


def kernel_floor(target: Target, results: dict[str, Result]) -> float | None:
    """The median cost of the kernel's parts a USS-only snapshot of this target cannot avoid, added up:
    stopping and resuming it, reading its maps, and reading its entries the cheapest way this kernel allows
    (each mapped run; or a PAGEMAP_SCAN first, for a sparse target; or a PAGEMAP_SCAN for the huge pages, one
    entry per huge page and each run outside them)."""
    parts = ["kernel: stop+resume", "kernel: read maps"]
    if target.kind == "sparse":
        parts += ["kernel: one PAGEMAP_SCAN", "kernel: pagemap, each run"]
    elif target.kind == "thp" and "kernel: pagemap, one per huge page" in results:
        parts += [
            "kernel: PAGEMAP_SCAN, huge pages",
            "kernel: pagemap, one per huge page",
            "kernel: pagemap, runs outside them",
        ]
    else:
        parts += ["kernel: pagemap, each run"]
    if not all(part in results for part in parts):
        return None  # --no-floors, or a kernel without PAGEMAP_SCAN
    return sum(results[part].median for part in parts)


def print_goals(items: list[dict[str, Any]]) -> None:
    print("\nGoals (medians; ratios from the same run; floor: the kernel's parts alone, added up):")
    for g in items:
        value = f"{g['value']:.2f}{g['unit']}" if g["unit"] in ("x", " s") else f"{g['value']:.1f}{g['unit']}"
        floor = f"  (floor {g['floor']:.2f}x)" if g.get("floor") is not None else ""
        print(
            f"  {g['target']} {g['what']:<40} {value:>9}  goal <= {g['limit']:g}{g['unit']:<2}  "
            f"{'met' if g['met'] else 'MISSED'}{floor}"
        )


def to_json(
    env: dict[str, Any], args: argparse.Namespace, runs: list[dict[str, Any]], items: list[dict[str, Any]]
) -> dict[str, Any]:
    targets = {}
    for run in runs:
        t = run["target"]
        base_r, base_p = run["results"][ROLLUP].median, run["results"][PSUTIL].median
        targets[t.name] = {
            "what": t.what,
            "size": t.size,
            "touched": t.touched,
            "present_pages": run["present"],
            "warning": run["warning"],
            "uss_check": run["check"],
            "stopped_ms": run["stopped_ms"],
            "methods": {
                name: {
                    "median_ms": r.median,
                    "min_ms": r.min,
                    "times_ms": r.times_ms,
                    "cpu_ms": r.cpu_ms,
                    "cpu_vs_smaps_rollup": None if r.cpu is None else r.cpu / run["results"][ROLLUP].cpu,
                    "vs_smaps_rollup": r.median / base_r,
                    "vs_psutil": r.median / base_p,
                    "retained_bytes_per_present_page": r.retained_per_page,
                    "peak_bytes_per_present_page": r.peak_per_page,
                    "extrapolated": r.extrapolated,
                    "note": r.note,
                }
                for name, r in run["results"].items()
            },
        }
    return {
        "environment": env,
        "args": {
            "targets": args.targets,
            "rounds": args.rounds,
            "quick": args.quick,
            "no_naive": args.no_naive,
            "no_floors": args.no_floors,
            "seed": args.seed,
        },
        "targets": targets,
        "goals": items,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="T0,T1,T2,T3,T4", help="comma-separated subset of T0,T1,T2,T3,T4")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per method (default 7; 3 with --quick)")
    parser.add_argument("--quick", action="store_true", help="small targets (64-128 MiB) and 3 rounds: a smoke run")
    parser.add_argument("--no-naive", action="store_true", help="skip the slow seek+read-per-page procedure")
    parser.add_argument(
        "--no-floors", action="store_true", help="skip timing the kernel's parts alone (stop, maps, scan, reads)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--delta", action="store_true", help="also time the delta of T2 (T2 of --quick) with 1%% of pages changed"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for the shuffled method order")
    parser.add_argument(
        "--churn",
        type=int,
        default=None,
        metavar="N",
        help="time diff() after N mappings moved (default 6000; 1000 with --quick; 0 skips it)",
    )
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 3 if args.quick else 7
    if args.churn is None:
        args.churn = 1000 if args.quick else 6000
    available = make_targets(args.quick)
    names = [n.strip().upper() for n in args.targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in available]
    if unknown:
        parser.error(f"unknown targets {unknown}; choose from {','.join(available)}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    # Make SIGTERM/SIGHUP unwind through the finally blocks so targets are killed.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))

    caps = pagewalk.capabilities()
    env = environment(caps)
    print_environment(env)
    print(
        f"rounds {args.rounds}, shuffled order; 'B/pg kept' = bytes the Snapshot holds per present page, "
        "'B/pg peak' = tracemalloc peak during the call per present page; ~ = extrapolated",
        flush=True,
    )
    rng = random.Random(args.seed)
    runs = []
    try:
        for name in names:
            runs.append(run_target(available[name], args, caps, rng))
            print_target(runs[-1])
            sys.stdout.flush()
        if args.delta:
            run_delta(available["T2"], args, caps, rng)
        churn = run_churn(args.churn, args) if args.churn > 0 else None
    finally:
        _kill_all()
    items = goals(runs, churn)
    print_goals(items)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**to_json(env, args, runs, items), "churn": churn}, f, indent=1, default=str)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
