"""Pages written, through pagewalk, with exact expectations. Needs a kernel with CONFIG_MEM_SOFT_DIRTY.

A puppet child (tests/puppet.py) maps fenced regions of private anonymous memory (PROT_NONE pages on both
sides keep the kernel from merging them with other mappings, which would mark them soft-dirty as a whole),
writes every page, and waits.
Tracking starts; the child writes exactly the pages it is told to; `written` must name exactly those pages
in that region and nothing in the untouched one. Both readers are covered: pagemap bit 55 (method="read")
and PAGEMAP_SCAN ranges with PAGE_IS_SOFT_DIRTY (6.8+). Inside the kernel matrix these tests must run;
elsewhere they skip when the kernel has no soft-dirty.
"""

from __future__ import annotations

import os

import pytest
from puppet import Puppet

import pagewalk

LEG = os.environ.get("PAGEMAP_KERNEL_MATRIX")
CAPS = pagewalk.capabilities()
SCAN_WRITES = "SOFT_DIRTY" in CAPS.scan_categories

if not CAPS.soft_dirty:
    if LEG:
        raise AssertionError(f"kernel matrix leg {LEG}: pagewalk finds no soft-dirty support; the leg is broken")
    pytest.skip(CAPS.missing_for_soft_dirty() or "", allow_module_level=True)


def region_at(snap: pagewalk.Snapshot, address: int) -> pagewalk.Region:
    (region,) = [r for r in snap.regions if r.start == address]
    return region


METHODS = ["read", "scan"] if SCAN_WRITES else ["read"]


@pytest.mark.parametrize("method", METHODS)
def test_exactly_the_pages_written(puppet: Puppet, method: str) -> None:
    page = pagewalk.units.PAGE_SIZE
    target_area, untouched_area = puppet.map(64), puppet.map(32)  # fenced: they never merge
    puppet.write(target_area)
    puppet.write(untouched_area)
    target, untouched = target_area.address, untouched_area.address
    before = pagewalk.snapshot(puppet.pid, track=("writes",), method=method)  # type: ignore[arg-type]
    written_pages = [0, 3, 7, 8, 9, 31, 62, 63]
    puppet.write(target_area, written_pages)
    after = pagewalk.snapshot(puppet.pid, writes=True, method=method)  # type: ignore[arg-type]
    delta = after - before

    assert region_at(after, target).written == len(written_pages) * page
    assert region_at(after, untouched).written == 0
    areas = {r.start: r for r in delta.regions if r.start in (target, untouched)}
    target_delta, untouched_delta = areas[target], areas[untouched]
    assert target_delta.status == "kept"
    assert target_delta.written == len(written_pages) * page
    assert delta.written is not None and delta.written >= len(written_pages) * page
    # Writing present pages adds none. Only the areas are checked: where THP is "always" (Debian's
    # kernels), khugepaged may collapse the interpreter's own heap between the snapshots, +100 pages seen.
    assert target_delta.uss_growth == untouched_delta.uss_growth == 0


@pytest.mark.parametrize("method", METHODS)
def test_new_regions_are_reported_apart(puppet: Puppet, method: str) -> None:
    """Every page of a mapping made after tracking started reads soft-dirty; pagewalk reports the
    present pages of such regions as written_new_regions, not as writes to existing memory."""
    page = pagewalk.units.PAGE_SIZE
    puppet.write(puppet.map(16))
    before = pagewalk.snapshot(puppet.pid, track=("writes",), method=method)  # type: ignore[arg-type]
    fresh_area = puppet.map(20)
    puppet.write(fresh_area, [0, 1, 2, 10, 19])
    fresh = fresh_area.address
    after = pagewalk.snapshot(puppet.pid, writes=True, method=method)  # type: ignore[arg-type]
    delta = after - before

    (fresh_delta,) = [r for r in delta.regions if r.start == fresh]
    assert fresh_delta.status == "added"
    assert fresh_delta.written == 5 * page
    assert delta.written_new_regions is not None and delta.written_new_regions >= 5 * page
    old = [r for r in delta.regions if r.name == "[anon]" and r.status == "kept" and r.written]
    assert all(r.start != fresh for r in old)


def test_both_readers_agree(puppet: Puppet) -> None:
    if not SCAN_WRITES:
        pytest.skip("PAGE_IS_SOFT_DIRTY needs Linux 6.8+")
    area = puppet.map(128)
    puppet.write(area)
    pagewalk.start_tracking(puppet.pid)
    puppet.write(area, range(0, 128, 3))
    # Both reads of one stopped moment: pagewalk leaves an already stopped process stopped.
    with puppet.stopped():
        by_bits = pagewalk.snapshot(puppet.pid, writes=True, method="read")
        by_scan = pagewalk.snapshot(puppet.pid, writes=True, method="scan")
    assert [r.written for r in by_bits.regions] == [r.written for r in by_scan.regions]


def test_scan_support_matches_the_kernel() -> None:
    if LEG == "6.1":
        assert not CAPS.pagemap_scan
    elif LEG == "6.12":
        assert CAPS.pagemap_scan and SCAN_WRITES


@pytest.mark.parametrize("method", METHODS)
def test_the_memory_map_shows_which_pages_were_written(puppet: Puppet, method: str) -> None:
    from pagewalk.memory_map import snapshot_map

    area = puppet.map(64)  # 8 cells of 8 pages
    puppet.write(area)
    pagewalk.snapshot(puppet.pid, track=("writes",), method=method)  # type: ignore[arg-type]
    puppet.write(area, range(16, 24))  # the third cell, all of it
    puppet.write(area, [40])  # one page of the sixth
    after = pagewalk.snapshot(puppet.pid, writes=True, method=method)  # type: ignore[arg-type]
    (row,) = [row for row in snapshot_map(after)["regions"] if int(row[0], 16) == area.address]
    columns = dict(zip(snapshot_map(after)["columns"], row, strict=True))
    assert columns["written"] == 9 * pagewalk.units.PAGE_SIZE
    assert columns["written_cells"] == "00f002" + "00"  # 1 page of 8: 15/8 rounds up to 2
