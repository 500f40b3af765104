"""The PAGEMAP_SCAN front end against the plain reader, on address spaces that stress its batching."""

from __future__ import annotations

import numpy as np
import pytest
from puppet import Puppet

import pagesnap

CAPS = pagesnap.capabilities()
pytestmark = pytest.mark.skipif(not CAPS.pagemap_scan, reason="PAGEMAP_SCAN needs Linux 6.7+")


@pytest.mark.parametrize("pages", [1200, 9000])  # over the kernel's 512-range batch, and over a full vector
def test_many_ranges_are_read_once(puppet: Puppet, pages: int) -> None:
    """Every other page present: one scan range per page. Linux can leave walk_end at an internal batch
    boundary when the walk in fact finished; resuming there would count ranges twice."""
    area = puppet.map(pages)
    puppet.write(area, range(0, pages, 2))
    with puppet.stopped():
        by_scan = pagesnap.snapshot(puppet.pid, method="scan")
        by_read = pagesnap.snapshot(puppet.pid, method="read")
    assert np.array_equal(by_scan.vpn, by_read.vpn)
    assert np.all(np.diff(by_scan.vpn.astype(np.int64)) > 0)
    assert by_scan.rss == by_read.rss
    (region,) = [r for r in by_scan.regions if r.start == area.address]
    assert region.rss == (pages + 1) // 2 * CAPS.page_size
