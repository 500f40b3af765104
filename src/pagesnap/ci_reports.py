"""Reports for machines: the JSON report, a Markdown table for GitHub's step summary, and the
`customSmallerIsBetter` JSON that github-action-benchmark reads."""

from __future__ import annotations

from typing import Any

from .baseline import SessionRecord
from .gate import GATED_METRICS, ComparisonResult
from .units import format_size

__all__ = ["REPORT_SCHEMA", "benchmark_action_entries", "json_report", "markdown_summary"]

REPORT_SCHEMA = "pytest-pagemap/report"
REPORT_VERSION = 1
_MARK = {"regression": "❌", "improvement": "✅", "unchanged": "✅", "worse": "✅"}


def json_report(record: SessionRecord, comparison: ComparisonResult | None) -> dict[str, Any]:
    """The `--pagemap-json` document (its keys are documented in the README)."""
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "version": REPORT_VERSION,
        "created": record.created,
        "context": dict(record.context),
        "measurements": [m.to_dict() for m in record.measurements],
        "comparison": None,
    }
    if comparison is not None:
        report["comparison"] = {
            "baseline": comparison.baseline_path,
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


def markdown_summary(record: SessionRecord, comparison: ComparisonResult | None) -> str:
    """A Markdown section for `$GITHUB_STEP_SUMMARY`: one row per measured metric, with a pass/fail mark."""
    lines = ["## pytest-pagemap", ""]
    if comparison is None:
        lines += ["| measurement | USS | RSS | written |", "|---|---:|---:|---:|"]
        for m in record.measurements:
            cells = [
                format_size(v) if v is not None else "–" for v in (m.metrics.get(k) for k in ("uss", "rss", "written"))
            ]
            lines.append(f"| `{_cell(m.key)}` | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"
    regressions = len(comparison.regressions)
    verdict = f"**{regressions} regression{'s' if regressions != 1 else ''}**" if regressions else "no regression"
    lines.append(f"Compared with `{comparison.baseline_path}`: {verdict}, {len(comparison.improvements)} improved.")
    lines += [
        "",
        "| | measurement | metric | baseline | current | change | threshold |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    order = {metric: index for index, metric in enumerate(GATED_METRICS)}
    for row in sorted(comparison.rows, key=lambda r: (r.status != "regression", r.key, order[r.metric])):
        lines.append(
            f"| {_MARK[row.status]} | `{_cell(row.key)}` | {row.metric} | {format_size(row.baseline)} | "
            f"{format_size(row.current)} | {row.describe_change()} | {row.threshold.text if row.threshold else '–'} |"
        )
    for title, keys in (("New (no baseline)", comparison.new), ("Removed (not measured now)", comparison.removed)):
        if keys:
            lines += ["", f"{title}: " + ", ".join(f"`{_cell(key)}`" for key in keys)]
    for warning in comparison.warnings:
        lines += ["", f"> ⚠️ Different machine than the baseline's: {_cell(warning)}"]
    return "\n".join(lines) + "\n"


def benchmark_action_entries(record: SessionRecord) -> list[dict[str, Any]]:
    """github-action-benchmark's `customSmallerIsBetter` format: `[{name, unit, value}]`, one per metric."""
    entries = []
    for m in record.measurements:
        for metric in GATED_METRICS:
            value = m.metrics.get(metric)
            if value is not None:
                entries.append({"name": f"{m.key} {metric}", "unit": "bytes", "value": value, "extra": m.label})
    return entries
