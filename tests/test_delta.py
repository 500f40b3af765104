"""Deltas of real processes, with transitions arranged on purpose and exact expectations.

Each test drives a puppet child (tests/puppet.py) into a known change and checks what `after - before`
reports: growth, pages that appeared or vanished, frames that changed, and flags gained or lost, matched
by virtual page. Flag transitions need root (kpageflags); the rest also runs unprivileged.
"""

from __future__ import annotations

import os
import random
import time
import types
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from puppet import Mapping, Puppet

import pagewalk
from pagewalk.measure import missing_requirements

CAPS = pagewalk.capabilities()
PAGE = CAPS.page_size
needs_flags = pytest.mark.skipif(CAPS.missing_for_flags() is not None, reason=CAPS.missing_for_flags() or "")
KSM_MISREPORTED = CAPS.missing_for_flag("KSM")


@pytest.fixture
def child() -> Iterator[Puppet]:
    with Puppet() as puppet:
        yield puppet


def gained_in(before: pagewalk.Snapshot, after: pagewalk.Snapshot, area: Mapping, flag: str) -> list[int]:
    """Indexes of the pages of `area` that have `flag` after and did not before (all that have it, when
    `before` is `after`)."""
    bit = np.uint64(1 << pagewalk.bits.FLAG_BITS[flag])
    first = area.address // PAGE

    def pages_with_flag(snap: pagewalk.Snapshot) -> set[int]:
        assert snap.page_flags is not None
        vpn = snap.vpn
        inside = (vpn >= np.uint64(first)) & (vpn < np.uint64(first + area.pages))
        flagged = (snap.page_flags[inside] & bit) != 0
        return set((vpn[inside][flagged] - np.uint64(first)).tolist())

    now = pages_with_flag(after)
    return sorted(now if before is after else now - pages_with_flag(before))


def region_delta(delta: pagewalk.Delta, mapping: Mapping) -> pagewalk.RegionDelta:
    (found,) = [r for r in delta.regions if r.start <= mapping.address < r.end and r.status != "removed"]
    return found


def test_growth_is_exact_per_region_and_adds_up_in_total(child: Puppet) -> None:
    area = child.map(256)
    child.write(area, range(0, 64))
    before = pagewalk.snapshot(child.pid)
    child.write(area, range(64, 192))
    after = pagewalk.snapshot(child.pid)
    delta = after - before
    assert region_delta(delta, area).uss_growth == 128 * PAGE
    assert region_delta(delta, area).rss_growth == 128 * PAGE
    assert region_delta(delta, area).anon_growth == 128 * PAGE
    assert region_delta(delta, area).status == "kept"
    # The rest is the interpreter's own, which khugepaged may grow by hundreds of pages where THP is "always".
    for metric in ("uss_growth", "rss_growth", "anon_growth", "swap_growth"):
        assert getattr(delta, metric) == sum(getattr(r, metric) for r in delta.regions), metric
    assert delta.pages_appeared >= 128
    assert delta == pagewalk.diff(before, after)


def test_private_file_pages_become_anonymous_when_written(child: Puppet, tmp_path: Any) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"\x01" * 32 * PAGE)
    area = child.map(32, path=path)
    before = pagewalk.snapshot(child.pid)
    child.read(area)  # page cache, mapped: resident but not anonymous
    read = pagewalk.snapshot(child.pid)
    assert (region_delta(read - before, area).rss_growth, region_delta(read - before, area).anon_growth) == (
        32 * PAGE,
        0,
    )
    child.write(area, range(0, 12))  # copy-on-write: 12 private anonymous copies replace page-cache pages
    change = region_delta(pagewalk.snapshot(child.pid) - read, area)
    assert (change.rss_growth, change.anon_growth) == (0, 12 * PAGE)


def test_shrinking_is_negative_growth(child: Puppet) -> None:
    area = child.map(100)
    child.write(area)
    before = pagewalk.snapshot(child.pid)
    child.madvise(area, "DONTNEED", range(0, 40))
    delta = pagewalk.snapshot(child.pid) - before
    assert region_delta(delta, area).uss_growth == -40 * PAGE
    assert delta.pages_disappeared >= 40


@pytest.mark.parametrize("flags", [False, pytest.param(True, marks=needs_flags)])
def test_munmap_removes_the_region_and_its_pages(child: Puppet, flags: bool) -> None:
    area = child.map(50)
    child.write(area)
    before = pagewalk.snapshot(child.pid, flags=flags)
    child.munmap(area)
    after = pagewalk.snapshot(child.pid, flags=flags)
    delta = after - before
    (removed,) = [r for r in delta.regions_removed if r.start == area.address]
    assert removed.uss_growth == -50 * PAGE
    assert delta.pages_disappeared >= 50
    if flags:
        assert delta.flags_lost is not None and delta.flags_lost["ANON"] >= 50
    else:
        assert delta.flags_lost is None and delta.flags_gained is None


def test_new_region_is_added(child: Puppet) -> None:
    before = pagewalk.snapshot(child.pid)
    area = child.map(30)
    child.write(area, range(0, 10))
    delta = pagewalk.snapshot(child.pid) - before
    added = region_delta(delta, area)
    assert added.status == "added" and added.uss_growth == 10 * PAGE and added.size_growth == 30 * PAGE


def test_fork_then_write_changes_frames_and_grows_uss(child: Puppet) -> None:
    area = child.map(64)
    child.write(area)
    child.fork()  # a sleeping copy now shares the 64 pages copy-on-write: none is exclusive
    before = pagewalk.snapshot(child.pid)
    (shared,) = [r for r in before.regions if r.start == area.address]
    assert (shared.rss, shared.uss) == (64 * PAGE, 0)
    child.write(area, range(0, 24))  # copy-on-write breaks: 24 private copies
    after = pagewalk.snapshot(child.pid)
    delta = after - before
    assert region_delta(delta, area).uss_growth == 24 * PAGE
    assert region_delta(delta, area).rss_growth == 0
    if CAPS.pfn_visible:
        assert delta.frames_changed is not None and delta.frames_changed >= 24
    else:
        assert delta.frames_changed is None  # unknown without visible PFNs, never a false zero


@needs_flags
def test_mlock_gains_unevictable(child: Puppet) -> None:
    with child.pinned():  # so the kernel's LRU batches drain where they filled: UNEVICTABLE is set by return
        area = child.map(40)
        child.write(area)
        before = pagewalk.snapshot(child.pid, flags=True)
        child.mlock(area, range(0, 16))
        after = pagewalk.snapshot(child.pid, flags=True)
    delta = after - before
    assert delta.flags_gained is not None and delta.flags_lost is not None
    # The 16 locked pages of the area. Page flags belong to folios: where a large folio (mTHP) straddles
    # page 16, the rest of it reads as locked too.
    for flag in ("UNEVICTABLE", "MLOCKED"):
        gained = gained_in(before, after, area, flag)
        assert gained[:16] == list(range(16)) and gained == list(range(len(gained)))
    assert delta.flags_gained["UNEVICTABLE"] >= 16


@needs_flags
def test_collapse_gains_thp_and_changes_frames(child: Puppet) -> None:
    if CAPS.thp_mode in (None, "never"):
        pytest.skip(f"THP is {CAPS.thp_mode or 'not built in'}: MADV_COLLAPSE cannot form huge pages")
    area = child.map(512, thp=True)
    child.madvise(area, "NOHUGEPAGE")  # small pages first, even where THP is "always" (khugepaged too)
    child.write(area)
    before = pagewalk.snapshot(child.pid, flags=True)
    assert gained_in(before, before, area, "THP") == []
    child.madvise(area, "HUGEPAGE")
    child.madvise(area, "COLLAPSE")
    after = pagewalk.snapshot(child.pid, flags=True)
    delta = after - before
    assert delta.flags_gained is not None
    assert gained_in(before, after, area, "THP") == list(range(512))
    assert delta.flags_gained["THP"] >= 512  # where THP is "always", the interpreter's heap may gain some too
    assert delta.frames_changed is not None and delta.frames_changed >= 512
    assert region_delta(delta, area).uss_growth == 0  # same data, now in one huge page
    (region,) = [r for r in after.regions if r.start == area.address]
    assert region.thp == 512 * PAGE


def test_pids_must_match(child: Puppet) -> None:
    own = pagewalk.snapshot(os.getpid())
    with pytest.raises(pagewalk.PagewalkError, match="different processes"):
        pagewalk.diff(own, pagewalk.snapshot(child.pid))


def test_order_is_checked(child: Puppet) -> None:
    first = pagewalk.snapshot(child.pid)
    second = pagewalk.snapshot(child.pid)
    with pytest.raises(pagewalk.PagewalkError, match="older"):
        pagewalk.diff(second, first)


@needs_flags
@pytest.mark.system
def test_pageout_gains_swapped(swap_space: object, child: Puppet) -> None:
    area = child.map(64)
    child.write(area)
    before = pagewalk.snapshot(child.pid, flags=True)
    for attempt in range(20):  # pages still in another CPU's LRU batch may resist a first MADV_PAGEOUT
        child.madvise(area, "PAGEOUT", range(0, 32))
        after = pagewalk.snapshot(child.pid, flags=True)
        if len(gained_in(before, after, area, "SWAPPED")) == 32:
            break
        time.sleep(0.02 * (attempt + 1))
    delta = after - before
    assert gained_in(before, after, area, "SWAPPED") == list(range(32))
    assert region_delta(delta, area).swap_growth == 32 * PAGE
    assert region_delta(delta, area).rss_growth == -32 * PAGE
    assert delta.flags_lost is not None and delta.flags_lost["ANON"] >= 32  # no frame behind a swapped page


@needs_flags
@pytest.mark.system
@pytest.mark.skipif(KSM_MISREPORTED is not None, reason=KSM_MISREPORTED or "")
def test_ksm_merge_gains_ksm_and_changes_frames(ksm: Any, child: Puppet) -> None:
    area = child.map(48)
    child.madvise(area, "MERGEABLE")
    child.write(area)  # 48 distinct pages: nothing to merge yet, however soon ksmd looks
    ksm.use_zero_pages(False)
    before = pagewalk.snapshot(child.pid, flags=True)
    child.fill(area, range(32), value=0x5A)  # now 32 identical pages: KSM merges them into one
    deadline = time.monotonic() + 60
    # Wait on the area's own pages: the process counters also count other pages KSM merges meanwhile.
    while len(gained_in(before, after := pagewalk.snapshot(child.pid, flags=True), area, "KSM")) < 32:
        if time.monotonic() > deadline:
            pytest.fail("KSM did not merge 32 identical mergeable pages within 60 s")
        time.sleep(0.05)
    delta = after - before
    assert gained_in(before, after, area, "KSM") == list(range(32))
    assert delta.frames_changed is not None and delta.frames_changed >= 31  # all but the page kept as stable
    assert region_delta(delta, area).uss_growth == -32 * PAGE  # shared now: none is unique to the process


@needs_flags
def test_a_misreported_ksm_flag_is_withheld_not_counted(child: Puppet) -> None:
    """Some kernels (Debian's 6.12) mark every anonymous page KSM in /proc/kpageflags. Where the probe finds
    that, KSM is left out of the counts and deltas and a limit on it says why; elsewhere it is counted."""
    area = child.map(16)
    child.write(area)
    before = pagewalk.snapshot(child.pid, flags=True)
    child.write(area, range(8))
    with pagewalk.measure(child.pid, flags=True) as m:
        child.munmap(area)
    delta = pagewalk.snapshot(child.pid, flags=True) - before
    assert before.flag_counts is not None and delta.flags_gained is not None and delta.flags_lost is not None
    if KSM_MISREPORTED is None:
        assert CAPS.ksm_flag_reliable is True
        assert "KSM" in before.flag_counts and "KSM" in delta.flags_lost
        assert gained_in(before, before, area, "KSM") == []  # plain anonymous pages, never merged
        m.assert_no_flag_gain("KSM")
        return
    assert CAPS.ksm_flag_reliable is False and "every anonymous page KSM" in KSM_MISREPORTED
    assert "KSM" not in before.flag_counts and "KSM" not in delta.flags_gained and "KSM" not in delta.flags_lost
    assert before.flag_counts["ANON"] >= 16  # the other flags are still read
    assert before.page_flags is not None and not np.any(
        before.page_flags & np.uint64(1 << pagewalk.bits.FLAG_BITS["KSM"])
    )
    assert any("page flag KSM is not reported" in note for note in before.notes)
    with pytest.raises(pagewalk.Unsupported, match=r"page flag KSM of .* is unknown: .*every anonymous page KSM"):
        m.assert_no_flag_gain("KSM")
    (reason,) = missing_requirements(flags=True, flag_names=["KSM", "THP"])
    assert reason.startswith("page flag KSM cannot be checked")


def test_regions_match_by_start_then_by_overlap(child: Puppet) -> None:
    """A region whose start moved is matched to the old region of its name that it overlaps (as a stack
    grows down); a region overlapping none is added, and an old one left over is removed."""
    area = child.map(64)
    child.write(area)
    child.mprotect(area, "r", range(0, 16))  # three regions: [0, 16) read-only, [16, 48), [48, 64) read-only
    child.mprotect(area, "r", range(48, 64))
    gone = child.map(8, prot="none")  # a protection no neighbour has: it merges with none of them
    before = pagewalk.snapshot(child.pid)
    child.mprotect(area, "rw", range(8, 16))  # the middle region now starts 8 pages lower
    new = child.map(8, prot="none")
    child.munmap(gone)
    delta = pagewalk.snapshot(child.pid) - before
    inside = {(r.start - area.address) // PAGE: r for r in delta.regions if area.address <= r.start < area.end}
    assert {page: (r.status, r.size_growth // PAGE) for page, r in inside.items()} == {
        0: ("shrunk", -8),
        8: ("grown", 8),
        48: ("kept", 0),
    }
    assert (inside[8].rss_growth, inside[8].anon_growth) == (8 * PAGE, 8 * PAGE)
    assert [r.status for r in delta.regions if r.start == gone.address] == ["removed"]
    assert [r.status for r in delta.regions if r.start <= new.address < r.end] == ["added"]


def _reference_match(before: list[Any], after: list[Any]) -> set[tuple[int | None, int | None]]:
    """The matching rule spelled out: by start and name first; then each region of `after` left over, in
    address order, takes the lowest region of `before` of its name not yet taken that overlaps it."""
    left = {(r.start, r.name): r for r in before}
    pairs, pending = set(), []
    for region in after:
        old = left.pop((region.start, region.name), None)
        if old is None:
            pending.append(region)
        else:
            pairs.add((old.start, region.start))
    for region in pending:
        overlapping = [
            o for o in left.values() if o.name == region.name and o.start < region.end and region.start < o.end
        ]
        old = min(overlapping, key=lambda o: o.start, default=None)
        if old is not None:
            del left[(old.start, old.name)]
        pairs.add((None if old is None else old.start, region.start))
    return pairs | {(old.start, None) for old in left.values()}


def _random_layout(rng: random.Random, count: int) -> list[Any]:
    """Sorted, disjoint regions with a few names, some touching, some apart."""
    regions, address = [], 0
    for _ in range(count):
        address += rng.choice((0, 0, 1, 3))
        size = rng.randint(1, 6)
        regions.append(types.SimpleNamespace(start=address, end=address + size, name=rng.choice("abc")))
        address += size
    return regions


@pytest.mark.parametrize("seed", range(200))
def test_region_matching_follows_its_rule_on_random_layouts(seed: int) -> None:
    from pagewalk.delta import _match_regions

    rng = random.Random(seed)
    before, after = _random_layout(rng, rng.randint(0, 30)), _random_layout(rng, rng.randint(0, 30))
    pairs, added, removed = _match_regions(tuple(before), tuple(after))
    found = {(old.start, new.start) for old, new in pairs}
    found |= {(None, new.start) for new in added} | {(old.start, None) for old in removed}
    assert len(pairs) * 2 + len(added) + len(removed) == len(before) + len(after)  # each region once
    assert found == _reference_match(before, after)
