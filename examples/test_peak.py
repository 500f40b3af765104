"""A function whose memory peaks while it runs and is gone when it returns: before/after snapshots see
nothing, the peak limit sees it.

`build_report` materialises every row before summing them, so it briefly holds about 90 MiB and frees it all
before returning. Its rows are 4 KiB each, so freeing them hands whole pages back: with many small rows,
how much the allocator keeps afterwards varies by about 1 MiB from run to run, and a gate on `anon` flaps.

`test_report_leaves_nothing_behind` passes on USS growth alone; `test_report_peak_is_bounded` puts a limit on
the peak that a streaming version would meet and this one does not: it is marked xfail(strict=True,
raises=MemoryLimitExceeded), so it shows failing for the right reason (the peak) without failing the run.
"""

from __future__ import annotations

import pytest

from pytest_pagemap import MemoryLimitExceeded

ROWS = 24_000


def build_report(rows: int) -> int:
    """The total size of a report, built the wasteful way: every row kept in a list first."""
    table = [f"row {index:>8} ".encode() * 300 for index in range(rows)]
    return sum(len(row) for row in table)


def test_report_leaves_nothing_behind(pagemap):
    result = pagemap.run(build_report, ROWS)
    m = result.measurement
    m.assert_uss_growth_below("8 MiB")  # before/after: the rows were freed
    m.assert_peak_rss_growth_below("512 MiB")  # a generous ceiling; `m.peak_rss_growth` shows the real peak
    assert m.peak_rss_growth is None or m.peak_rss_growth > 10 * m.delta.rss_growth


@pytest.mark.xfail(strict=True, raises=MemoryLimitExceeded, reason="the rows are all held at once")
@pytest.mark.pagemap(peak_rss_growth_below="16 MiB")  # checked with --pagemap
def test_report_peak_is_bounded(pagemap):
    result = pagemap.run(build_report, ROWS)
    result.measurement.assert_peak_rss_growth_below("16 MiB")  # checked always
