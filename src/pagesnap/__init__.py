"""pagesnap: exact snapshots of a Linux process's page tables, read from /proc/PID/pagemap.

>>> import pagesnap
>>> snap = pagesnap.snapshot(pid)
>>> snap.uss, snap.rss, snap.swap
"""

from __future__ import annotations

from .capabilities import Capabilities, capabilities
from .errors import AccessDenied, InvalidPid, NoAddressSpace, PagesnapError, ProcessGone, Unsupported
from .snapshot import Region, Snapshot, Totals, snapshot
from .units import format_size, parse_size

__all__ = [
    "AccessDenied",
    "Capabilities",
    "InvalidPid",
    "NoAddressSpace",
    "PagesnapError",
    "ProcessGone",
    "Region",
    "Snapshot",
    "Totals",
    "Unsupported",
    "capabilities",
    "format_size",
    "parse_size",
    "snapshot",
]

__version__ = "0.1.0.dev0"
