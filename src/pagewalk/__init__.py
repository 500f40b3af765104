"""pagewalk: exact snapshots of a Linux process's page tables, read from /proc/PID/pagemap.

>>> import pagewalk
>>> snap = pagewalk.snapshot(pid)
>>> snap.uss, snap.rss, snap.swap
"""

from __future__ import annotations

from .capabilities import Capabilities, capabilities
from .delta import Delta, RegionDelta, diff
from .errors import AccessDenied, InvalidPid, NoAddressSpace, PagewalkError, ProcessGone, Unsupported
from .measure import Limits, Measurement, MemoryLimitExceeded, NotMeasured, Verdict, measure
from .snapshot import Region, Snapshot, Totals, snapshot
from .tracking import start_tracking
from .units import format_size, parse_size

__all__ = [
    "AccessDenied",
    "Capabilities",
    "Delta",
    "InvalidPid",
    "Limits",
    "Measurement",
    "MemoryLimitExceeded",
    "NoAddressSpace",
    "NotMeasured",
    "PagewalkError",
    "ProcessGone",
    "Region",
    "RegionDelta",
    "Snapshot",
    "Totals",
    "Unsupported",
    "Verdict",
    "capabilities",
    "diff",
    "format_size",
    "measure",
    "parse_size",
    "snapshot",
    "start_tracking",
]

__version__ = "0.1.0.dev0"
