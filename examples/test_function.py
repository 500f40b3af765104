"""Measure a Python function in a fresh interpreter with `pagemap.run`.

The function and its arguments are pickled to a child interpreter, which pauses just before and just after
the call so the child can be snapshotted; the return value comes back in `result.value`.
"""

from __future__ import annotations

import numpy as np


def build_index(words: int) -> int:
    """Build a dict of `words` entries and return its size: the memory it holds is what the test measures."""
    index = {f"word-{n}": n for n in range(words)}
    return len(index)


_kept: list[np.ndarray] = []


def allocate(megabytes: int, *, touch: bool) -> int:
    """Allocate an array and keep it; only the pages it touches become resident."""
    array = np.empty(megabytes * 1024 * 1024, dtype=np.uint8)
    if touch:
        array.fill(1)
    _kept.append(array)  # still alive when the child is measured after the call
    return int(array.nbytes)


def test_index_fits_its_budget(pagemap):
    result = pagemap.run(build_index, 50_000)
    assert result.value == 50_000
    result.measurement.assert_uss_growth_below("32 MiB")
    assert result.delta.uss_growth > 1024 * 1024  # it did allocate: the measurement sees it


def test_untouched_memory_is_not_resident(pagemap):
    untouched = pagemap.run(allocate, 64, touch=False)
    touched = pagemap.run(allocate, 64, touch=True)
    untouched.measurement.assert_rss_growth_below("1 MiB")  # reserved, never written: no pages behind it
    assert touched.delta.rss_growth >= 64 * 1024 * 1024 - 4096


def test_pages_written(pagemap):
    # Counting pages written needs soft-dirty tracking (CONFIG_MEM_SOFT_DIRTY): skipped on kernels without it.
    result = pagemap.runner(writes=True)(allocate, 16, touch=True)
    result.measurement.assert_written_below("20 MiB")
