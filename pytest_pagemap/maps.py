"""Memory maps of a session's measurements: made where each test ran, carried to the controller (under xdist
too), written as the `--pagemap-html` page and added to the `--pagemap-json` report.

The maps themselves and the page are the core's (`pagewalk.memory_map`, `pagewalk.html_report`).
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from pagewalk._present import plural
from pagewalk.baseline import (
    BaselineError,
    MeasurementRecord,
    SessionRecord,
    collect_context,
    measurement_metrics,
    records_of_test,
)
from pagewalk.ci_reports import json_report
from pagewalk.html_report import write_html

from .fixtures import MEASUREMENTS_KEY
from .gate_options import path_option
from .gates import PagemapGates

__all__ = ["MAPS_ATTRIBUTE", "PagemapMaps", "html_path"]

MAPS_ATTRIBUTE = "pagemap_maps"  # on teardown reports: the test's records and maps as dicts, so xdist carries them
_TITLE = "pytest-pagemap memory map"


def html_path(config: pytest.Config) -> Path | None:
    """`--pagemap-html`, relative to the invocation directory; else the ini's, relative to the rootdir."""
    return path_option(config, "pagemap_html")


class PagemapMaps:
    """Makes a map of every finished measurement when a report wants them; writes the HTML page at the end."""

    def __init__(self, config: pytest.Config, gates: PagemapGates) -> None:
        self.config = config
        self.gates = gates
        self.path = html_path(config)
        self.wanted = self.path is not None or gates.settings.json_path is not None
        self.is_controller = not hasattr(config, "workerinput")
        self.maps: dict[str, dict[str, Any]] = {}
        self.records: dict[str, list[MeasurementRecord]] = {}
        self.outcome: list[tuple[str, dict[str, bool]]] = []
        if self.wanted:
            gates.maps = self.maps  # the JSON report carries the same maps

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if call.when != "teardown" or not self.wanted:
            return report
        finished = [m for m in item.stash.get(MEASUREMENTS_KEY, []) if m.finished]
        if finished:
            from pagewalk.memory_map import measurement_map  # numpy loads on first use, not with the plugin

            records = records_of_test(
                item.nodeid, [(m.label if m.named else None, m.label or "", measurement_metrics(m)) for m in finished]
            )  # keyed as the gate keys them
            carried = [
                {"record": record.to_dict(), "map": measurement_map(measurement)}
                for record, measurement in zip(records, finished, strict=True)
            ]
            setattr(report, MAPS_ATTRIBUTE, carried)
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # Here for local tests and, under xdist, on the controller for every worker's report.
        carried = getattr(report, MAPS_ATTRIBUTE, None)
        if report.when != "teardown" or not carried:
            return
        self.records[report.nodeid] = [MeasurementRecord.from_dict(item["record"]) for item in carried]
        for item in carried:
            self.maps[item["record"]["key"]] = item["map"]

    def _session_record(self) -> SessionRecord:
        if self.gates.settings.record:  # the gate's record: medians under --pagemap-repeat, the gate's order
            return self.gates.session_record()
        order = self.gates.collection_order
        tests = sorted(self.records, key=lambda test: order.get(test, len(order)))
        return SessionRecord(
            context=collect_context(), measurements=tuple(r for test in tests for r in self.records[test])
        )

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        # After the gate's own (tryfirst) sessionfinish, which compares with the baseline.
        if not (self.is_controller and self.path is not None) or self.config.option.collectonly:
            return
        record = self._session_record()
        report = json_report(record, self.gates.comparison, maps=self.maps)
        count = plural(len(record.measurements), "measurement")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_html(self.path, report, title=_TITLE)
        except (BaselineError, OSError) as exc:
            self.outcome.append((f"ERROR: the HTML memory map was not written to {self.path}: {exc}", {"red": True}))
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        else:
            self.outcome.append((f"wrote the HTML memory map ({count}) to {self.path}", {}))

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.outcome:
            terminalreporter.write_sep("-", "pagemap memory map")
        for text, markup in self.outcome:
            terminalreporter.write_line(text, **markup)
