"""Reports of a session record and its comparison with a baseline: the JSON report, a Markdown section for
GitHub's step summary, the `customSmallerIsBetter` JSON that github-action-benchmark reads, and the lines of
the terminal's gate section."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from .baseline import KEY_SEPARATOR, MeasurementRecord, SessionRecord
from .gate import GATED_METRICS, Comparison, ComparisonResult
from .measure import METRICS
from .record_format import REPORT_SCHEMA, REPORT_VERSION
from .units import format_size

__all__ = [
    "BENCHMARK_METRICS",
    "JUNIT_METRICS",
    "JUNIT_PREFIX",
    "REPORT_SCHEMA",
    "REPORT_VERSION",
    "Tone",
    "benchmark_action_entries",
    "comparison_lines",
    "json_report",
    "junit_properties",
    "markdown_summary",
]

# The metrics written as JUnit XML properties: the levels and changes people chart, when measured.
JUNIT_METRICS = ("uss", "rss", "pss", "uss_growth", "anon_growth", "written")
# The metrics exported to github-action-benchmark: the levels, never a change.
BENCHMARK_METRICS = tuple(metric for metric in GATED_METRICS if not METRICS[metric].growth)
JUNIT_PREFIX = "pagemap."
_MARK = {"regression": "❌", "improvement": "✅", "better": "✅", "unchanged": "✅", "worse": "✅"}
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
    """The `--pagemap-json` document (its keys are documented in the README); `maps` (by measurement key, see
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
            "passed": comparison.passed,
            "regressions": len(comparison.regressions),
            "improvements": len(comparison.improvements),
            "new": list(comparison.new),
            "removed": list(comparison.removed),
            "warnings": list(comparison.warnings),
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
                    "threshold": row.threshold.text if row.threshold else None,
                    "status": row.status,
                }
                for row in comparison.rows
            ],
        }
    return report


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _describe_baseline(comparison: ComparisonResult) -> str:
    commit = (comparison.baseline_context.get("git") or {}).get("commit")
    about = [f"commit {commit[:12]}"] if commit else []
    if comparison.baseline_created:
        about.append(f"saved {comparison.baseline_created}")
    return f"{comparison.baseline_path}" + (f" ({', '.join(about)})" if about else "")


def _describe_thresholds(comparison: ComparisonResult) -> str:
    """`uss:5% (tests' own: t.py::test_a: uss:10%)`, or what it means that there is none."""
    session = ", ".join(t.text for t in comparison.thresholds)
    overrides = "; ".join(
        f"{test}: {', '.join(t.text for t in values)}" for test, values in sorted(comparison.overrides.items())
    )
    if not overrides:
        return session or "none, so nothing can fail"
    return f"{session or 'none for the session'} (tests' own: {overrides})"


def markdown_summary(record: SessionRecord, comparison: ComparisonResult | None, *, saved: str | None = None) -> str:
    """A Markdown section for `$GITHUB_STEP_SUMMARY`: the measurements, or every metric that changed against
    the baseline with a pass/fail mark (unchanged ones are counted, not listed, to keep the summary short)."""
    lines = ["## pytest-pagemap", ""]
    if saved:
        lines += [f"Saved {_plural(len(record.measurements), 'measurement')} as baseline `{_cell(saved)}`.", ""]
    if comparison is None:
        lines += ["| measurement | USS | RSS | written |", "|---|---:|---:|---:|"]
        for m in record.measurements:
            cells = [
                format_size(v) if v is not None else "–" for v in (m.metrics.get(k) for k in ("uss", "rss", "written"))
            ]
            lines.append(f"| `{_cell(m.key)}` | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"
    regressions = len(comparison.regressions)
    verdict = f"**{_plural(regressions, 'regression')}**" if regressions else "no regression"
    thresholds = _cell(_describe_thresholds(comparison))
    lines.append(
        f"Compared with `{_cell(_describe_baseline(comparison))}`: {verdict}, "
        f"{len(comparison.improvements)} improved. Thresholds: {thresholds}."
    )
    changed = [row for row in comparison.rows if row.status != "unchanged"]
    if changed:
        lines += [
            "",
            "| | measurement | metric | baseline | current | change | threshold |",
            "|---|---|---|---:|---:|---:|---|",
        ]
        for row in sorted(changed, key=lambda r: (r.status != "regression", r.key, _ORDER[r.metric])):
            lines.append(
                f"| {_MARK[row.status]} | `{_cell(row.key)}` | {row.metric} | {format_size(row.baseline)} | "
                f"{format_size(row.current)} | {row.describe_change()} | "
                f"{row.threshold.text if row.threshold else '–'} |"
            )
    unchanged = len(comparison.rows) - len(changed)
    if unchanged:
        lines += ["", f"{_plural(unchanged, 'metric')} unchanged."]
    for title, keys in (("New (no baseline)", comparison.new), ("Removed (not measured now)", comparison.removed)):
        if keys:
            lines += ["", f"{title}: " + ", ".join(f"`{_cell(key)}`" for key in keys)]
    for warning in comparison.warnings:
        lines += ["", f"> ⚠️ Different machine than the baseline's: {_cell(warning)}"]
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


def junit_properties(measurements: Iterable[MeasurementRecord], *, per_test: bool) -> list[tuple[str, object]]:
    """`(name, bytes)` JUnit properties of the measured `JUNIT_METRICS`.

    `per_test`: for one test's `<testcase>`, named `pagemap.METRIC` (`pagemap.METRIC[LABEL]` when the test
    measured several times); otherwise for the `<testsuite>`, named `pagemap.METRIC[KEY]`.
    """
    properties: list[tuple[str, object]] = []
    for m in measurements:
        suffix = m.key[len(m.test) :].removeprefix(KEY_SEPARATOR) if per_test else m.key
        for metric in JUNIT_METRICS:
            value = m.metrics.get(metric)
            if value is not None:
                properties.append((f"{JUNIT_PREFIX}{metric}" + (f"[{suffix}]" if suffix else ""), value))
    return properties


# --- the terminal -------------------------------------------------------------------------------------------


def _table(rows: Sequence[Comparison]) -> list[str]:
    header = ("test", "metric", "baseline", "current", "change", "threshold")
    cells = [
        (
            row.key,
            row.metric,
            format_size(row.baseline),
            format_size(row.current),
            row.describe_change(),
            row.threshold.text if row.threshold else "-",
        )
        for row in sorted(rows, key=lambda r: (r.key, _ORDER[r.metric]))
    ]
    widths = [max(len(line[column]) for line in [header, *cells]) for column in range(len(header))]
    right = {2, 3, 4}  # sizes and changes line up on their last digit
    return [
        "  "
        + "  ".join(
            text.rjust(widths[column]) if column in right else text.ljust(widths[column])
            for column, text in enumerate(line)
        ).rstrip()
        for line in [header, *cells]
    ]


def comparison_lines(comparison: ComparisonResult, *, verbose: bool = False) -> list[tuple[str, Tone]]:
    """The terminal's gate section: what was compared, the regressions and improvements as tables (test,
    metric, baseline, current, change, threshold) and, when `verbose`, every other metric that changed; new
    and removed measurements, machine warnings, and a tally. Each line comes with its tone."""
    lines: list[tuple[str, Tone]] = [(f"compared with {_describe_baseline(comparison)}", "plain")]
    lines.append((f"thresholds: {_describe_thresholds(comparison)}", "plain"))
    for warning in comparison.warnings:
        lines.append(
            (f"WARNING: the baseline was measured on another machine, so may not compare: {warning}", "warning")
        )
    regressions, improvements = comparison.regressions, comparison.improvements
    if regressions:
        whose = "its" if len(regressions) == 1 else "their"
        lines.append((f"{_plural(len(regressions), 'regression')} beyond {whose} threshold:", "bad"))
        lines += [(line, "bad") for line in _table(regressions)]
    if improvements:
        lines.append((f"{_plural(len(improvements), 'improvement')}:", "good"))
        lines += [(line, "good") for line in _table(improvements)]
    within = [row for row in comparison.rows if row.status in ("worse", "better")]
    if verbose and within:
        lines.append((f"{_plural(len(within), 'other change')}, within the thresholds or without one:", "plain"))
        lines += [(line, "plain") for line in _table(within)]
    if comparison.new:
        lines.append(("new, not in the baseline (not gated): " + ", ".join(comparison.new), "plain"))
    if comparison.removed:
        lines.append(("removed, in the baseline but not measured now: " + ", ".join(comparison.removed), "plain"))
    others = len(comparison.rows) - len(regressions) - len(improvements)
    measured = len({row.key for row in comparison.rows})
    tally = (
        f"{_plural(len(comparison.rows), 'metric')} of {_plural(measured, 'measurement')} compared: "
        f"{len(regressions)} regressed, {len(improvements)} improved, {others} unchanged or within threshold"
    )
    lines.append((tally, "bad" if regressions else "good"))
    return lines
