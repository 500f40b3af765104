"""The PAGEMAP_SCAN front end against the plain reader, on address spaces that stress its batching."""

from __future__ import annotations

import os

import numpy as np
import numpy.typing as npt
import pytest
from puppet import Mapping, Puppet

import pagewalk

CAPS = pagewalk.capabilities()
pytestmark = pytest.mark.skipif(not CAPS.pagemap_scan, reason="PAGEMAP_SCAN needs Linux 6.7+")


@pytest.mark.parametrize(
    ("pages", "stride"),
    [
        (1200, 2),  # over the kernel's 512-range batch
        (9000, 2),  # over a full vector
        (40000, 100),  # ranges too far apart to share a read
        (40000, 63),  # ... and close enough: the pages between them are read and dropped
    ],
)
def test_many_ranges_are_read_once(puppet: Puppet, pages: int, stride: int) -> None:
    """One page in `stride` present: one scan range per page. Linux can leave walk_end at an internal batch
    boundary when the walk in fact finished; resuming there would count ranges twice."""
    area = puppet.map(pages)
    puppet.write(area, range(0, pages, stride))
    with puppet.stopped():
        by_scan = pagewalk.snapshot(puppet.pid, method="scan")
        by_read = pagewalk.snapshot(puppet.pid, method="read")
    assert np.array_equal(by_scan.vpn, by_read.vpn)
    assert np.all(np.diff(by_scan.vpn.astype(np.int64)) > 0)
    assert by_scan.rss == by_read.rss
    (region,) = [r for r in by_scan.regions if r.start == area.address]
    assert region.rss == len(range(0, pages, stride)) * CAPS.page_size


def test_reads_cut_short_are_finished(puppet: Puppet, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pread may return less than asked for; the rest is read, and the snapshot is the same."""
    area = puppet.map(9000)
    puppet.write(area, [*range(0, 9000, 100), *range(8000, 8200), *range(5000, 5100, 30)])
    real_preadv = os.preadv

    def half(fd: int, buffers: list[memoryview], offset: int) -> int:
        (buffer,) = buffers
        return real_preadv(fd, [buffer[: max(8, len(buffer) // 16 * 8)]], offset)

    with puppet.stopped():
        whole = pagewalk.snapshot(puppet.pid, method="scan")
        monkeypatch.setattr(os, "preadv", half)
        cut = pagewalk.snapshot(puppet.pid, method="scan")
    assert np.array_equal(cut.vpn, whole.vpn)
    # Only the area's: a page of a shared library may stop being shared meanwhile, as other processes exit.
    assert np.array_equal(_entries_in(cut, area), _entries_in(whole, area))
    assert [r for r in cut.regions if r.start == area.address] == [r for r in whole.regions if r.start == area.address]


@pytest.mark.parametrize("zero_ranges", [3, 300])  # marked a slice each, and all at once
def test_zero_page_ranges_are_marked(puppet: Puppet, zero_ranges: int) -> None:
    """Every other page read (the zero page) and the others written: one scan range per page."""
    area = puppet.map(2 * zero_ranges)
    puppet.read(area, range(0, 2 * zero_ranges, 2))
    puppet.write(area, range(1, 2 * zero_ranges, 2))
    with puppet.stopped():
        by_scan = pagewalk.snapshot(puppet.pid, method="scan")
        by_read = pagewalk.snapshot(puppet.pid, method="read")
    (scanned,) = [r for r in by_scan.regions if r.start == area.address]
    (read,) = [r for r in by_read.regions if r.start == area.address]
    assert (scanned.zero, scanned.rss) == (zero_ranges * area.page_size, zero_ranges * area.page_size)
    assert scanned == read
    assert np.array_equal(_entries_in(by_scan, area), _entries_in(by_read, area))


def _entries_in(snap: pagewalk.Snapshot, area: Mapping) -> npt.NDArray[np.uint64]:
    vpn = snap.vpn
    return snap.entries[(vpn >= area.address // area.page_size) & (vpn < area.end // area.page_size)]
