"""Reports of a session record and its comparison with a baseline: the JSON report, a Markdown section (for
a CI step summary or a pull-request comment), the `customSmallerIsBetter` JSON that github-action-benchmark
reads, and the lines of a terminal's gate section. They speak of records, measurements and metrics only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ._present import UNKNOWN, plural, size_cell, table
from .baseline import SessionRecord
from .gate import GATED_METRICS, Comparison, ComparisonResult
from .measure import METRICS
from .metrics import FILE_PARTS
from .record_format import REPORT_SCHEMA, REPORT_VERSION
from .units import format_size

__all__ = [
    "BENCHMARK_METRICS",
    "REPORT_SCHEMA",
    "REPORT_VERSION",
    "Tone",
    "benchmark_action_entries",
    "comparison_lines",
    "json_report",
    "markdown_summary",
    "verdict_line",
]

# The metrics exported to github-action-benchmark: the levels, never a change.
BENCHMARK_METRICS = tuple(metric for metric in GATED_METRICS if not METRICS[metric].growth)
_MARK = {
    "regression": "❌",
    "file-only": "⚠️",
    "improvement": "✅",
    "better": "✅",
    "unchanged": "✅",
    "worse": "🔺",
}
_ORDER = {metric: index for index, metric in enumerate(GATED_METRICS)}

Tone = Literal["plain", "bad", "good", "warning"]


def _threshold_texts(comparison: ComparisonResult) -> dict[str, Any]:
    return {
        "thresholds": [threshold.text for threshold in comparison.thresholds],
        "overrides": {test: [t.text for t in values] for test, values in comparison.overrides.items()},
    }


def json_report(
    record: SessionRecord,
    comparison: ComparisonResult | None,
    *,
    saved: str | None = None,
    maps: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON report (its keys are documented in the README); `maps` (by measurement key, see
    `memory_map`) adds each measurement's `map`."""
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "version": REPORT_VERSION,
        "created": record.created,
        "context": dict(record.context),
        "measurements": [
            m.to_dict() | ({"map": maps.get(m.key)} if maps is not None else {}) for m in record.measurements
        ],
        "saved": saved,
        "comparison": None,
    }
    if comparison is not None:
        report["comparison"] = {
            "baseline": comparison.baseline_path,
            "baseline_created": comparison.baseline_created,
            "baseline_context": dict(comparison.baseline_context),
            **_threshold_texts(comparison),
            "noise": comparison.noise,
            "passed": comparison.passed,
            "exit_code": comparison.exit_code,
            "regressions": len(comparison.regressions),
            "improvements": len(comparison.improvements),
            "new": list(comparison.new),
            "removed": list(comparison.removed),
            "unmatched": list(comparison.unmatched),
            "unmeasured": list(comparison.unmeasured),
            "problems": list(comparison.problems),
            "matched_by_position": list(comparison.matched_by_position),
            "warnings": list(comparison.warnings),
            "hints": list(comparison.hints),
            "rows": [
                {
                    "key": row.key,
                    "test": row.test,
                    "label": row.label,
                    "metric": row.metric,
                    "baseline": row.baseline,
                    "current": row.current,
                    "change": row.change,
                    "change_percent": row.change_percent,
                    "file_change": row.file_change,
                    "threshold": row.threshold.text if row.threshold else None,
                    "status": row.status,
                }
                for row in comparison.rows
            ],
        }
    return report


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _describe_baseline(comparison: ComparisonResult) -> str:
    commit = (comparison.baseline_context.get("git") or {}).get("commit")
    about = [f"commit {commit[:12]}"] if commit else []
    if comparison.baseline_created:
        about.append(f"saved {comparison.baseline_created}")
    return f"{comparison.baseline_path}" + (f" ({', '.join(about)})" if about else "")


def _describe_thresholds(comparison: ComparisonResult) -> str:
    """`anon:5% (per test: t.py::test_a: anon:10%); noise floor 64.0 KiB`, or what it means that there is none."""
    session = ", ".join(t.text for t in comparison.thresholds)
    overrides = "; ".join(
        f"{test}: {', '.join(t.text for t in values)}" for test, values in sorted(comparison.overrides.items())
    )
    noise = f"noise floor {format_size(comparison.noise)}"
    if not overrides:
        return f"{session or 'none, so nothing can fail'}; {noise}"
    return f"{session or 'none for every test'} (per test: {overrides}); {noise}"


_STATUS_WORD = {
    "regression": "REGRESSED",
    "file-only": "file only",
    "improvement": "improved",
    "worse": "worse",
    "better": "better",
    "unchanged": "unchanged",
}


def verdict_line(comparison: ComparisonResult) -> tuple[str, Tone]:
    """One line with the gate's verdict and exit code: passed (0), failed (1) or cannot gate (4)."""
    code = comparison.exit_code
    if comparison.problems:
        return f"gate: cannot gate ({plural(len(comparison.problems), 'problem')} above), exit code {code}", "bad"
    if not comparison.passed:
        causes = []
        if comparison.regressions:
            causes.append(plural(len(comparison.regressions), "regression"))
        if comparison.unmatched:
            causes.append(plural(len(comparison.unmatched), "unmatched baseline measurement"))
        return f"gate: FAILED, {' and '.join(causes)}, exit code {code}", "bad"
    gated = len(comparison.gated)
    if not (comparison.thresholds or comparison.overrides):
        return f"gate: nothing to fail without thresholds, exit code {code}", "plain"
    return f"gate: passed, {plural(gated, 'metric')} within {'its' if gated == 1 else 'their'} threshold", "good"


def _tally(comparison: ComparisonResult) -> str:
    counts: dict[str, int] = {}
    for row in comparison.rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    measured = len({row.key for row in comparison.rows})
    order = ("regression", "file-only", "improvement", "worse", "better", "unchanged")
    parts = [f"{counts[status]} {_STATUS_WORD[status].lower()}" for status in order if counts.get(status)]
    return (
        f"{plural(len(comparison.rows), 'metric')} of {plural(measured, 'measurement')} compared: "
        + (", ".join(parts) or "none")
        + f" (unchanged: within {format_size(comparison.noise)})"
    )


def _sorted(rows: Sequence[Comparison]) -> list[Comparison]:
    return sorted(rows, key=lambda r: (r.key, _ORDER[r.metric]))


def _row_cells(row: Comparison) -> tuple[str, ...]:
    return (
        _STATUS_WORD[row.status],
        row.key,
        row.metric,
        format_size(row.baseline),
        format_size(row.current),
        row.describe_change(),
        row.describe_split() or UNKNOWN,
        row.threshold.text if row.threshold else UNKNOWN,
    )


_HEADER = ("", "measurement", "metric", "baseline", "current", "change", "anon / file part", "threshold")


def markdown_summary(
    record: SessionRecord, comparison: ComparisonResult | None, *, saved: str | None = None, title: str = "pagewalk"
) -> str:
    """A Markdown section: the measurements, or the verdict and every metric that changed beyond the noise
    floor with its mark (unchanged ones are counted, not listed, to keep it short)."""
    lines = [f"## {title}", ""]
    if saved:
        lines += [f"Saved {plural(len(record.measurements), 'measurement')} as baseline `{_cell(saved)}`.", ""]
    if comparison is None:
        lines += ["| measurement | USS | anon | RSS | written |", "|---|---:|---:|---:|---:|"]
        for m in record.measurements:
            values = (m.metrics.get(k) for k in ("uss", "anon", "rss", "written"))
            cells = [size_cell(v) for v in values]
            lines.append(f"| `{_cell(m.key)}` | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"
    verdict, _ = verdict_line(comparison)
    lines.append(f"**{_cell(verdict)}.** Compared with `{_cell(_describe_baseline(comparison))}`.")
    lines += ["", f"Thresholds: {_cell(_describe_thresholds(comparison))}."]
    for title_text, texts in (
        ("Cannot gate", comparison.problems),
        ("Unmatched", comparison.unmatched),
    ):
        lines += ["", *(f"- ❌ {title_text}: {_cell(text)}" for text in texts)] if texts else []
    changed = [row for row in comparison.rows if row.status != "unchanged"]
    if changed:
        lines += [
            "",
            "| | measurement | metric | baseline | current | change | anon / file part | threshold |",
            "|---|---|---|---:|---:|---:|---|---|",
        ]
        for row in sorted(
            changed, key=lambda r: (r.status not in ("regression", "file-only"), r.key, _ORDER[r.metric])
        ):
            word, key, metric, baseline, current, change, split, threshold = _row_cells(row)
            lines.append(
                f"| {_MARK[row.status]} {word} | `{_cell(key)}` | {metric} | {baseline} | {current} | {change} | "
                f"{split} | {_cell(threshold)} |"
            )
    lines += ["", _tally(comparison) + "."]
    for title_text, keys in (
        ("New (no baseline)", comparison.new),
        ("Removed (not measured now)", comparison.removed),
        ("Matched by position (save the baseline again to key them by label or `#N`)", comparison.matched_by_position),
    ):
        if keys:
            lines += ["", f"{title_text}: " + ", ".join(f"`{_cell(key)}`" for key in keys)]
    for warning in comparison.warnings:
        lines += ["", f"> ⚠️ Different machine than the baseline's: {_cell(warning)}"]
    for hint in comparison.hints:
        lines += ["", f"> ℹ️ {_cell(hint)}."]
    return "\n".join(lines) + "\n"


def benchmark_action_entries(record: SessionRecord) -> list[dict[str, Any]]:
    """github-action-benchmark's `customSmallerIsBetter` format: `[{name, unit, value, extra}]`, one per metric.

    Only levels (`BENCHMARK_METRICS`), and only positive values: the tool alerts on `current / previous`, which
    a change (zero or negative) or a zero level (swap without pressure) makes meaningless or a division by zero.
    """
    entries = []
    for m in record.measurements:
        extra = m.label + (f" (median of {m.repeat} runs)" if m.repeat > 1 else "")
        for metric in BENCHMARK_METRICS:
            value = m.metrics.get(metric)
            if value is not None and value > 0:
                entries.append({"name": f"{m.key} {metric}", "unit": "bytes", "value": value, "extra": extra})
    return entries


# --- the terminal -------------------------------------------------------------------------------------------


def _table(rows: Sequence[Comparison]) -> list[str]:
    cells = [_row_cells(row) for row in _sorted(rows)]
    split = any(row.file_change is not None for row in rows)
    columns = [index for index in range(len(_HEADER)) if split or _HEADER[index] != "anon / file part"]
    header, *body = [tuple(line[index] for index in columns) for line in [_HEADER, *cells]]
    right = {columns.index(index) for index in (3, 4, 5)}  # sizes and changes line up on their last digit
    return table(header, body, right=right, indent="  ")


def _compact(rows: Sequence[Comparison]) -> list[str]:
    """One line per measurement: `  t.py::test_a: uss +80.0 KiB (+1.2%), rss +96.0 KiB (+1.1%)`."""
    by_key: dict[str, list[Comparison]] = {}
    for row in _sorted(rows):
        by_key.setdefault(row.key, []).append(row)
    return [
        f"  {key}: " + ", ".join(f"{row.metric} {row.describe_change()}" for row in changes)
        for key, changes in by_key.items()
    ]


def comparison_lines(comparison: ComparisonResult, *, verbose: bool = False) -> list[tuple[str, Tone]]:
    """A terminal's gate section, each line with its tone: what was compared, why it cannot gate, the
    regressions, file-only USS changes and improvements as tables (status, measurement, metric, baseline,
    current, change, its anonymous and file-backed parts, threshold); the changes within the thresholds in
    one line per measurement (as a table, with the improvements too, when `verbose`), or, with no threshold,
    every change beyond the noise floor; unmatched, new and removed measurements, warnings, a tally and the
    verdict."""
    lines: list[tuple[str, Tone]] = [(f"compared with {_describe_baseline(comparison)}", "plain")]
    lines.append((f"thresholds: {_describe_thresholds(comparison)}", "plain"))
    for warning in comparison.warnings:
        lines.append(
            (f"WARNING: the baseline was measured on another machine, so may not compare: {warning}", "warning")
        )
    for problem in comparison.problems:
        lines.append((f"CANNOT GATE: {problem}", "bad"))
    for reason in comparison.unmatched:
        lines.append((f"UNMATCHED: {reason}", "bad"))
    if comparison.matched_by_position:
        lines.append(
            (
                "matched by position, as the baseline keys them by command line (save it again to key them by "
                "label or #N): " + ", ".join(comparison.matched_by_position),
                "warning",
            )
        )
    regressions, improvements = comparison.regressions, comparison.improvements
    file_only = [row for row in comparison.rows if row.status == "file-only"]
    if regressions:
        whose = "its" if len(regressions) == 1 else "their"
        lines.append((f"{plural(len(regressions), 'regression')} beyond {whose} threshold:", "bad"))
        lines += [(line, "bad") for line in _table(regressions)]
        lines += [(f"note: {hint}.", "warning") for hint in comparison.hints]
    if file_only:
        parts = " or ".join(sorted({FILE_PARTS[row.metric] for row in file_only}))
        lines.append(
            (
                f"{plural(len(file_only), 'USS change')} beyond the threshold made of file-backed pages only, which "
                f"other processes move by mapping the same files (not failing; gate {parts} to fail on them):",
                "warning",
            )
        )
        lines += [(line, "warning") for line in _table(file_only)]
    gated = bool(comparison.thresholds or comparison.overrides)
    worse = [row for row in comparison.rows if row.status == "worse"]
    better = [row for row in comparison.rows if row.status == "better"]
    if not gated or verbose:
        changes = [*improvements, *worse, *better]
        if changes:
            unset = "" if gated else ", no threshold set"
            lines.append((f"{plural(len(changes), 'change')} beyond the noise floor{unset}:", "plain"))
            lines += [(line, "plain") for line in _table(changes)]
    else:
        if improvements:
            lines.append((f"{plural(len(improvements), 'improvement')}:", "good"))
            lines += [(line, "good") for line in _table(improvements)]
        if worse:
            lines.append((f"worse, within the thresholds ({plural(len(worse), 'metric')}):", "plain"))
            lines += [(line, "plain") for line in _compact(worse)]
    if comparison.new:
        lines.append(("new, not in the baseline (not gated): " + ", ".join(comparison.new), "plain"))
    if comparison.removed:
        lines.append(("removed, in the baseline but not measured now: " + ", ".join(comparison.removed), "plain"))
    lines.append((_tally(comparison), "plain"))
    lines.append(verdict_line(comparison))
    return lines
