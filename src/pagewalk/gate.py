"""Regression gates: threshold expressions such as `uss:5%` or `rss:+2MiB`, and baseline comparisons."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .baseline import RECORDED_METRICS, SessionRecord
from .units import format_size, parse_decimal, parse_size

__all__ = [
    "FORMS",
    "GATED_METRICS",
    "Comparison",
    "ComparisonResult",
    "Threshold",
    "compare",
    "parse_threshold",
    "parse_thresholds",
]

# Metrics a session record keeps and a gate can compare; smaller is better for every one of them.
GATED_METRICS = RECORDED_METRICS
_EXPRESSION = re.compile(r"^[ \t]*(?P<metric>[a-z_]+)[ \t]*:[ \t]*(?P<amount>.+?)[ \t]*$", re.ASCII)
_PERCENT = re.compile(r"^\+?(?P<number>[0-9.]+)[ \t]*%$", re.ASCII)
_BARE_NUMBER = re.compile(r"^\+?[0-9.]+$", re.ASCII)
MAX_PERCENT = 10_000  # a threshold beyond 100 times the baseline is no threshold: refuse it as a typo
FORMS = (
    f"METRIC:N% (relative to the baseline; N in ASCII digits, at most {MAX_PERCENT:,}) "
    "or METRIC:+SIZE (absolute, e.g. rss:+2MiB)"
)


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
        return Threshold(metric, percent=_percentage(percent.group("number"), text))
    if amount.startswith("-") or amount.startswith("+-"):
        raise ValueError(f"threshold {text!r} is negative; a threshold is how much growth is allowed")
    if _BARE_NUMBER.match(amount):
        # `uss:5` reads as 5 bytes to a parser and as 5% to most people: make the writer say which.
        raise ValueError(
            f"threshold {text!r} has no unit: write {metric}:{amount.lstrip('+')}% or {metric}:+{amount.lstrip('+')} B"
        )
    if amount.startswith("++"):
        raise ValueError(f"cannot read {text!r} as a threshold; expected {FORMS}")
    try:
        return Threshold(metric, absolute=parse_size(amount.removeprefix("+")))
    except ValueError as exc:
        raise ValueError(f"cannot read the amount in {text!r}: {exc}; expected {FORMS}") from None


def _percentage(number: str, text: str) -> float:
    """The percentage of a threshold: a plain decimal, at most MAX_PERCENT."""
    value = parse_decimal(number)
    if value is None:
        raise ValueError(f"cannot read the percentage in {text!r}; expected {FORMS}")
    if value > MAX_PERCENT:
        raise ValueError(f"the percentage in {text!r} is more than {MAX_PERCENT:,}%; expected {FORMS}")
    return float(value)


def parse_thresholds(value: object) -> tuple[Threshold, ...]:
    """A threshold expression or a sequence of them (a marker's `tolerance=`); `ValueError` saying why not."""
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, (list, tuple)) or not all(isinstance(text, str) for text in texts):
        raise ValueError(f"expected a threshold such as 'uss:10%' or a list of them, not {value!r}")
    return tuple(parse_threshold(text) for text in texts)


@dataclass(frozen=True)
class Comparison:
    """One metric of one measurement against its baseline. `status`: regression (grew beyond a threshold),
    worse (grew, within the thresholds or with none set), unchanged, better (shrank, within the thresholds'
    allowance, or with none set) or improvement (shrank by more than a threshold's allowance)."""

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
    baseline_created: str | None = None
    baseline_context: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    thresholds: tuple[Threshold, ...] = ()  # the session's, from --pagemap-fail
    overrides: Mapping[str, tuple[Threshold, ...]] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def passed(self) -> bool:
        """No metric grew beyond its threshold (new and removed measurements never fail a gate)."""
        return not self.regressions

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
        baseline_created=baseline.created or None,
        baseline_context=MappingProxyType(dict(baseline.context)),
        thresholds=tuple(thresholds),
        overrides=MappingProxyType({test: tuple(values) for test, values in overrides.items()}),
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
    """Each threshold is checked on its own: exceeding any one is a regression. Symmetrically, a shrink is an
    improvement when it is larger than a threshold's allowance, so noise within the thresholds is listed
    neither way; a metric without a threshold is only ever worse or better."""
    if current == baseline:
        return (thresholds[0] if thresholds else None), "unchanged"
    if current < baseline:
        for threshold in thresholds:
            if baseline - current > threshold.allowed(baseline) - baseline:
                return threshold, "improvement"
        return (thresholds[0] if thresholds else None), "better"
    for threshold in thresholds:
        if current > threshold.allowed(baseline):
            return threshold, "regression"
    return (thresholds[0] if thresholds else None), "worse"
