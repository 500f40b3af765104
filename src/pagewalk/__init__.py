"""pagewalk: exact snapshots of a Linux process's page tables, read from /proc/PID/pagemap.

>>> import pagewalk
>>> snap = pagewalk.snapshot(pid)
>>> snap.uss, snap.rss, snap.swap

The names below load their module on first use: importing `pagewalk` (or a light module such as
`pagewalk.units`) costs no numpy and touches no kernel interface, so it is safe on any platform.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from ._lazy import lazy_attributes

if TYPE_CHECKING:
    from .capabilities import Capabilities, capabilities
    from .delta import Delta, RegionDelta, diff
    from .errors import AccessDenied, InvalidPid, NoAddressSpace, PagewalkError, ProcessGone, Unsupported
    from .measure import Limits, Measurement, MemoryLimitExceeded, NotMeasured, Verdict, measure
    from .snapshot import Region, Snapshot, Totals, snapshot
    from .tracking import start_tracking
    from .units import format_size, parse_size

__version__ = "0.1.0.dev0"

# Public name -> the submodule defining it.
_SOURCES = {
    "Capabilities": ".capabilities",
    "capabilities": ".capabilities",
    "Delta": ".delta",
    "RegionDelta": ".delta",
    "diff": ".delta",
    "AccessDenied": ".errors",
    "InvalidPid": ".errors",
    "NoAddressSpace": ".errors",
    "PagewalkError": ".errors",
    "ProcessGone": ".errors",
    "Unsupported": ".errors",
    "Limits": ".measure",
    "Measurement": ".measure",
    "MemoryLimitExceeded": ".measure",
    "NotMeasured": ".measure",
    "Verdict": ".measure",
    "measure": ".measure",
    "Region": ".snapshot",
    "Snapshot": ".snapshot",
    "Totals": ".snapshot",
    "snapshot": ".snapshot",
    "start_tracking": ".tracking",
    "format_size": ".units",
    "parse_size": ".units",
}

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


__getattr__, __dir__ = lazy_attributes(__name__, _SOURCES)


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # Loading a submodule binds it on its package. `measure` and `snapshot` name both a submodule and the
        # function it exports; the package attribute stays the function, whichever was imported first.
        if isinstance(value, types.ModuleType) and _SOURCES.get(name) == f".{name}":
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
