"""Pages kept as runs and matched run by run, and PFN look-ups by coalesced reads, against one-by-one logic."""

from __future__ import annotations

import ctypes
import mmap
import os

import numpy as np
import pytest

from pagewalk import _accounting, bits
from pagewalk._accounting import PageData, _code_runs
from pagewalk.delta import _match_pages
from pagewalk.reader import PFN_GAP, EntryArrays, PageRuns, lookup_pfns, read_scanned


def random_pages(rng: np.random.Generator, span: int, density: float) -> np.ndarray:
    return np.flatnonzero(rng.random(span) < density).astype(np.uint64) + np.uint64(1 << 20)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(("density_before", "density_after"), [(0.5, 0.5), (0.95, 0.9), (0.05, 0.6), (0.0, 0.3)])
def test_matching_by_runs_finds_every_common_page(seed: int, density_before: float, density_after: float) -> None:
    rng = np.random.default_rng(seed)
    before, after = random_pages(rng, 5000, density_before), random_pages(rng, 5000, density_after)
    runs_before, runs_after = PageRuns.from_pages(before), PageRuns.from_pages(after)
    assert np.array_equal(runs_before.to_array(), before) and len(runs_before) == len(before)

    in_before, in_after, common = _match_pages(runs_before, runs_after)
    _, expected_before, expected_after = np.intersect1d(before, after, assume_unique=True, return_indices=True)
    assert common == len(expected_before)
    assert np.array_equal(np.asarray(in_before), expected_before)
    assert np.array_equal(np.asarray(in_after), expected_after)


def test_the_same_pages_match_in_place() -> None:
    pages = np.array([3, 4, 5, 9, 10, 40], dtype=np.uint64)
    in_before, in_after, common = _match_pages(PageRuns.from_pages(pages), PageRuns.from_pages(pages.copy()))
    assert (in_before, in_after, common) == (slice(None), slice(None), 6)


def test_page_indexes_of_ranges_inside_runs() -> None:
    runs = PageRuns.from_pages(np.array([3, 4, 5, 9, 10, 11, 12, 40], dtype=np.uint64))
    first = np.array([4, 10, 40], dtype=np.uint64)
    end = np.array([6, 12, 41], dtype=np.uint64)
    assert runs.indexes(first, end).tolist() == [1, 2, 4, 5, 7]


needs_kpageflags = pytest.mark.skipif(
    not os.access("/proc/kpageflags", os.R_OK), reason="reading /proc/kpageflags needs CAP_SYS_ADMIN"
)


@needs_kpageflags
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("gap", [0, PFN_GAP])
def test_pfn_lookups_match_one_read_per_frame(threads: int, gap: int) -> None:
    """Frames in random order, alone, in a run and repeated, over many thousands of reads: the sorted,
    coalesced reads return what reading each frame on its own returns."""
    rng = np.random.default_rng(7)
    alone = rng.choice(1 << 20, 30000, replace=False).astype(np.uint64)  # within the first 4 GiB of frames
    pfns = np.concatenate((alone, np.arange(5000, 5064, dtype=np.uint64), alone[:50]))
    rng.shuffle(pfns)

    def one_by_one() -> np.ndarray:
        with open("/proc/kpageflags", "rb", buffering=0) as kpageflags:
            words = [os.pread(kpageflags.fileno(), 8, int(pfn) * 8).ljust(8, b"\0") for pfn in pfns]
        return np.frombuffer(b"".join(words), dtype=np.uint64)

    # Frames in use change flags meanwhile (LRU, ACTIVE, ...): a look-up must match the read before it or
    # the one after, on one of a few tries; a look-up that reads the wrong place is wrong every time.
    for _ in range(3):
        earlier = one_by_one()
        (flags,) = lookup_pfns(["/proc/kpageflags"], pfns, gap=gap, threads=threads)
        mismatched = (flags != earlier) & (flags != one_by_one())
        if not mismatched.any():
            return
    pytest.fail(f"{np.count_nonzero(mismatched)} frames differ, such as {pfns[mismatched][:10].tolist()}")


def test_reading_no_scanned_ranges_gives_no_pages() -> None:
    fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:
        empty = np.empty(0, dtype=np.uint64)
        arrays = read_scanned(fd, empty, empty)
    finally:
        os.close(fd)
    assert len(arrays) == 0 and len(arrays.runs) == 0 and len(arrays.top) == 0


def spelled_out_code_runs(top: np.ndarray, bounds: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(first, length, code, region) of each run of equal bytes inside each region, page by page."""
    runs: list[list[int]] = []
    for region in range(len(bounds) - 1):
        for index in range(int(bounds[region]), int(bounds[region + 1])):
            if index == bounds[region] or top[index] != top[index - 1]:
                runs.append([index, 0, int(top[index]), region])
            runs[-1][1] += 1
    return [tuple(run) for run in runs]  # type: ignore[misc]


@pytest.mark.parametrize("seed", range(40))
def test_code_runs_split_at_every_change_and_region_start(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pages = int(rng.integers(0, 300))
    # A few byte values in long stretches, as entries have; regions of any size, empty ones included.
    top = np.repeat(rng.choice([0x81, 0xA1, 0xA0, 0x40], size=pages), rng.integers(1, 4, size=pages))[:pages]
    top = top.astype(np.uint8)
    cuts = np.sort(rng.integers(0, pages + 1, size=int(rng.integers(0, 12))))
    bounds = np.concatenate(([0], cuts, [pages])).astype(np.int64)
    runs = _code_runs(top, bounds)
    found = list(zip(runs.first.tolist(), runs.length.tolist(), runs.code.tolist(), runs.region.tolist(), strict=True))
    assert found == spelled_out_code_runs(top, bounds)


@pytest.mark.parametrize("seed", range(30))
def test_counts_corrected_for_marked_pages_equal_a_recount(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pages = int(rng.integers(1, 400))
    top = np.repeat(rng.choice([0x81, 0xA1, 0xC0, 0x40], size=pages), rng.integers(1, 5, size=pages))[:pages]
    entry = top.astype(np.uint64) << np.uint64(56)
    arrays = EntryArrays(PageRuns.from_pages(np.arange(pages, dtype=np.uint64)), entry, top.astype(np.uint8))
    cuts = np.sort(rng.integers(0, pages + 1, size=int(rng.integers(0, 10))))
    bounds = np.concatenate(([0], cuts, [pages])).astype(np.int64)
    data = PageData(arrays, bounds, "read", _code_runs(arrays.top, bounds))
    # Single pages and ranges, some marked twice, with both marks; and exclusivity flipped, as map counts do.
    _accounting._mark_pages(data, rng.choice(pages, size=min(pages, 7)), bits.MARK_ZERO)
    lo = np.sort(rng.choice(pages, size=3))
    _accounting._mark(data, lo, np.minimum(lo + rng.integers(0, 20, size=3), pages), bits.MARK_PMD)
    _accounting._mark_pages(data, rng.choice(pages, size=min(pages, 5)), bits.MARK_PMD)
    assert data.moved  # a list of pages to correct for, not None: the counts are corrected, not redone
    corrected = _accounting._final_histogram(data, len(bounds) - 1)

    data.moved = None  # as after many marks: every region counted again
    recounted = _accounting._final_histogram(data, len(bounds) - 1)
    assert recounted.counts.sum() == pages
    columns = np.searchsorted(corrected.codes, recounted.codes)
    assert np.array_equal(corrected.counts[:, columns], recounted.counts)
    others = np.setdiff1d(np.arange(len(corrected.codes)), columns)
    assert not corrected.counts[:, others].any()  # bytes no page has any more count none


def test_scanned_pages_no_longer_mapped_are_dropped() -> None:
    """A range the scan found may have lost pages by the time it is read (page cache reclaimed meanwhile)."""
    page = mmap.PAGESIZE
    area = mmap.mmap(-1, 8 * page)
    for index in (0, 1, 2, 5):
        area[index * page] = 1
    first = ctypes.addressof(ctypes.c_char.from_buffer(area)) // page
    fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:
        scanned = np.array([first], dtype=np.uint64)
        arrays = read_scanned(fd, scanned, scanned + np.uint64(8))
    finally:
        os.close(fd)
    assert (arrays.runs.to_array() - np.uint64(first)).tolist() == [0, 1, 2, 5]
    assert len(arrays.entry) == len(arrays.top) == 4 and bool((arrays.top >= 0x80).all())
