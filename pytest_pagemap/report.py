"""The session summary and per-test report sections, built from measurements as JSON-ready dicts.

Measurements travel as dicts (`Measurement.to_dict()` plus the test id) so the same code reports them from
this process and from xdist workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pagewalk._present import UNKNOWN, plural, size_cell
from pagewalk._present import verdict_text as _verdict_text
from pagewalk.units import PAGE_SIZE, format_size

__all__ = ["SECTION_TITLE", "summary_lines", "verdict_text"]

SECTION_TITLE = "pagemap"


def verdict_text(verdict: dict[str, Any]) -> str:
    """`pass  uss_growth 1.2 MiB <= 8.0 MiB (marker)`, from a verdict's dict."""
    fields = ("metric", "measured", "limit", "passed", "unit", "source")
    return _verdict_text(*(verdict[name] for name in fields))


def _written(delta: dict[str, Any]) -> str:
    written = delta.get("written")
    if written is None:
        return f"written {UNKNOWN}"
    return f"written {format_size(written)} ({plural(written // PAGE_SIZE, 'page')})"


def _measurement_lines(result: dict[str, Any]) -> list[str]:
    before, after, delta = result["before"], result["after"], result["delta"]
    growth = format_size(delta["uss_growth"], signed=True)
    uss = f"USS {size_cell(before['uss'])} -> {size_cell(after['uss'])} ({growth})"
    peak = delta.get("peak_rss")
    peak_text = "" if peak is None else f", peak RSS {format_size(peak)}"
    processes = result.get("processes", 1)
    who = f"pid {result['pid']}" if processes == 1 else f"pid {result['pid']} and {processes - 1} descendants"
    lines = [f"{result['test']}", f"  {result['label']!r} ({who}): {uss}, {_written(delta)}{peak_text}"]
    lines.extend(f"    note: {note}" for note in result.get("notes", ()))
    verdicts = result["verdicts"]
    lines.extend(f"    {verdict_text(verdict)}" for verdict in verdicts)
    if not verdicts:
        lines.append("    no limits")
    return lines


def summary_lines(results: Sequence[dict[str, Any]]) -> list[str]:
    """The terminal summary: every measurement with its test, totals, pages written and verdicts."""
    if not results:
        return ["no measurements"]
    lines: list[str] = []
    for result in results:
        lines.extend(_measurement_lines(result))
    verdicts = [verdict for result in results for verdict in result["verdicts"]]
    failed = sum(not verdict["passed"] for verdict in verdicts)
    tests = len({result["test"] for result in results})
    lines.append(
        f"{plural(len(results), 'measurement')} in {plural(tests, 'test')}, "
        f"{plural(len(verdicts), 'limit')} checked, {failed} exceeded"
    )
    return lines
