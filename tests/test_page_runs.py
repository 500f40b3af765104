"""Virtual pages kept as runs, and the run-by-run matching a delta uses, against plain per-page set logic."""

from __future__ import annotations

import numpy as np
import pytest

from pagesnap.delta import _match_pages
from pagesnap.reader import PageRuns


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
