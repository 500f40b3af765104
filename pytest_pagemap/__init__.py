"""pytest-pagemap: assert on the memory of processes a test starts, read from their Linux page tables.

The pytest plugin (`pytest_pagemap.plugin`, loaded through the `pytest11` entry point) provides the `pagemap`
fixture, the `@pytest.mark.pagemap(...)` marker and the `--pagemap` options. The measuring itself lives in
the pytest-free core, `pagewalk`. The names below load on first use, so that loading the plugin stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pagewalk._lazy import lazy_attributes

if TYPE_CHECKING:
    from pagewalk.measure import Limits, Measurement, MemoryLimitExceeded, NotMeasured, SharingBelow, Verdict

    from .pagemap import Pagemap, Runner
    from .processes import AttachedProcess, ProcessEnded, ProcessNotReady, SpawnedProcess, SpawnFailed
    from .runner import ChildCrashed, RemoteError, RemoteTraceback, RunResult

# Public name -> the module defining it.
_SOURCES = {
    "AttachedProcess": ".processes",
    "ChildCrashed": ".runner",
    "Limits": "pagewalk.measure",
    "Measurement": "pagewalk.measure",
    "MemoryLimitExceeded": "pagewalk.measure",
    "NotMeasured": "pagewalk.measure",
    "Pagemap": ".pagemap",
    "ProcessEnded": ".processes",
    "ProcessNotReady": ".processes",
    "RemoteError": ".runner",
    "RemoteTraceback": ".runner",
    "RunResult": ".runner",
    "SharingBelow": "pagewalk.measure",
    "Runner": ".pagemap",
    "SpawnFailed": ".processes",
    "SpawnedProcess": ".processes",
    "Verdict": "pagewalk.measure",
}

__all__ = [
    "AttachedProcess",
    "ChildCrashed",
    "Limits",
    "Measurement",
    "MemoryLimitExceeded",
    "NotMeasured",
    "Pagemap",
    "ProcessEnded",
    "ProcessNotReady",
    "RemoteError",
    "RemoteTraceback",
    "RunResult",
    "Runner",
    "SharingBelow",
    "SpawnFailed",
    "SpawnedProcess",
    "Verdict",
]


__getattr__, __dir__ = lazy_attributes(__name__, _SOURCES)
