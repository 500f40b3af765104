"""Regression gates: comparisons of two session records, measurement by measurement and metric by metric,
against threshold expressions such as `anon:5%` or `rss:+2MiB` (parsed in `thresholds`, exported here too).

The verdict of a comparison is one of three: it passed, it failed (a metric grew beyond its threshold, or a
measurement of the baseline has no counterpart in a test measured in both), or it could not gate (a threshold
names a metric one of the records did not record, or nothing at all was compared).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from ._present import plural
from .baseline import KEY_SEPARATOR, MeasurementRecord, SessionRecord, recorded_capability
from .bits import pmd_pages
from .metrics import FILE_PARTS
from .thresholds import DEFAULT_NOISE, FORMS, GATED_METRICS, Threshold, parse_threshold, parse_thresholds
from .units import format_size

__all__ = [
    "DEFAULT_NOISE",
    "EXIT_CANNOT_GATE",
    "EXIT_PASSED",
    "EXIT_REGRESSED",
    "FORMS",
    "GATED_METRICS",
    "Comparison",
    "ComparisonResult",
    "Threshold",
    "compare",
    "parse_threshold",
    "parse_thresholds",
]

# Exit codes of a gate: passed, regressed, could not gate (the numbers a test runner uses for passed, tests
# failed and usage error).
EXIT_PASSED, EXIT_REGRESSED, EXIT_CANNOT_GATE = 0, 1, 4
_ORDINAL = re.compile(r"#[0-9]+", re.ASCII)
# What huge pages move on their own where THP is "always": a fault maps a whole one where an aligned range fits,
# and khugepaged collapses ranges into them; both fill in pages never touched, with no change of code.
_MOVED_BY_HUGE_PAGES = frozenset(
    {"uss", "rss", "pss", "anon", "uss_growth", "rss_growth", "anon_growth", "peak_rss", "peak_rss_growth"}
)
_HUGE_PAGES_EXPLAINED = 4  # regressions up to this many huge pages get the hint: more is rarely THP alone

Status = Literal["regression", "file-only", "worse", "unchanged", "better", "improvement"]


@dataclass(frozen=True)
class Comparison:
    """One metric of one measurement against its baseline. `status`: regression (grew beyond a threshold),
    file-only (a USS regression made of file-backed pages alone, which neighbours mapping the same files
    move: reported, never failing), worse (grew by more than the noise floor, within the thresholds or with
    none set), unchanged (moved no more than the noise floor), better (shrank by more than the noise floor,
    within the thresholds' allowance) or improvement (shrank by more than a threshold's allowance).
    `file_change` is the file-backed part of a USS change, when both records hold it."""

    key: str
    test: str
    label: str
    metric: str
    baseline: int
    current: int
    threshold: Threshold | None
    status: Status
    file_change: int | None = None
    matched_by: Literal["key", "position"] = "key"

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

    def describe_split(self) -> str:
        """`anon +4.0 KiB, file +1.2 MiB` for a USS row whose records hold the split; else ''."""
        if self.file_change is None:
            return ""
        anon = self.change - self.file_change
        return f"anon {format_size(anon, signed=True)}, file {format_size(self.file_change, signed=True)}"


@dataclass(frozen=True)
class ComparisonResult:
    """A whole session against a baseline."""

    rows: tuple[Comparison, ...]
    new: tuple[str, ...]  # measurement keys with no baseline
    removed: tuple[str, ...]  # baseline keys of tests not measured now
    warnings: tuple[str, ...]  # machine differences that make the comparison unfair
    baseline_path: str | None = None
    baseline_created: str | None = None
    baseline_context: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    thresholds: tuple[Threshold, ...] = ()  # for every measurement
    overrides: Mapping[str, tuple[Threshold, ...]] = field(default_factory=lambda: MappingProxyType({}))
    noise: int = DEFAULT_NOISE
    unmatched: tuple[str, ...] = ()  # why a baseline measurement of a test measured now has no counterpart
    unmeasured: tuple[str, ...] = ()  # a threshold's metric one of the records lacks: which, where, on which side
    matched_by_position: tuple[str, ...] = ()  # current keys paired with the baseline by their position
    hints: tuple[str, ...] = ()  # what may explain a regression other than the code, and how to rule it out

    @property
    def regressions(self) -> tuple[Comparison, ...]:
        return tuple(row for row in self.rows if row.status == "regression")

    @property
    def improvements(self) -> tuple[Comparison, ...]:
        return tuple(row for row in self.rows if row.status == "improvement")

    @property
    def gated(self) -> tuple[Comparison, ...]:
        """The rows a threshold was checked on."""
        return tuple(row for row in self.rows if row.threshold is not None)

    @property
    def problems(self) -> tuple[str, ...]:
        """Why this comparison cannot gate anything, though thresholds were given; none when it can."""
        problems = list(self.unmeasured)
        if (self.thresholds or self.overrides) and not self.gated and not self.unmeasured:
            problems.append(
                f"no metric was compared with a threshold ({len(self.rows)} rows, "
                f"{len(self.new)} measurements without a baseline): the baseline holds none of these measurements"
            )
        return tuple(problems)

    @property
    def passed(self) -> bool:
        """No metric grew beyond its threshold, every baseline measurement of a test measured now was matched,
        and every threshold could be checked."""
        return not (self.regressions or self.unmatched or self.problems)

    @property
    def exit_code(self) -> int:
        if self.problems:
            return EXIT_CANNOT_GATE
        return EXIT_PASSED if self.passed else EXIT_REGRESSED


def _is_unnamed(record: MeasurementRecord) -> bool:
    """The key names no label: a test's only measurement, or `TEST > #N`."""
    suffix = record.key[len(record.test) :]
    return not suffix or bool(_ORDINAL.fullmatch(suffix.removeprefix(KEY_SEPARATOR)))


def _by_test(measurements: Iterable[MeasurementRecord]) -> dict[str, list[MeasurementRecord]]:
    grouped: dict[str, list[MeasurementRecord]] = {}
    for measurement in measurements:
        grouped.setdefault(measurement.test, []).append(measurement)
    return grouped


def _match(
    baseline: SessionRecord, current: SessionRecord
) -> tuple[list[tuple[MeasurementRecord, MeasurementRecord, bool]], list[str], list[str], list[str]]:
    """Pair each current measurement with its baseline: by key, else (an unnamed measurement, or a baseline
    keyed by command lines) by its position in the test. Returns the pairs (with whether by position), the
    new keys, the removed keys (of tests not measured now) and why baseline measurements of tests measured
    now have no counterpart."""
    old_tests, new_tests = _by_test(baseline.measurements), _by_test(current.measurements)
    pairs, new, removed, unmatched = [], [], [], []
    for test, old_list in old_tests.items():
        if test not in new_tests:
            removed += [m.key for m in old_list]
    for test, now_list in new_tests.items():
        old_list = old_tests.get(test, [])
        old_keys = {m.key: m for m in old_list}
        used: set[str] = set()
        paired: dict[int, tuple[MeasurementRecord, bool]] = {}
        for index, measurement in enumerate(now_list):
            if measurement.key in old_keys:
                paired[index] = (old_keys[measurement.key], False)
                used.add(measurement.key)
        for index, measurement in enumerate(now_list):
            if index in paired or index >= len(old_list) or not _is_unnamed(measurement):
                continue
            candidate = old_list[index]
            if candidate.key not in used:
                paired[index] = (candidate, True)
                used.add(candidate.key)
        for index, measurement in enumerate(now_list):
            if index in paired:
                old, by_position = paired[index]
                pairs.append((old, measurement, by_position))
            else:
                new.append(measurement.key)
        lost = [m for m in old_list if m.key not in used]
        if old_list and lost:
            measured = ", ".join(repr(m.key) for m in now_list)
            for m in lost:
                unmatched.append(
                    f"{m.key!r} of the baseline matches no measurement of {test} now (measured: {measured}): "
                    "a label changed or the test measures differently; name each measurement with a label "
                    "that stays, or save the baseline again"
                )
    return pairs, new, removed, unmatched


def compare(
    baseline: SessionRecord,
    current: SessionRecord,
    thresholds: Sequence[Threshold] = (),
    overrides: Mapping[str, Sequence[Threshold]] | None = None,
    *,
    noise: int = DEFAULT_NOISE,
) -> ComparisonResult:
    """Compare every metric both records hold. `overrides` maps a test id to thresholds that replace
    `thresholds` for the metrics they name. A change of at most `noise` bytes is unchanged and fails no
    relative threshold (a threshold's own `noise` wins)."""
    overrides = overrides or {}
    pairs, new, removed, unmatched = _match(baseline, current)
    rows = []
    missing: dict[tuple[str, str], list[str]] = {}  # (metric, which record) -> keys
    for previous, measurement, by_position in pairs:
        active = _thresholds_for(thresholds, overrides.get(measurement.test, ()))
        for metric in GATED_METRICS:
            before, now = previous.metrics.get(metric), measurement.metrics.get(metric)
            if before is None or now is None:
                if metric in active:
                    side = "either record" if before is None and now is None else "the baseline" if now else "this run"
                    missing.setdefault((metric, side), []).append(measurement.key)
                continue
            file_change = None
            if part := FILE_PARTS.get(metric):
                old_file, new_file = previous.metrics.get(part), measurement.metrics.get(part)
                if old_file is not None and new_file is not None:
                    file_change = new_file - old_file
            threshold, status = _judge(before, now, active.get(metric, ()), noise, file_change)
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
                    file_change=file_change,
                    matched_by="position" if by_position else "key",
                )
            )
    unmeasured = tuple(
        f"{metric} is not recorded in {side} for {plural(len(keys), 'measurement')}: " + ", ".join(keys)
        for (metric, side), keys in missing.items()
    )
    return ComparisonResult(
        rows=tuple(rows),
        new=tuple(new),
        removed=tuple(removed),
        warnings=tuple(current.context_differences(baseline)),
        baseline_path=str(baseline.path) if baseline.path else None,
        baseline_created=baseline.created or None,
        baseline_context=MappingProxyType(dict(baseline.context)),
        thresholds=tuple(thresholds),
        overrides=MappingProxyType({test: tuple(values) for test, values in overrides.items()}),
        noise=noise,
        unmatched=tuple(unmatched),
        unmeasured=unmeasured,
        matched_by_position=tuple(dict.fromkeys(m.key for _, m, by_position in pairs if by_position)),
        hints=_huge_page_hint(current.context, rows),
    )


def _huge_page_hint(context: Mapping[str, Any], rows: Iterable[Comparison]) -> tuple[str, ...]:
    """Where THP is "always", a hint on regressions small enough to be huge pages filled in alone."""
    if recorded_capability(context, "thp_mode") != "always":
        return ()
    page = context.get("page_size")
    huge = page * pmd_pages(page) if isinstance(page, int) and page > 0 else 2 << 20
    explained = _HUGE_PAGES_EXPLAINED * huge
    metrics = sorted(
        {
            row.metric
            for row in rows
            if row.status == "regression" and row.metric in _MOVED_BY_HUGE_PAGES and row.change <= explained
        }
    )
    if not metrics:
        return ()
    return (
        f"THP is 'always' on this machine: a page fault in anonymous memory maps a whole huge page where an "
        f"aligned {format_size(huge)} range fits (address randomisation moves the ranges from run to run), and "
        "khugepaged collapses ranges into huge pages at any moment; both fill in pages never touched, so "
        f"{', '.join(metrics)} can grow by up to {format_size(huge)} a range with no change of code. To rule it "
        "out, measure with THP 'madvise' (/sys/kernel/mm/transparent_hugepage/enabled) or take the median of "
        "several runs (--pagemap-repeat=3)",
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


def _judge(
    baseline: int, current: int, thresholds: Sequence[Threshold], noise: int, file_change: int | None
) -> tuple[Threshold | None, Status]:
    """Each threshold is checked on its own: exceeding any one is a regression, unless the metric is USS and
    its anonymous part alone stays within that threshold (file-only). A shrink is an improvement when it is
    larger than a threshold's allowance; changes within the noise floor are unchanged either way."""
    first = thresholds[0] if thresholds else None
    for threshold in thresholds:
        if threshold.exceeded(baseline, current, noise):
            if file_change is not None and not threshold.exceeded(baseline, current - file_change, noise):
                return threshold, "file-only"
            return threshold, "regression"
    change = current - baseline
    floor = next((t.noise for t in thresholds if t.noise is not None), noise)
    if abs(change) <= floor:
        return first, "unchanged"
    if change > 0:
        return first, "worse"
    for threshold in thresholds:
        if -change > threshold.allowed(baseline) - baseline:
            return threshold, "improvement"
    return first, "better"
