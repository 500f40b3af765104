"""Parsing and formatting sizes: `"64 MiB"`, `"1.5 GB"`, `"100 pages"`, or an int of bytes."""

from __future__ import annotations

import math
import mmap
import re

__all__ = ["PAGE_SIZE", "format_size", "parse_size"]

PAGE_SIZE = mmap.PAGESIZE

_UNITS: dict[str, int] = {
    "b": 1,
    "byte": 1,
    "bytes": 1,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "page": PAGE_SIZE,
    "pages": PAGE_SIZE,
}

_SIZE_RE = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*([A-Za-z]*)\s*$")

ACCEPTED_FORMS = (
    "an int of bytes, or a string such as '4096', '512 KiB', '64 MiB', '1.5 GiB' (powers of 1024), "
    "'500 kB', '64 MB', '1.5 GB' (powers of 1000), or '100 pages'"
)


def parse_size(value: int | str, *, allow_negative: bool = False) -> int:
    """Return `value` in bytes.

    `KiB/MiB/GiB/TiB` are powers of 1024, `kB/MB/GB/TB` powers of 1000 (unit names are matched without
    regard to case), `pages` are this machine's page size. Anything else raises `ValueError` naming the
    accepted forms.
    """
    if isinstance(value, bool):
        raise ValueError(f"size {value!r} is a bool; expected {ACCEPTED_FORMS}")
    if isinstance(value, int):
        number: float = value
        result = value
    elif isinstance(value, str):
        match = _SIZE_RE.match(value)
        unit = match.group(2).lower() if match else ""
        if match is None or (unit and unit not in _UNITS):
            raise ValueError(f"cannot read {value!r} as a size; expected {ACCEPTED_FORMS}")
        number = float(match.group(1))
        scaled = number * _UNITS[unit or "b"]
        if not math.isfinite(scaled):
            raise ValueError(f"size {value!r} is too large")
        result = round(scaled)
    else:
        raise ValueError(f"size {value!r} has type {type(value).__name__}; expected {ACCEPTED_FORMS}")
    if number < 0 and not allow_negative:
        raise ValueError(f"size {value!r} is negative; a limit must be zero or more")
    return result


def format_size(nbytes: int | float, *, signed: bool = False) -> str:
    """Format bytes with binary units, one decimal: `71.2 MiB`; with `signed`, a leading `+` or `-`."""
    sign = ""
    if signed:
        sign = "+" if nbytes >= 0 else "-"
    elif nbytes < 0:
        sign = "-"
    magnitude = float(abs(nbytes))
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    index = 0
    while magnitude >= 1024 and index < len(units) - 1:
        magnitude /= 1024
        index += 1
    if index == 0:
        return f"{sign}{int(magnitude)} B"
    return f"{sign}{magnitude:.1f} {units[index]}"
