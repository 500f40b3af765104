"""The session summary and per-test report sections, built from measurements as JSON-ready dicts.

Measurements travel as dicts (`Measurement.to_dict()` plus the test id) so the same code reports them from
this process and from xdist workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pagewalk.units import PAGE_SIZE, format_size

__all__ = ["SECTION_TITLE", "summary_lines", "verdict_text"]

SECTION_TITLE = "pagemap"


def _size(value: int | None) -> str:
    return "n/a" if value is None else format_size(value)


def verdict_text(verdict: dict[str, Any]) -> str:
    """`pass  uss_growth 1.2 MiB <= 8.0 MiB (marker)`."""
    if verdict["unit"] == "pages":
        measured, limit = f"{verdict['measured']} pages", f"{verdict['limit']} pages"
    else:
        measured, limit = format_size(verdict["measured"]), format_size(verdict["limit"])
    outcome, relation = ("pass", "<=") if verdict["passed"] else ("FAIL", ">")
    return f"{outcome}  {verdict['metric']} {measured} {relation} {limit} ({verdict['source']})"


def _written(delta: dict[str, Any]) -> str:
    written = delta.get("written")
    if written is None:
        return "written n/a"
    return f"written {format_size(written)} ({written // PAGE_SIZE} pages)"


def _measurement_lines(result: dict[str, Any]) -> list[str]:
    before, after, delta = result["before"], result["after"], result["delta"]
    uss = f"USS {_size(before['uss'])} -> {_size(after['uss'])} ({format_size(delta['uss_growth'], signed=True)})"
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
        f"{len(results)} measurement{'s' if len(results) != 1 else ''} in {tests} test{'s' if tests != 1 else ''}, "
        f"{len(verdicts)} limit{'s' if len(verdicts) != 1 else ''} checked, {failed} exceeded"
    )
    return lines
