"""Regression gates: record every measurement of a session, save it as a baseline, compare with one.

The `PagemapGates` plugin object carries a session's records from the tests (on xdist workers too) to the
controller, which alone compares and writes files; it is registered only when a session records (the
options and settings are in `gate_options`). The work itself is the core's: `pagewalk.baseline`,
`pagewalk.gate` and `pagewalk.ci_reports`.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterable, Sequence
from typing import Any

import pytest
from _pytest.runner import runtestprotocol

from pagewalk._present import plural
from pagewalk.baseline import (
    KEY_SEPARATOR,
    BaselineError,
    MeasurementRecord,
    SessionRecord,
    check_can_save,
    collect_context,
    load_record,
    measurement_metrics,
    merge_repeats,
    records_of_test,
    resolve_record,
    save_record,
    write_report_file,
)
from pagewalk.ci_reports import (
    Tone,
    benchmark_action_entries,
    comparison_lines,
    json_report,
    markdown_summary,
)
from pagewalk.gate import ComparisonResult, Threshold, compare, parse_threshold
from pagewalk.measure import missing_requirements
from pagewalk.metrics import METRICS, Option

from .fixtures import GATE_NEEDS_KEY, MEASUREMENTS_KEY
from .gate_options import STEP_SUMMARY_VARIABLE, GateSettings
from .markers import marker_tolerance

__all__ = ["PagemapGates", "junit_properties"]

RECORDS_ATTRIBUTE = "pagemap_records"  # on teardown reports: the test's records as dicts, so xdist carries them
TOLERANCE_ATTRIBUTE = "pagemap_tolerance"  # on teardown reports: the marker's tolerance, as expressions
REGRESSED_STAT = "memory regressed"  # the key in the terminal's final line: "1 passed, 2 memory regressed"
UNMATCHED_STAT = "memory unmatched"  # baseline measurements of a test measured now, without a counterpart
UNMEASURED_HELP = (
    "a threshold names a metric a measurement did not record: pytest-pagemap measures what --pagemap-fail and "
    "pagemap_fail name wherever this user can (pss needs root, written a kernel with soft-dirty); a baseline "
    "saved without it must be saved again with the thresholds given (--pagemap-save --pagemap-fail=EXPR, or "
    "pagemap_fail in the ini file)"
)
_EARLIER_RUNS_KEY = pytest.StashKey[list[list[MeasurementRecord]]]()
_LAST_RUN_KEY = pytest.StashKey[list[MeasurementRecord]]()
_TONES: dict[Tone, dict[str, bool]] = {
    "plain": {},
    "bad": {"red": True},
    "good": {"green": True},
    "warning": {"yellow": True},
}


# --- JUnit XML -------------------------------------------------------------------------------------------

# The metrics written as JUnit XML properties: the levels and changes people chart, when measured.
JUNIT_METRICS = ("uss", "rss", "pss", "uss_growth", "anon_growth", "written")
JUNIT_PREFIX = "pagemap."


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


def _forget_report_sections(item: pytest.Item) -> None:
    """Drop the captured output and logs an earlier run of `item` left: every report of an item carries all
    its sections, and the reported run should show its own only."""
    sections = getattr(item, "_report_sections", None)
    if isinstance(sections, list):
        sections.clear()


# --- the plugin object ----------------------------------------------------------------------------------


class PagemapGates:
    """Records measurements per test, repeats tests, and on the controller compares and writes the reports."""

    def __init__(self, config: pytest.Config, settings: GateSettings) -> None:
        self.config = config
        self.settings = settings
        self.is_controller = not hasattr(config, "workerinput")  # an xdist worker has `workerinput`
        self.records: dict[str, list[MeasurementRecord]] = {}  # by test id: the last report of a test wins
        self.tolerances: dict[str, tuple[Threshold, ...]] = {}
        self.collection_order: dict[str, int] = {}
        self.baseline: SessionRecord | None = None
        self.context: dict[str, Any] = {}
        self.comparison: ComparisonResult | None = None
        self.outcome: list[tuple[str, Tone]] = []  # what the terminal section reports besides the comparison
        self.maps: dict[str, Any] | None = None  # memory maps by key, for the JSON report (see maps.py)
        xml_wanted = bool(getattr(config.option, "xmlpath", None))  # absent under -p no:junitxml
        family = str(config.getini("junit_family")) if xml_wanted else ""
        # `record_property`-style per-test properties break the xunit2 schema: there, suite-level ones.
        self.junit_per_test = xml_wanted and family in ("xunit1", "legacy")
        self.junit_per_suite = xml_wanted and not self.junit_per_test
        if settings.record and (settings.compare is not None or settings.save is not None):
            config.stash[GATE_NEEDS_KEY] = self._gate_needs()
        if self.is_controller and settings.record:
            self._prepare()

    def _gate_needs(self) -> frozenset[Option]:
        """The measure() options the thresholds' metrics need, which every measurement then takes; a metric
        this kernel or user cannot measure is a usage error now, not a gate of nothing at the end."""
        needs: set[Option] = set()
        for threshold in self.settings.thresholds:
            need = METRICS[threshold.metric].needs
            if need is None:
                continue
            missing = missing_requirements(
                writes=need == "writes", accessed=need == "accessed", flags=need == "flags", counts=need == "counts"
            )
            if missing:
                raise pytest.UsageError(
                    f"cannot gate {threshold.text}: {threshold.metric} cannot be measured here ({'; '.join(missing)}); "
                    "gate a metric every run records, such as anon or uss"
                )
            needs.add(need)
        return frozenset(needs)

    def _prepare(self) -> None:
        """Fail at start-up, not after the run: load the baseline, check the name to save is free."""
        settings = self.settings
        try:
            if settings.compare is not None:
                self.baseline = load_record(resolve_record(settings.storage, settings.compare or None))
            if settings.save is not None:
                check_can_save(settings.storage, settings.save or None, overwrite=settings.overwrite)
        except BaselineError as exc:
            raise pytest.UsageError(str(exc)) from None
        self.context = collect_context()

    # --- start-up and collection ------------------------------------------------------------------------

    def pytest_report_header(self) -> list[str] | None:
        if self.baseline is None:
            return None
        differences = SessionRecord(context=self.context, measurements=()).context_differences(self.baseline)
        thresholds = ", ".join(t.text for t in self.settings.thresholds) or "none (only reported)"
        lines = [
            f"pagemap baseline: {self.baseline.path} ({len(self.baseline.measurements)} measurements); "
            f"thresholds: {thresholds}"
        ]
        lines += [f"pagemap WARNING: the baseline was measured on another machine: {d}" for d in differences]
        return lines

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for index, item in enumerate(items):
            self.collection_order.setdefault(item.nodeid, index)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: object, ids: Sequence[str]) -> None:
        # The controller collects nothing itself; its workers' collections give the order of the records.
        for index, nodeid in enumerate(ids):
            self.collection_order.setdefault(nodeid, index)

    # --- running tests ----------------------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        item.stash[MEASUREMENTS_KEY] = []  # each run of a repeated (or rerun) test starts with none

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
        """With --pagemap-repeat=N, run the test up to N times and report one run, whose teardown report
        carries the median of every run's measurements (see `pytest_runtest_makereport`)."""
        if self.settings.repeat <= 1:
            return None
        item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        earlier_runs = item.stash[_EARLIER_RUNS_KEY] = []
        for _ in range(self.settings.repeat - 1):
            _forget_report_sections(item)
            # Unlogged runs, as pytest-rerunfailures does: every fixture scope around the test is torn down
            # as if `nextitem` came next, so each run sets up what it needs again.
            reports = runtestprotocol(item, nextitem=nextitem, log=False)
            this_run = item.stash.get(_LAST_RUN_KEY, [])
            if not this_run or any(report.failed for report in reports):
                # Nothing to take a median of, or a failure to show as it happened: this run is the one reported.
                for report in reports:
                    item.ihook.pytest_runtest_logreport(report=report)
                break
            earlier_runs.append(this_run)
        else:
            _forget_report_sections(item)
            runtestprotocol(item, nextitem=nextitem, log=True)
        del item.stash[_EARLIER_RUNS_KEY]
        item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        return True

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        if call.when != "teardown" or not self.settings.record:
            return (yield)
        # The fixtures have been torn down: every measurement of this run is finished or abandoned.
        finished = [m for m in item.stash.get(MEASUREMENTS_KEY, []) if m.finished]
        this_run = records_of_test(
            item.nodeid, [(m.label if m.named else None, m.label or "", measurement_metrics(m)) for m in finished]
        )
        item.stash[_LAST_RUN_KEY] = this_run
        earlier_runs = item.stash.get(_EARLIER_RUNS_KEY, [])
        records = merge_repeats([*earlier_runs, this_run]) if earlier_runs else this_run
        if self.junit_per_test:
            # Before the report is made, which copies them; an earlier run's are replaced, not repeated.
            kept = [(name, value) for name, value in item.user_properties if not name.startswith(JUNIT_PREFIX)]
            item.user_properties[:] = kept + junit_properties(records, per_test=True)
        report = yield
        setattr(report, RECORDS_ATTRIBUTE, [record.to_dict() for record in records])
        try:
            tolerance = marker_tolerance(item)
        except ValueError:
            tolerance = ()  # reported as a marker problem at collection or setup
        if tolerance:
            setattr(report, TOLERANCE_ATTRIBUTE, [threshold.text for threshold in tolerance])
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # Here for local tests and, under xdist, on the controller for every worker's report.
        records = getattr(report, RECORDS_ATTRIBUTE, None)
        if report.when != "teardown" or records is None:
            return
        self.records[report.nodeid] = [MeasurementRecord.from_dict(data) for data in records]
        tolerance = getattr(report, TOLERANCE_ATTRIBUTE, None)
        if tolerance:
            self.tolerances[report.nodeid] = tuple(parse_threshold(text) for text in tolerance)

    # --- the end of the session, on the controller ------------------------------------------------------

    def session_record(self) -> SessionRecord:
        """Every test's records, in collection order."""
        last = len(self.collection_order)
        tests = sorted(self.records, key=lambda test: self.collection_order.get(test, last))
        return SessionRecord(
            context=self.context, measurements=tuple(record for test in tests for record in self.records[test])
        )

    @pytest.hookimpl(tryfirst=True)  # before junitxml writes its file: the suite properties go in it
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not (self.is_controller and self.settings.record) or self.config.option.collectonly:
            return
        status = session.exitstatus
        if status not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
            # An interrupted or empty session would make a partial baseline, or a comparison of nothing.
            if self.settings.save is not None or self.baseline is not None:
                name = status.name if isinstance(status, pytest.ExitCode) else str(status)
                self.outcome.append(
                    (f"no baseline saved and nothing compared: the session ended with {name}", "warning")
                )
            return
        record = self.session_record()
        if self.baseline is not None:
            self.comparison = compare(
                self.baseline, record, self.settings.thresholds, self.tolerances, noise=self.settings.noise
            )
            if self.comparison.unmeasured:
                self.outcome.append((UNMEASURED_HELP, "bad"))
        saved = self._write_outputs(record)
        self._write_junit_suite_properties(record)
        self._write_step_summary(record, saved)
        if self.comparison is not None and self.comparison.problems:
            session.exitstatus = pytest.ExitCode.USAGE_ERROR  # a gate that checked nothing must not look green
            return
        failed = self.comparison is not None and not self.comparison.passed
        if (failed or any(tone == "bad" for _, tone in self.outcome)) and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _write_outputs(self, record: SessionRecord) -> str | None:
        """Save the baseline and write the JSON files; a failure is reported and fails the session."""
        from pagewalk.memory_map import json_text  # numpy and the snapshot machinery load on first use

        settings, saved = self.settings, None
        count = plural(len(record.measurements), "measurement")
        if settings.save is not None:
            try:
                saved_path = save_record(record, settings.storage, settings.save or None, overwrite=settings.overwrite)
            except (BaselineError, OSError) as exc:
                self.outcome.append((f"ERROR: the baseline was not saved: {exc}", "bad"))
            else:
                saved = str(saved_path)
                self.outcome.append((f"saved {count} as baseline {saved}", "plain"))
        files = (
            (
                settings.json_path,
                "JSON report",
                lambda: json_report(record, self.comparison, saved=saved, maps=self.maps),
            ),
            (settings.benchmark_json_path, "github-action-benchmark JSON", lambda: benchmark_action_entries(record)),
        )
        for path, title, build in files:
            if path is None:
                continue
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_report_file(path, json_text(build()))
            except (BaselineError, OSError) as exc:
                self.outcome.append((f"ERROR: the {title} was not written to {path}: {exc}", "bad"))
            else:
                self.outcome.append((f"wrote the {title} ({count}) to {path}", "plain"))
        return saved

    def _write_junit_suite_properties(self, record: SessionRecord) -> None:
        if not self.junit_per_suite or not record.measurements:
            return
        from _pytest.junitxml import xml_key  # the LogXML object is reachable only through this stash key

        xml = self.config.stash.get(xml_key, None)
        if xml is not None:
            for name, value in junit_properties(record.measurements, per_test=False):
                xml.add_global_property(name, value)

    def _write_step_summary(self, record: SessionRecord, saved: str | None) -> None:
        summary_path = os.environ.get(STEP_SUMMARY_VARIABLE)
        if not (summary_path and self.settings.step_summary):
            return
        try:
            with open(summary_path, "a", encoding="utf-8") as summary:  # appended: other steps write there too
                summary.write(markdown_summary(record, self.comparison, saved=saved, title="pytest-pagemap") + "\n")
        except OSError as exc:
            self.outcome.append((f"WARNING: the step summary was not written to {summary_path}: {exc}", "warning"))

    @pytest.hookimpl(trylast=True)  # the verdict comes after the per-measurement summary of --pagemap
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not (self.is_controller and (self.outcome or self.comparison)):
            return
        terminalreporter.write_sep("=", "pagemap gate" if self.comparison is not None else "pagemap records")
        verbose = self.config.get_verbosity() > 0
        lines = comparison_lines(self.comparison, verbose=verbose) if self.comparison is not None else []
        if self.settings.repeat > 1:
            lines.insert(0, (f"each metric is the median of up to {self.settings.repeat} runs", "plain"))
        for text, tone in [*lines, *self.outcome]:
            terminalreporter.write_line(text, **_TONES[tone])
        if self.comparison is not None:
            # Shown in the final line ("1 passed, 1 memory regressed"), so a green-looking run is not misread.
            for stat, entries in (
                (REGRESSED_STAT, self.comparison.regressions),
                (UNMATCHED_STAT, self.comparison.unmatched),
            ):
                if entries:
                    terminalreporter.stats.setdefault(stat, []).extend(entries)
