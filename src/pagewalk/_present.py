"""How pagewalk writes things for people: tables, size cells, plurals, output tails and verdict texts.

The command line, the pytest plugin and the reports all print through these, so a size nobody can know,
a count of things, a table or a checked limit reads the same wherever it shows.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Literal

from .units import format_size

__all__ = ["TAIL_LINES", "UNKNOWN", "Unit", "amount", "plural", "size_cell", "table", "tail", "verdict_text"]

Unit = Literal["bytes", "pages"]
UNKNOWN = "-"  # a value this kernel or user cannot know (None), in every table and line
TAIL_LINES = 40  # of a process's output, quoted when it failed


def size_cell(value: int | None, *, signed: bool = False) -> str:
    """`1.5 MiB` (`+1.5 MiB` when `signed`), or `UNKNOWN` for None."""
    return UNKNOWN if value is None else format_size(value, signed=signed)


def plural(count: int, noun: str) -> str:
    """`1 page`, `3 pages`, `0 pages`."""
    return f"{count} {noun}{'' if abs(count) == 1 else 's'}"


def amount(value: int, unit: Unit, *, signed: bool = False) -> str:
    """A measured quantity in its unit: a size, or a count of pages."""
    if unit == "bytes":
        return format_size(value, signed=signed)
    return ("+" if signed and value >= 0 else "") + plural(value, "page")


def table(
    header: Sequence[str], rows: Sequence[Sequence[str]], *, right: Collection[int] = (), indent: str = ""
) -> list[str]:
    """Lines of a plain-text table, columns two spaces apart; the columns numbered in `right` are aligned
    right (sizes and changes then line up on their last digit). The last column is never padded."""
    widths = [max(len(line[column]) for line in [header, *rows]) for column in range(len(header))]
    last = len(header) - 1
    lines = []
    for line in [header, *rows]:
        cells = [
            text.rjust(widths[column]) if column in right else text if column == last else text.ljust(widths[column])
            for column, text in enumerate(line)
        ]
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


def tail(text: str, lines: int = TAIL_LINES) -> str:
    """The last `lines` lines of a process's output, indented to sit under a message, or `(empty)`."""
    kept = text.splitlines()[-lines:]
    return "\n".join("    " + line for line in kept) if kept else "    (empty)"


def verdict_text(
    metric: str, measured: int, limit: int, passed: bool, unit: Unit, source: str, *, gap: str = "  "
) -> str:
    """`pass  uss_growth 1.2 MiB <= 8.0 MiB (marker)`, or `FAIL  ... > ...`: one checked limit. The `gap` after
    the outcome sets verdicts in a list apart; a table cell takes one space."""
    outcome, relation = ("pass", "<=") if passed else ("FAIL", ">")
    return f"{outcome}{gap}{metric} {amount(measured, unit)} {relation} {amount(limit, unit)} ({source})"
