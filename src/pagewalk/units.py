"""Parsing and formatting sizes: `"64 MiB"`, `"1.5 GB"`, `"100 pages"`, or an int of bytes."""

from __future__ import annotations

import mmap
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fractions import Fraction

__all__ = ["MAX_SIZE", "PAGE_SIZE", "format_size", "parse_decimal", "parse_size"]

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

MAX_SIZE = 2**63 - 1  # bytes: what a 64-bit signed count holds, and what a record stores
_DECIMAL = re.compile(r"[0-9]{1,30}(?:\.[0-9]{0,30})?|\.[0-9]{1,30}", re.ASCII)
_SIZE_RE = re.compile(r"^[ \t]*([+-]?[0-9.]+)[ \t]*([A-Za-z]*)[ \t]*$", re.ASCII)

ACCEPTED_FORMS = (
    "an int of bytes, or a string such as '4096', '512 KiB', '64 MiB', '1.5 GiB' (powers of 1024), "
    "'500 kB', '64 MB', '1.5 GB' (powers of 1000), or '100 pages'; ASCII digits, no exponent, "
    "at most 2**63 - 1 bytes"
)


def parse_decimal(text: str) -> Fraction | None:
    """The exact value of an unsigned decimal written with ASCII digits (`5`, `0.5`, `.5`, `12.`; at most 30
    digits before and after the point), or None when `text` is not one. No exponents, no other digits."""
    from fractions import Fraction  # on first use: option help imports this module at every pytest start

    return Fraction(text) if _DECIMAL.fullmatch(text) else None


def parse_size(value: int | str, *, allow_negative: bool = False) -> int:
    """Return `value` in bytes.

    `KiB/MiB/GiB/TiB` are powers of 1024, `kB/MB/GB/TB` powers of 1000 (unit names are matched without
    regard to case), `pages` are this machine's page size. Anything else raises `ValueError` naming the
    accepted forms.
    """
    if isinstance(value, bool):
        raise ValueError(f"size {value!r} is a bool; expected {ACCEPTED_FORMS}")
    if isinstance(value, int):
        result, negative = value, value < 0
    elif isinstance(value, str):
        match = _SIZE_RE.match(value)
        unit = match.group(2).lower() if match else ""
        number = parse_decimal(match.group(1).lstrip("+-")) if match else None
        if match is None or number is None or (unit and unit not in _UNITS):
            raise ValueError(f"cannot read {value!r} as a size; expected {ACCEPTED_FORMS}")
        negative = match.group(1).startswith("-") and number > 0
        result = round(number * _UNITS[unit or "b"]) * (-1 if negative else 1)
    else:
        raise ValueError(f"size {value!r} has type {type(value).__name__}; expected {ACCEPTED_FORMS}")
    if negative and not allow_negative:
        raise ValueError(f"size {value!r} is negative; a limit must be zero or more")
    if abs(result) > MAX_SIZE:
        raise ValueError(f"size {value!r} is more than {MAX_SIZE} bytes (2**63 - 1); expected {ACCEPTED_FORMS}")
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
