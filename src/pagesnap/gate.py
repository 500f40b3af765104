"""Regression gates: threshold expressions such as `uss:5%` or `rss:+2MiB`, and baseline comparisons."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .baseline import SessionRecord
from .units import format_size, parse_size

__all__ = ["GATED_METRICS", "Comparison", "ComparisonResult", "Threshold", "compare", "parse_threshold"]

# Metrics a session record keeps and a gate can compare; smaller is better for every one of them.
GATED_METRICS = ("uss", "rss", "pss", "swap", "uss_growth", "rss_growth", "written", "accessed")
_EXPRESSION = re.compile(r"^\s*(?P<metric>[a-z_]+)\s*:\s*(?P<amount>.+?)\s*$")
_PERCENT = re.compile(r"^\+?(?P<number>\d+(?:\.\d*)?|\.\d+)\s*%$")
FORMS = "METRIC:N% (relative to the baseline) or METRIC:+SIZE (absolute, e.g. rss:+2MiB)"


@dataclass(frozen=True)
class Threshold:
    """How much a metric may grow over its baseline before it counts as a regression."""

    metric: str
    percent: float | None = None
    absolute: int | None = None

    @property
    def text(self) -> str:
        if self.percent is not None:
            return f"{self.metric}:{self.percent:g}%"
        return f"{self.metric}:+{format_size(self.absolute or 0)}"

    def allowed(self, baseline: int) -> int:
        """The largest value that passes, given the baseline value."""
        if self.percent is not None:
            return baseline + math.floor(abs(baseline) * self.percent / 100)
        return baseline + (self.absolute or 0)


def parse_threshold(text: str) -> Threshold:
    """Parse `uss:5%`, `written:10%` or `rss:+2MiB`; a bad expression raises `ValueError` saying why."""
    match = _EXPRESSION.match(text)
    if not match:
        raise ValueError(f"cannot read {text!r} as a threshold; expected {FORMS}")
    metric, amount = match.group("metric"), match.group("amount")
    if metric not in GATED_METRICS:
        raise ValueError(f"unknown metric {metric!r} in {text!r}; choose from {', '.join(GATED_METRICS)}")
    percent = _PERCENT.match(amount)
    if percent:
        return Threshold(metric, percent=float(percent.group("number")))
    if amount.startswith("-"):
        raise ValueError(f"threshold {text!r} is negative; a threshold is how much growth is allowed")
    try:
        return Threshold(metric, absolute=parse_size(amount.lstrip("+")))
    except ValueError as exc:
        raise ValueError(f"cannot read the amount in {text!r}: {exc}") from None


@dataclass(frozen=True)
class Comparison:
    """One metric of one measurement against its baseline. `status`: regression, improvement, worse
    (grew, within the threshold or with none set) or unchanged."""

    key: str
    test: str
    label: str
    metric: str
    baseline: int
    current: int
    threshold: Threshold | None
    status: str

    @property
    def change(self) -> int:
        return self.current - self.baseline

    @property
    def change_percent(self) -> float | None:
        return None if self.baseline == 0 else 100 * self.change / abs(self.baseline)

    def describe_change(self) -> str:
        percent = self.change_percent
        relative = "" if percent is None else f" ({percent:+.1f}%)"
        return f"{format_size(self.change, signed=True)}{relative}"


@dataclass(frozen=True)
class ComparisonResult:
    """A whole session against a baseline."""

    rows: tuple[Comparison, ...]
    new: tuple[str, ...]  # measurement keys with no baseline
    removed: tuple[str, ...]  # baseline keys not measured now
    warnings: tuple[str, ...]  # machine differences that make the comparison unfair
    baseline_path: str | None = None

    @property
    def regressions(self) -> tuple[Comparison, ...]:
        return tuple(row for row in self.rows if row.status == "regression")

    @property
    def improvements(self) -> tuple[Comparison, ...]:
        return tuple(row for row in self.rows if row.status == "improvement")


def compare(
    baseline: SessionRecord,
    current: SessionRecord,
    thresholds: Sequence[Threshold] = (),
    overrides: Mapping[str, Sequence[Threshold]] | None = None,
) -> ComparisonResult:
    """Compare every metric both records hold. `overrides` maps a test id to thresholds that replace the
    session's for the metrics they name (a marker's `tolerance=`)."""
    overrides = overrides or {}
    old = baseline.by_key()
    rows = []
    for measurement in current.measurements:
        previous = old.get(measurement.key)
        if previous is None:
            continue
        active = _thresholds_for(thresholds, overrides.get(measurement.test, ()))
        for metric in GATED_METRICS:
            before, now = previous.metrics.get(metric), measurement.metrics.get(metric)
            if before is None or now is None:
                continue
            threshold, status = _judge(before, now, active.get(metric, ()))
            rows.append(
                Comparison(
                    key=measurement.key,
                    test=measurement.test,
                    label=measurement.label,
                    metric=metric,
                    baseline=before,
                    current=now,
                    threshold=threshold,
                    status=status,
                )
            )
    current_keys = {m.key for m in current.measurements}
    return ComparisonResult(
        rows=tuple(rows),
        new=tuple(m.key for m in current.measurements if m.key not in old),
        removed=tuple(key for key in old if key not in current_keys),
        warnings=tuple(current.context_differences(baseline)),
        baseline_path=str(baseline.path) if baseline.path else None,
    )


def _thresholds_for(session: Iterable[Threshold], override: Iterable[Threshold]) -> dict[str, list[Threshold]]:
    """The session's thresholds per metric, with a test's own replacing them metric by metric."""
    active: dict[str, list[Threshold]] = {}
    for threshold in session:
        active.setdefault(threshold.metric, []).append(threshold)
    replaced: dict[str, list[Threshold]] = {}
    for threshold in override:
        replaced.setdefault(threshold.metric, []).append(threshold)
    active.update(replaced)
    return active


def _judge(baseline: int, current: int, thresholds: Sequence[Threshold]) -> tuple[Threshold | None, str]:
    """Each threshold is checked on its own: exceeding any one is a regression."""
    if current < baseline:
        return (thresholds[0] if thresholds else None), "improvement"
    if current == baseline:
        return (thresholds[0] if thresholds else None), "unchanged"
    for threshold in thresholds:
        if current > threshold.allowed(baseline):
            return threshold, "regression"
    return (thresholds[0] if thresholds else None), "worse"
