"""The `pagemap` fixture and the session settings it reads.

The object it gives a test (`Pagemap`, in the `pagemap` module) loads with the fixture's first use: a session
that never measures registers the fixture without loading it or the measuring code behind it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from pagewalk.metrics import Option

if TYPE_CHECKING:
    # Loaded on first use (numpy, /proc): loading the plugin must stay cheap for runs that never measure.
    from pagewalk.measure import Limits, Measurement

    from .pagemap import Pagemap

__all__ = [
    "DEFAULT_GRACE_SECONDS",
    "GATE_NEEDS_KEY",
    "MEASUREMENTS_KEY",
    "SETTINGS_KEY",
    "Settings",
    "pagemap",
    "platform_problem",
]


@dataclass(frozen=True)
class Settings:
    """What the options and ini keys chose for this session."""

    active: bool  # --pagemap: limits from markers and defaults, MEMORY status, summary
    strict: bool  # --pagemap-strict: fail instead of skip when the kernel or user cannot measure
    grace: float  # seconds between SIGTERM and SIGKILL when ending processes
    defaults: Limits | None = None  # session-wide limits from --pagemap-limit options and pagemap_limits ini lines

    @functools.cached_property
    def unsupported(self) -> str | None:
        """Why this platform cannot be measured, or None; the plugin is then inactive. Found out when first
        asked, so that a session that never measures does not load the core's /proc layer."""
        return platform_problem()


def platform_problem() -> str | None:
    """Why this platform cannot be measured (not Linux, no /proc/PID/pagemap), or None when it can."""
    from pagewalk.errors import Unsupported
    from pagewalk.procfs import check_platform

    try:
        check_platform()
    except Unsupported as exc:
        return str(exc)
    return None


DEFAULT_GRACE_SECONDS = 5.0
SETTINGS_KEY = pytest.StashKey[Settings]()
MEASUREMENTS_KEY: pytest.StashKey[list[Measurement]] = pytest.StashKey()
# The measure() options the session's gate thresholds need, so every measurement records the metrics gated.
GATE_NEEDS_KEY = pytest.StashKey[frozenset[Option]]()

# For a fixture used while the plugin's configure hook has not run (the plugin registered late).
_INACTIVE = Settings(active=False, strict=False, grace=DEFAULT_GRACE_SECONDS)


@pytest.fixture
def pagemap(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pagemap]:
    """Measure the memory of other processes from their page tables (pytest-pagemap).

    - ``pagemap.spawn(cmd, ready=..., env=None, cwd=None, timeout=30)`` starts a command in its own process
      group with its output captured; ``ready`` is a callable, a regex on an output line, a TCP port or
      ``(host, port)``, or a ``pathlib.Path``. The process group is ended at teardown.
    - ``pagemap.attach(pid)`` takes a process the test started itself.
    - ``with pagemap.measure(proc, writes=False, accessed=False, flags=False, counts=False) as m:`` snapshots
      ``proc`` before and after the block: ``m.before``, ``m.after``, ``m.delta``, ``m.assert_uss_below(...)``,
      ``m.assert_uss_growth_below("8 MiB")``, ``m.assert_written_below(...)``, ``m.assert_no_flag_gain("THP")``...
    - ``pagemap.run(func, *args, **kwargs)`` calls a picklable function in a fresh interpreter and measures
      the call: ``result.value``, ``result.measurement``.

    With ``--pagemap``, ``@pytest.mark.pagemap(uss_growth_below="8 MiB", ...)`` limits and the
    ``--pagemap-limit`` / ``pagemap_limits`` defaults are checked against every measurement. Tests needing
    what this kernel or user cannot give (soft-dirty for ``writes=True``, CAP_SYS_ADMIN for flags and PSS) are skipped.
    """
    from .pagemap import Pagemap

    settings = request.config.stash.get(SETTINGS_KEY, _INACTIVE)
    assert isinstance(request.node, pytest.Item)
    if settings.unsupported:
        Pagemap.unavailable(settings, [settings.unsupported])
    request.node.stash[MEASUREMENTS_KEY] = []  # this run's only, when a test runs again (--pagemap-repeat, reruns)
    session = Pagemap(request.node, settings, tmp_path_factory)
    try:
        yield session
    finally:
        session.close()
