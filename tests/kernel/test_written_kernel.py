"""Pages written, through pagesnap, with exact expectations. Needs a kernel with CONFIG_MEM_SOFT_DIRTY.

A child maps fenced regions of private anonymous memory (PROT_NONE pages on both sides keep the kernel from
merging them with other mappings, which would mark them soft-dirty as a whole), writes every page, and waits.
Tracking starts; the child writes exactly the pages it is told to; `written` must name exactly those pages
in that region and nothing in the untouched one. Both readers are covered: pagemap bit 55 (method="read")
and PAGEMAP_SCAN ranges with PAGE_IS_SOFT_DIRTY (6.8+). Inside the kernel matrix these tests must run;
elsewhere they skip when the kernel has no soft-dirty.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

import pagesnap

LEG = os.environ.get("PAGEMAP_KERNEL_MATRIX")
CAPS = pagesnap.capabilities()
SCAN_WRITES = "SOFT_DIRTY" in CAPS.scan_categories

if not CAPS.soft_dirty:
    if LEG:
        raise AssertionError(f"kernel matrix leg {LEG}: pagesnap finds no soft-dirty support; the leg is broken")
    pytest.skip(CAPS.missing_for_soft_dirty() or "", allow_module_level=True)

CHILD = r"""
import ctypes, json, mmap, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
PAGE = mmap.PAGESIZE
regions = {}

def fenced(name, pages):
    # One mapping of pages + 2; the first and last page become PROT_NONE fences.
    base = libc.mmap(None, (pages + 2) * PAGE, 3, 0x22, -1, 0)  # RW, MAP_PRIVATE|MAP_ANONYMOUS
    libc.mprotect(base, PAGE, 0)
    libc.mprotect(base + (pages + 1) * PAGE, PAGE, 0)
    regions[name] = base + PAGE
    return base + PAGE

def write(name, pages, value=0x5A):
    for page in pages:
        ctypes.memset(regions[name] + page * PAGE, value, 8)

for line in sys.stdin:
    command = json.loads(line)
    if command["op"] == "map":
        address = fenced(command["name"], command["pages"])
        if command.get("touch"):
            write(command["name"], range(command["pages"]), 1)
        print(json.dumps({"address": address}), flush=True)
    elif command["op"] == "write":
        write(command["name"], command["pages"])
        print(json.dumps({"ok": True}), flush=True)
"""


class Writer:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.pid = self.process.pid

    def call(self, **command: object) -> dict[str, int]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        answer: dict[str, int] = json.loads(self.process.stdout.readline())
        return answer

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture
def writer() -> Iterator[Writer]:
    child = Writer()
    yield child
    child.close()


def wait_stopped(pid: int) -> None:
    deadline = time.monotonic() + 30
    while pagesnap.procfs.process_state(pid)[0] != "T":
        assert time.monotonic() < deadline, "the child did not stop"
        time.sleep(0.001)


def region_at(snap: pagesnap.Snapshot, address: int) -> pagesnap.Region:
    (region,) = [r for r in snap.regions if r.start == address]
    return region


METHODS = ["read", "scan"] if SCAN_WRITES else ["read"]


@pytest.mark.parametrize("method", METHODS)
def test_exactly_the_pages_written(writer: Writer, method: str) -> None:
    page = pagesnap.units.PAGE_SIZE
    target = writer.call(op="map", name="target", pages=64, touch=True)["address"]
    untouched = writer.call(op="map", name="untouched", pages=32, touch=True)["address"]
    before = pagesnap.snapshot(writer.pid, track=("writes",), method=method)  # type: ignore[arg-type]
    written_pages = [0, 3, 7, 8, 9, 31, 62, 63]
    writer.call(op="write", name="target", pages=written_pages)
    after = pagesnap.snapshot(writer.pid, writes=True, method=method)  # type: ignore[arg-type]
    delta = after - before

    assert region_at(after, target).written == len(written_pages) * page
    assert region_at(after, untouched).written == 0
    (target_delta,) = [r for r in delta.regions if r.start == target]
    assert target_delta.status == "kept"
    assert target_delta.written == len(written_pages) * page
    assert delta.written is not None and delta.written >= len(written_pages) * page
    assert delta.uss_growth == pytest.approx(0, abs=64 * page)  # interpreter noise only


@pytest.mark.parametrize("method", METHODS)
def test_new_regions_are_reported_apart(writer: Writer, method: str) -> None:
    """Every page of a mapping made after tracking started reads soft-dirty; pagesnap reports the
    present pages of such regions as written_new_regions, not as writes to existing memory."""
    page = pagesnap.units.PAGE_SIZE
    writer.call(op="map", name="old", pages=16, touch=True)
    before = pagesnap.snapshot(writer.pid, track=("writes",), method=method)  # type: ignore[arg-type]
    fresh = writer.call(op="map", name="fresh", pages=20)["address"]
    writer.call(op="write", name="fresh", pages=[0, 1, 2, 10, 19])
    after = pagesnap.snapshot(writer.pid, writes=True, method=method)  # type: ignore[arg-type]
    delta = after - before

    (fresh_delta,) = [r for r in delta.regions if r.start == fresh]
    assert fresh_delta.status == "added"
    assert fresh_delta.written == 5 * page
    assert delta.written_new_regions is not None and delta.written_new_regions >= 5 * page
    old = [r for r in delta.regions if r.name == "[anon]" and r.status == "kept" and r.written]
    assert all(r.start != fresh for r in old)


def test_both_readers_agree(writer: Writer) -> None:
    if not SCAN_WRITES:
        pytest.skip("PAGE_IS_SOFT_DIRTY needs Linux 6.8+")
    writer.call(op="map", name="target", pages=128, touch=True)
    pagesnap.start_tracking(writer.pid)
    writer.call(op="write", name="target", pages=list(range(0, 128, 3)))
    # Both reads of one stopped moment: pagesnap leaves an already stopped process stopped.
    os.kill(writer.pid, signal.SIGSTOP)
    wait_stopped(writer.pid)
    try:
        by_bits = pagesnap.snapshot(writer.pid, writes=True, method="read")
        by_scan = pagesnap.snapshot(writer.pid, writes=True, method="scan")
    finally:
        os.kill(writer.pid, signal.SIGCONT)
    assert [r.written for r in by_bits.regions] == [r.written for r in by_scan.regions]


def test_scan_support_matches_the_kernel() -> None:
    if LEG == "6.1":
        assert not CAPS.pagemap_scan
    elif LEG == "6.12":
        assert CAPS.pagemap_scan and SCAN_WRITES
