"""pytest-pagemap: assert on the memory of processes a test starts, read from their Linux page tables.

The pytest plugin (`pytest_pagemap.plugin`, loaded through the `pytest11` entry point) provides the `pagemap`
fixture, the `@pytest.mark.pagemap(...)` marker and the `--pagemap` options. The measuring itself lives in
the pytest-free core, `pagewalk`.
"""

from __future__ import annotations

from pagewalk.measure import Limits, Measurement, MemoryLimitExceeded, NotMeasured, SharingBelow, Verdict

from .fixtures import Pagemap, Runner
from .processes import AttachedProcess, ProcessEnded, ProcessNotReady, SpawnedProcess, SpawnFailed
from .runner import ChildCrashed, RemoteError, RemoteTraceback, RunResult

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
