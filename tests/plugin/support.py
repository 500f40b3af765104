"""Shared by the plugin's tests: the source of inner test modules, and skips for what this machine lacks."""

from __future__ import annotations

import pytest

from pagewalk import capabilities

# A function an inner test runs with `pagemap.run` to grow the child by a known amount.
GROW = """
import pytest

kept = []


def grow(nbytes):
    block = bytearray(nbytes)
    block[::4096] = b"x" * len(block[::4096])
    kept.append(block)
    return nbytes
"""

# Two tests with one limit: test_small stays within it, test_big (listed second) exceeds it.
SMALL_AND_BIG = (
    GROW
    + """
@pytest.mark.pagemap(uss_growth_below="2 MiB")
def test_small(pagemap):
    pagemap.run(grow, 1 << 20)

@pytest.mark.pagemap(uss_growth_below="2 MiB")
def test_big(pagemap):
    pagemap.run(grow, 4 << 20)
"""
)

privileged = pytest.mark.skipif(
    capabilities().missing_for_flags() is not None or capabilities().missing_for_pss() is not None,
    reason="page flags and PSS need CAP_SYS_ADMIN",
)
without_soft_dirty = pytest.mark.skipif(capabilities().soft_dirty, reason="this kernel has soft-dirty: nothing to skip")
