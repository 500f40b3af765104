"""A cache that never evicts, caught by a memory limit.

The test is marked xfail(strict=True, raises=MemoryLimitExceeded): it is shown failing for the right reason
(`x` in the progress line, the limit's verdict FAIL in the `--pagemap` summary) without failing the run, and
it would turn the run red if the leak were fixed or if it failed for any other reason.
"""

from __future__ import annotations

import pytest

from pytest_pagemap import MemoryLimitExceeded

_cache: dict[int, bytes] = {}


def render(page: int) -> bytes:
    """Render a page, remembering every result forever: the leak."""
    if page not in _cache:
        _cache[page] = bytes([page % 256]) * 64 * 1024
    return _cache[page]


def serve(requests: int) -> int:
    """Serve `requests` requests for distinct pages and return the bytes sent."""
    return sum(len(render(page)) for page in range(requests))


@pytest.mark.xfail(strict=True, raises=MemoryLimitExceeded, reason="the cache keeps every page it renders")
def test_cache_memory_is_bounded(pagemap):
    result = pagemap.run(serve, 1_000)  # 1000 pages of 64 KiB: about 62.5 MiB kept
    assert result.value == 1_000 * 64 * 1024
    result.measurement.assert_uss_growth_below("16 MiB")
