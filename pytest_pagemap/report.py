"""The session summary and per-test report sections, built from measurements as JSON-ready dicts.

Measurements travel as dicts (`Measurement.to_dict()` plus the test id) so the same code reports them from
this process and from xdist workers. The summary comes in two forms: `short`, one table row per measurement
(test, label, the metric that matters, its change, the peak when measured, the verdict), and `full`, every
measurement with its totals and every verdict; failures come first in both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pagewalk._present import plural, size_cell, table
from pagewalk._present import verdict_text as _verdict_text
from pagewalk.units import PAGE_SIZE, format_size

__all__ = ["summary_lines", "verdict_text"]

_LABEL_WIDTH = 40
_LEVELS = ("uss", "rss", "pss", "swap", "anon")  # the levels a measurement's dict holds before and after


def verdict_text(verdict: dict[str, Any], *, gap: str = "  ") -> str:
    """`pass  uss_growth 1.2 MiB <= 8.0 MiB (marker)`, from a verdict's dict."""
    fields = ("metric", "measured", "limit", "passed", "unit", "source")
    return _verdict_text(*(verdict[name] for name in fields), gap=gap)


def _failed(result: dict[str, Any]) -> bool:
    return any(not verdict["passed"] for verdict in result["verdicts"])


def _failures_first(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(results, key=_failed, reverse=True)  # stable: otherwise in the order they were reported


def _peak(result: dict[str, Any]) -> int | None:
    peak = result["delta"].get("peak_rss", result.get("peak_rss"))
    return peak if isinstance(peak, int) else None


# --- full: every measurement with its totals and verdicts ---------------------------------------------------


def _totals_text(result: dict[str, Any]) -> str:
    before, after, delta = result["before"], result["after"], result["delta"]
    parts = [
        f"USS {size_cell(before['uss'])} -> {size_cell(after['uss'])} ({format_size(delta['uss_growth'], signed=True)})"
    ]
    if (peak := _peak(result)) is not None:
        parts.append(f"peak RSS {format_size(peak)}")
    written = delta.get("written")
    if written is not None:  # unmeasured (no soft-dirty, or not asked for): not shown at all
        parts.append(f"written {format_size(written)} ({plural(written // PAGE_SIZE, 'page')})")
    if delta.get("accessed") is not None:
        parts.append(f"accessed {format_size(delta['accessed'])}")
    return ", ".join(parts)


def _measurement_lines(result: dict[str, Any]) -> list[str]:
    processes = result.get("processes", 1)
    who = f"pid {result['pid']}" if processes == 1 else f"pid {result['pid']} and {processes - 1} descendants"
    lines = [f"{result['test']}", f"  {result['label']!r} ({who}): {_totals_text(result)}"]
    lines.extend(f"    note: {note}" for note in result.get("notes", ()))
    verdicts = sorted(result["verdicts"], key=lambda verdict: verdict["passed"])
    lines.extend(f"    {verdict_text(verdict)}" for verdict in verdicts)
    if not verdicts:
        lines.append("    no limits")
    return lines


# --- short: one row per measurement -------------------------------------------------------------------------


def _key_metric(result: dict[str, Any]) -> str:
    """The metric a reader looks at first: the first limit exceeded, else the first checked, else USS."""
    verdicts = sorted(result["verdicts"], key=lambda verdict: verdict["passed"])
    return verdicts[0]["metric"] if verdicts else "uss"


def _metric_cells(result: dict[str, Any], metric: str) -> tuple[str, str]:
    """`uss 13.0 MiB` and its change `+4.0 MiB`, for the level a metric is about."""
    after, delta = result["after"], result["delta"]
    base = metric.removesuffix("_growth")
    if base in _LEVELS or isinstance(delta.get(base), int):  # a level before and after, or the peak
        level = after.get(base) if base in _LEVELS else delta.get(base)
        growth = delta.get(f"{base}_growth")
        return f"{base} {size_cell(level)}", "" if growth is None else format_size(growth, signed=True)
    if metric in delta and isinstance(delta[metric], int):  # written, accessed: amounts, not levels
        return f"{metric} {format_size(delta[metric])}", ""
    return metric, ""  # a page flag: the verdict says how many pages gained it


def _verdict_cell(result: dict[str, Any]) -> str:
    verdicts = result["verdicts"]
    failed = [verdict for verdict in verdicts if not verdict["passed"]]
    if failed:
        first = failed[0]
        more = f" (+{len(failed) - 1} more)" if len(failed) > 1 else ""
        return f"{verdict_text(first, gap=' ')}{more}"
    if verdicts:
        return f"pass ({plural(len(verdicts), 'limit')})"
    return "no limits"


def _short_label(label: str) -> str:
    return label if len(label) <= _LABEL_WIDTH else label[: _LABEL_WIDTH - 3] + "..."


def _short_lines(results: Sequence[dict[str, Any]]) -> list[str]:
    with_peak = any(_peak(result) is not None for result in results)
    header = ["test", "label", "metric", "change", *(["peak"] if with_peak else []), "verdict"]
    rows = []
    for result in results:
        metric, change = _metric_cells(result, _key_metric(result))
        peak = [size_cell(_peak(result))] if with_peak else []
        rows.append([result["test"], _short_label(str(result["label"])), metric, change, *peak, _verdict_cell(result)])
    lines = table(header, rows, right={3, 4} if with_peak else {3})
    # Notes change what the numbers mean (a wrapper measured instead of its children): never left out.
    lines += [f"{result['test']}: note: {note}" for result in results for note in result.get("notes", ())]
    return lines


def summary_lines(results: Sequence[dict[str, Any]], form: str = "short") -> list[str]:
    """The terminal summary in `form` (`short` or `full`), failures first, then a tally."""
    if form == "none":
        return []
    if not results:
        return ["no measurements"]
    ordered = _failures_first(results)
    if form == "full":
        lines = [line for result in ordered for line in _measurement_lines(result)]
    else:
        lines = _short_lines(ordered)
    verdicts = [verdict for result in results for verdict in result["verdicts"]]
    failed = sum(not verdict["passed"] for verdict in verdicts)
    tests = len({result["test"] for result in results})
    lines.append(
        f"{plural(len(results), 'measurement')} in {plural(tests, 'test')}, "
        f"{plural(len(verdicts), 'limit')} checked, {failed} exceeded"
    )
    return lines
