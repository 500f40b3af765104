"""What a snapshot derives from the maps alone (kinds, addresses, names) is kept while they do not change."""

from __future__ import annotations

import dataclasses
import gc
import os
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Callable

import pytest
from many_mappings import MANY_MAPPINGS
from puppet import Puppet

import pagewalk
from pagewalk import procfs

layout_module = sys.modules["pagewalk.snapshot"]  # the package's `snapshot` names the function


def test_pages_are_counted_anew_when_the_mappings_are_the_same(puppet: Puppet) -> None:
    area = puppet.map(64)
    puppet.write(area, range(16))
    with puppet.stopped():
        before = pagewalk.snapshot(puppet.pid)
    puppet.write(area, range(16, 64))
    with puppet.stopped():
        maps = procfs.read_maps(puppet.pid)
        assert procfs.read_maps(puppet.pid) is maps  # one parsed object while the text is the same
        after = pagewalk.snapshot(puppet.pid)
        assert layout_module._LAYOUTS[id(maps)].maps is maps  # this snapshot used the kept layout
    (grown,) = [region for region in after.regions if region.start == area.address]
    (small,) = [region for region in before.regions if region.start == area.address]
    assert (small.rss, grown.rss) == (16 * area.page_size, 64 * area.page_size)
    assert (grown.name, grown.kind, grown.end) == (small.name, small.kind, small.end)


def test_a_split_mapping_shows_as_two(puppet: Puppet) -> None:
    area = puppet.map(4)
    puppet.write(area)
    first = pagewalk.snapshot(puppet.pid)
    puppet.mprotect(area, "r", range(2))
    split = pagewalk.snapshot(puppet.pid)
    assert [r.perms for r in first.regions if area.address <= r.start < area.end] == ["rw-p"]
    halves = [(r.start, r.perms, r.rss) for r in split.regions if area.address <= r.start < area.end]
    middle = area.page_address(2)
    assert halves == [(area.address, "r--p", 2 * area.page_size), (middle, "rw-p", 2 * area.page_size)]


def test_kinds_follow_the_devices_of_the_mounts(puppet: Puppet) -> None:
    """The same maps with another set of shmem devices (a tmpfs mounted since) are classified again."""
    caps = pagewalk.capabilities()
    maps = procfs.read_maps(puppet.pid)
    layout = layout_module._layout(puppet.pid, maps, caps)
    assert layout_module._layout(puppet.pid, maps, caps) is layout
    files = [entry for entry in maps if entry.path.startswith("/") and not entry.deleted]
    assert files, "the puppet maps its interpreter and libraries"
    as_if_tmpfs = dataclasses.replace(caps, shmem_devices=(*caps.shmem_devices, files[0].dev))
    moved = layout_module._layout(puppet.pid, maps, as_if_tmpfs)
    assert moved is not layout
    assert moved.kinds[maps.index(files[0])] == "shmem"
    assert layout.kinds[maps.index(files[0])] == "file"


def test_regions_that_count_the_same_are_kept(puppet: Puppet) -> None:
    """A snapshot reuses the last one's `Region` of a mapping whose values are all the same, and only then.

    Other mappings may count otherwise between two snapshots even of a stopped process: a shared library page
    stops being exclusive when another process maps it. So the rule is checked region by region.
    """
    area = puppet.map(64)
    puppet.write(area, range(8))
    with puppet.stopped():
        first = pagewalk.snapshot(puppet.pid)
        again = pagewalk.snapshot(puppet.pid)
        # One more page of the area, written from outside while the process is stopped: its maps stay the same.
        with open(f"/proc/{puppet.pid}/mem", "r+b", buffering=0) as memory:
            memory.seek(area.page_address(40))
            memory.write(b"\1")
        grown = pagewalk.snapshot(puppet.pid)
        referenced = pagewalk.snapshot(puppet.pid, accessed=True)
    assert (again.regions is first.regions) == (again.regions == first.regions)  # all the same: the same tuple
    for before, after in zip(first.regions, grown.regions, strict=True):
        assert (before is after) == (before == after), before.name
    (small,) = [region for region in first.regions if region.start == area.address]
    (large,) = [region for region in grown.regions if region.start == area.address]
    assert large is not small and large.rss - small.rss == area.page_size
    # The same pages with the bytes accessed known are other values: no region of the last snapshot fits.
    assert all(region.accessed is not None for region in referenced.regions)
    assert not any(a is b for a, b in zip(grown.regions, referenced.regions, strict=True))


CHURN = r"""
import ctypes, mmap, time
ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: it ends with the test run whatever happens
area = mmap.mmap(-1, 8 << 20)
print("ready", flush=True)
while True:  # two states in turn, so that snapshots often count the same as one before; the maps stay the same
    for pages in (256, 1024):
        area[: pages * mmap.PAGESIZE : mmap.PAGESIZE] = b"\1" * pages
        time.sleep(0.001)
        area.madvise(mmap.MADV_DONTNEED)
"""


def test_regions_add_up_to_the_totals_when_threads_share_a_layout() -> None:
    """Two threads snapshot one process whose pages go back and forth between two states, so that regions are
    often reused, and from a layout the other thread updates too: each snapshot's regions add up to its own
    totals."""
    target = subprocess.Popen([sys.executable, "-c", CHURN], stdout=subprocess.PIPE, text=True)
    mismatched: list[tuple[str, int, int]] = []

    def snapshots() -> None:
        for _ in range(60):
            snap = pagewalk.snapshot(target.pid)
            for name in ("rss", "uss", "anon"):
                if (summed := sum(getattr(region, name) for region in snap.regions)) != getattr(snap, name):
                    mismatched.append((name, summed, getattr(snap, name)))

    try:
        assert target.stdout is not None and target.stdout.readline() == "ready\n"
        threads = [threading.Thread(target=snapshots) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        target.kill()
        target.wait()
    assert not mismatched


def test_a_process_with_many_mappings_keeps_no_regions_once_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the reuse limit a layout keeps no regions, so what stays allocated once the snapshots are dropped is
    the layout and the parsed maps alone: well under the 1.8 KB a mapping that keeping the regions costs."""
    monkeypatch.setattr(layout_module, "_REUSED_MAPPINGS_MAX", 1000)
    mapped = 1200
    target = subprocess.Popen(
        [sys.executable, "-c", MANY_MAPPINGS, str(mapped)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert target.stdout is not None and target.stdout.readline() == "ready\n"
        pagewalk.snapshot(os.getpid())  # imports and probes, before memory is traced
        gc.collect()
        tracemalloc.start()
        try:
            start = tracemalloc.get_traced_memory()[0]
            first = pagewalk.snapshot(target.pid)
            second = pagewalk.snapshot(target.pid)
            assert len(first.regions) > mapped and not any(
                a is b for a, b in zip(first.regions, second.regions, strict=True)
            )
            del first, second
            gc.collect()
            kept = tracemalloc.get_traced_memory()[0] - start
        finally:
            tracemalloc.stop()
    finally:
        target.kill()
        target.wait()
    assert kept < 1024 * mapped, f"{kept / mapped:.0f} bytes a mapping stayed allocated"


def test_the_layouts_kept_hold_a_bounded_number_of_mappings(
    make_puppet: Callable[..., Puppet], monkeypatch: pytest.MonkeyPatch
) -> None:
    one, other = make_puppet(), make_puppet()
    first = layout_module._layout(one.pid, procfs.read_maps(one.pid), pagewalk.capabilities())
    monkeypatch.setattr(layout_module, "_LAYOUTS_MAPPINGS_MAX", len(first.maps) + 1)
    second = layout_module._layout(other.pid, procfs.read_maps(other.pid), pagewalk.capabilities())
    assert list(layout_module._LAYOUTS.values()) == [second]  # the first went, as both would hold too many
