"""The pytest plugin: options and ini keys, markers, the `pagemap` fixture, hooks, reports and xdist.

`--pagemap` (or `pagemap = true`) turns on marker and default limits, the MEMORY status and the session
summary; the fixture and explicit `assert_*` calls work without it. Baselines and gates (`--pagemap-save`,
`--pagemap-compare`, ...) work with or without `--pagemap`: their options are in `gate_options`, the work in
`gates`. `-p no:pagemap` disables the plugin.

Installed but unused, the plugin costs a pytest start only its options, hooks, marker and fixture: the
measuring code (numpy, /proc), baselines, reports and memory maps load when a session uses them.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import pytest

from pagewalk.metrics import LIMIT_KEYS, NO_FLAG_GAIN

from . import hookspecs
from .fixtures import DEFAULT_GRACE_SECONDS, MEASUREMENTS_KEY, SETTINGS_KEY, Settings, pagemap
from .gate_options import add_gate_options, path_option, read_gate_settings
from .markers import MARKER_HELP, has_marker, marker_limits, marker_tolerance

if TYPE_CHECKING:
    # The measuring code, the gate's records and the memory maps load when a session uses them (numpy, /proc):
    # a session that never measures pays for the options and hooks only.
    from pagewalk.measure import Limits, Measurement

    from .gates import PagemapGates

__all__ = [
    "PagemapManager",
    "pagemap",
    "pytest_addhooks",
    "pytest_addoption",
    "pytest_configure",
    "pytest_pagemap_limits",
    "pytest_unconfigure",
    "read_settings",
]

MANAGER_KEY = pytest.StashKey["PagemapManager"]()
GATES_KEY: pytest.StashKey[PagemapGates] = pytest.StashKey()
_REPORT_ATTRIBUTE = "pagemap_measurements"  # on teardown reports: JSON-ready dicts, so xdist can carry them
_EXCEEDED_ATTRIBUTE = "pagemap_limit_exceeded"  # on call reports failed by a MemoryLimitExceeded
_UNCHECKED_ATTRIBUTE = "pagemap_unchecked_limits"  # on teardown reports of tests whose marker limits went unchecked
_MARKER_PROBLEM_KEY = pytest.StashKey[str]()
SECTION_TITLE = "pagemap"  # of the session summary and of the report section a MEMORY failure adds
SUMMARY_FORMS = ("short", "full", "none")  # of --pagemap-summary; the tables are built in `report`


# --- options --------------------------------------------------------------------------------------------


LIMIT_FORMS = "METRIC:SIZE, e.g. uss:64MiB or uss_growth:8MiB (a growth limit may be negative)"


def parse_limit(text: str) -> tuple[str, str]:
    """Split `uss:64MiB` into the `Limits.parse` keyword and its size; `ValueError` naming the grammar if bad."""
    from pagewalk.measure import Limits

    metric, colon, size = (part.strip() for part in text.partition(":"))
    key = f"{metric}_below"
    if not colon or not size or key not in LIMIT_KEYS:
        metrics = ", ".join(LIMIT_KEYS.values())
        raise ValueError(f"cannot read {text!r} as a limit; expected {LIMIT_FORMS}; metrics: {metrics}")
    try:
        Limits.parse({key: size})
    except ValueError as exc:
        raise ValueError(f"cannot read the size in {text!r}: {str(exc).partition(': ')[2] or exc}") from None
    return key, size


def _limit_type(text: str) -> tuple[str, str]:
    try:
        return parse_limit(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_limit_type.__name__ = "limit"  # argparse names the type in its error message


def _flags_type(text: str) -> str:
    from pagewalk.measure import Limits

    try:
        Limits.parse({NO_FLAG_GAIN: _split_flags(text)})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _seconds_type(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not seconds >= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a grace period must be zero or more seconds")
    return seconds


_seconds_type.__name__ = "seconds"


def _split_flags(text: str) -> list[str]:
    return [name for name in text.replace(",", " ").split() if name]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pagemap", "pytest-pagemap: memory assertions from Linux page tables")
    group.addoption(
        "--pagemap",
        action="store_true",
        default=None,
        help="check marker and default memory limits, report MEMORY failures and print a summary of every "
        "measurement (ini: pagemap = true)",
    )
    parser.addini("pagemap", "turn pytest-pagemap's reporting and limits on, as --pagemap does", type="bool")
    group.addoption(
        "--pagemap-strict",
        action="store_true",
        default=None,
        help="fail, instead of skipping, tests that need what this kernel or user cannot give "
        "(soft-dirty, page flags, PSS) (ini: pagemap_strict)",
    )
    parser.addini("pagemap_strict", "as --pagemap-strict", type="bool")
    group.addoption(
        "--pagemap-grace",
        type=_seconds_type,
        default=None,
        metavar="SECONDS",
        help=f"seconds spawned processes get to exit after SIGTERM before SIGKILL "
        f"(default {DEFAULT_GRACE_SECONDS:g}; ini: pagemap_grace)",
    )
    parser.addini("pagemap_grace", "as --pagemap-grace", default=str(DEFAULT_GRACE_SECONDS))
    group.addoption(
        "--pagemap-limit",
        type=_limit_type,
        action="append",
        default=None,
        metavar="METRIC:SIZE",
        help="a default limit for every measurement that records METRIC, e.g. uss:64MiB or uss_growth:8MiB; "
        f"repeat for more metrics ({', '.join(LIMIT_KEYS.values())}); a marker's limit on the same metric wins "
        "(ini: pagemap_limits, one per line)",
    )
    parser.addini("pagemap_limits", "default limits as --pagemap-limit, one METRIC:SIZE per line", type="linelist")
    group.addoption(
        "--pagemap-no-flag-gain",
        type=_flags_type,
        default=None,
        metavar="FLAGS",
        help="page flags no page may gain in measurements that read flags, e.g. 'THP,KSM' "
        f"(ini: pagemap_{NO_FLAG_GAIN})",
    )
    parser.addini(f"pagemap_{NO_FLAG_GAIN}", "as --pagemap-no-flag-gain", default="")
    group.addoption(
        "--pagemap-summary",
        choices=SUMMARY_FORMS,
        default=None,
        help="the --pagemap summary: 'short', one row per measurement, failures first (default); 'full', every "
        "measurement's totals and verdicts; 'none' (ini: pagemap_summary)",
    )
    parser.addini("pagemap_summary", "as --pagemap-summary", default="short")
    group.addoption(
        "--pagemap-html",
        default=None,
        metavar="PATH",
        help="write a self-contained HTML page with a memory map of every measurement, the gate's comparison "
        "first (ini: pagemap_html, relative to the rootdir)",
    )
    parser.addini("pagemap_html", "as --pagemap-html, relative to the rootdir", default="")
    add_gate_options(group, parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def _choice(config: pytest.Config, name: str) -> Any:
    """The command-line value of option `name`, else its ini value."""
    value = config.getoption(name)
    return config.getini(name) if value is None else value


def read_settings(config: pytest.Config) -> Settings:
    """The plugin's settings from options and ini keys; a bad ini value raises `pytest.UsageError`."""
    grace_text = _choice(config, "pagemap_grace")
    try:
        grace = _seconds_type(str(grace_text)) if not isinstance(grace_text, float) else grace_text
    except argparse.ArgumentTypeError as exc:
        raise pytest.UsageError(f"invalid pytest-pagemap ini value: pagemap_grace: {exc}") from None
    values: dict[str, Any] = {}
    for text in config.getini("pagemap_limits"):
        try:
            key, size = parse_limit(text)
        except ValueError as exc:
            raise pytest.UsageError(f"invalid pytest-pagemap ini value: pagemap_limits: {exc}") from None
        values[key] = size
    values.update(config.getoption("pagemap_limit") or [])  # the command line wins, metric by metric
    flags_text = _choice(config, f"pagemap_{NO_FLAG_GAIN}")
    if flags_text:
        values[NO_FLAG_GAIN] = _split_flags(flags_text)
    defaults = None
    if values:
        from pagewalk.measure import Limits

        try:
            defaults = Limits.parse(values)
        except ValueError as exc:
            raise pytest.UsageError(f"invalid pytest-pagemap ini value: pagemap_{exc}") from None
    return Settings(
        active=bool(_choice(config, "pagemap")),
        strict=bool(_choice(config, "pagemap_strict")),
        grace=grace,
        defaults=defaults,
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    settings = read_settings(config)
    gate_settings = read_gate_settings(config, active=settings.active)
    manager = PagemapManager(config, settings, asked=settings.active or gate_settings.record)
    if gate_settings.record and settings.unsupported:
        gate_settings = dataclasses.replace(gate_settings, record=False)  # inactive: nothing to save or compare
    config.stash[SETTINGS_KEY] = settings
    config.stash[MANAGER_KEY] = manager
    config.pluginmanager.register(manager, "pagemap-manager")
    html_path = path_option(config, "pagemap_html")
    if not (gate_settings.record or html_path is not None):
        return  # nothing recorded, compared or mapped: the modules that would do it are not even loaded
    from .gates import PagemapGates

    gates = PagemapGates(config, gate_settings)
    config.stash[GATES_KEY] = gates
    config.pluginmanager.register(gates, "pagemap-gates")
    if html_path is not None or gate_settings.json_path is not None:
        from .maps import PagemapMaps

        config.pluginmanager.register(PagemapMaps(config, gates), "pagemap-maps")


def pytest_unconfigure(config: pytest.Config) -> None:
    manager = config.stash.get(MANAGER_KEY, None)
    if manager is not None:
        config.pluginmanager.unregister(manager)
        del config.stash[MANAGER_KEY]
        del config.stash[SETTINGS_KEY]
    maps = config.pluginmanager.get_plugin("pagemap-maps")
    if maps is not None:
        config.pluginmanager.unregister(maps)
    gates = config.stash.get(GATES_KEY, None)
    if gates is not None:
        config.pluginmanager.unregister(gates)
        del config.stash[GATES_KEY]


@pytest.hookimpl(trylast=True)
def pytest_pagemap_limits(item: pytest.Item, limits: Limits) -> Limits:
    """The default: the marker limits over the session defaults, unchanged."""
    return limits


# --- the manager: state and reporting hooks ------------------------------------------------------------


class PagemapManager:
    """Holds the settings and the measurements reported so far; implements the reporting hooks."""

    def __init__(self, config: pytest.Config, settings: Settings, *, asked: bool) -> None:
        self.config = config
        self.settings = settings
        self.asked = asked  # --pagemap, or an option that records measurements (save, compare, reports)
        self.results: list[dict[str, Any]] = []
        self.unchecked_limits = False  # some test had marker limits that went unchecked (no --pagemap)
        self.summary = _choice(config, "pagemap_summary")
        if self.summary not in SUMMARY_FORMS:
            raise pytest.UsageError(
                f"invalid pytest-pagemap ini value: pagemap_summary: {self.summary!r}; choose from "
                + ", ".join(SUMMARY_FORMS)
            )

    def pytest_report_header(self) -> str | None:
        if not self.asked:
            return None
        if self.settings.unsupported:
            return f"pagemap: inactive, tests using the pagemap fixture are skipped: {self.settings.unsupported}"
        if not self.settings.active:
            return None
        from pagewalk.capabilities import capabilities

        caps = capabilities()
        missing = {
            "soft-dirty": caps.missing_for_soft_dirty(),
            "page flags": caps.missing_for_flags(),
            "PSS": caps.missing_for_pss(),
        }
        can = ", ".join(f"{what} {'yes' if reason is None else 'no'}" for what, reason in missing.items())
        return f"pagemap: kernel {caps.kernel}; {can}; strict {'on' if self.settings.strict else 'off'}"

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        problems = []
        for item in items:
            if not has_marker(item):
                continue  # the usual case, which need not load the code that reads limits
            try:
                marker_limits(item)
                marker_tolerance(item)
            except ValueError as exc:
                problem = f"{item.nodeid}: @pytest.mark.pagemap: {exc}"
                item.stash[_MARKER_PROBLEM_KEY] = problem
                problems.append(problem)
        # An xdist worker cannot stop the session with a usage error: its tests fail at setup instead.
        if problems and not hasattr(self.config, "workerinput"):
            raise pytest.UsageError("invalid pagemap marker arguments:\n" + "\n".join(problems))

    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        problem = item.stash.get(_MARKER_PROBLEM_KEY, None)
        if problem is not None:
            pytest.fail(f"invalid pagemap marker arguments: {problem}", pytrace=False)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if not self.settings.active:
            if (
                call.when == "teardown"
                and has_marker(item)
                and _MARKER_PROBLEM_KEY not in item.stash
                and marker_limits(item)
            ):
                setattr(report, _UNCHECKED_ATTRIBUTE, True)
            return report
        if call.when == "call" and report.failed and call.excinfo is not None:
            from pagewalk.measure import MemoryLimitExceeded

            exc = call.excinfo.value
            if isinstance(exc, MemoryLimitExceeded):
                setattr(report, _EXCEEDED_ATTRIBUTE, True)
                report.sections.append((SECTION_TITLE, exc.details()))
        if call.when == "teardown":
            measurements: list[Measurement] = item.stash.get(MEASUREMENTS_KEY, [])
            finished = [
                {"test": item.nodeid, **measurement.to_dict()} for measurement in measurements if measurement.finished
            ]
            if finished:
                setattr(report, _REPORT_ATTRIBUTE, finished)
        return report

    def pytest_report_teststatus(
        self, report: pytest.TestReport
    ) -> tuple[str, str, tuple[str, dict[str, bool]]] | None:
        if self.settings.active and report.failed and getattr(report, _EXCEEDED_ATTRIBUTE, False):
            return "failed", "M", ("MEMORY", {"red": True})
        return None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # Runs in this process for local tests and, under xdist, on the controller for every worker's report.
        self.results.extend(getattr(report, _REPORT_ATTRIBUTE, None) or [])
        self.unchecked_limits |= getattr(report, _UNCHECKED_ATTRIBUTE, False)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if hasattr(self.config, "workerinput"):
            return
        if not self.settings.active:
            sources = [
                what
                for what, present in (("markers", self.unchecked_limits), ("defaults", bool(self.settings.defaults)))
                if present
            ]
            if sources and not self.settings.unsupported:
                terminalreporter.write_line(
                    f"pagemap: memory limits set by {' and '.join(sources)} were not checked: "
                    "run with --pagemap (or ini: pagemap = true) to check them",
                    yellow=True,
                )
            return
        if self.summary == "none" or self.settings.unsupported:
            return
        from .report import summary_lines  # loaded when there is a summary to print

        terminalreporter.write_sep("=", SECTION_TITLE)
        for line in summary_lines(self.results, self.summary):
            terminalreporter.write_line(line)
