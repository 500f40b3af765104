"""The `Pagemap` object the `pagemap` fixture gives a test: start, attach to, run and measure processes, with
the test's limits applied.

Loaded when a test first asks for the fixture, with the measuring code it uses.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, NoReturn, ParamSpec, Protocol, TypeVar

import pytest

from pagewalk.errors import NoAddressSpace, ProcessGone
from pagewalk.measure import Limits, Measurement, missing_requirements
from pagewalk.metrics import METRICS, Option

from .fixtures import GATE_NEEDS_KEY, MEASUREMENTS_KEY, Settings
from .markers import marker_limits, marker_tolerance

if TYPE_CHECKING:
    # Loaded on first use (psutil, pickle): by spawn, attach and run.
    from .processes import AttachedProcess, Ready, SpawnedProcess
    from .runner import ChildCall, RunResult

__all__ = ["HasPid", "MeasureContext", "Pagemap", "Runner"]

P = ParamSpec("P")
T = TypeVar("T")


class HasPid(Protocol):
    """Anything with a pid: a spawned or attached process, a `subprocess.Popen`, a `psutil.Process`."""

    @property
    def pid(self) -> int: ...


class Pagemap:
    """Per-test helper behind the `pagemap` fixture; see the fixture's documentation."""

    def __init__(self, item: pytest.Item, settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._item = item
        self._settings = settings
        self._tmp_path_factory = tmp_path_factory
        self._processes: list[SpawnedProcess] = []
        self._calls: list[ChildCall] = []
        self._limits: Limits | None = None

    @property
    def measurements(self) -> list[Measurement]:
        """Every measurement this test has made so far, finished or not, in order."""
        return self._item.stash.setdefault(MEASUREMENTS_KEY, [])

    @property
    def limits(self) -> Limits:
        """The limits checked against each measurement of this test: none unless `--pagemap` is active."""
        if self._limits is None:
            if not self._settings.active:
                self._limits = Limits()
            else:
                merged = marker_limits(self._item).over(self._settings.defaults or Limits())
                chosen = self._item.config.hook.pytest_pagemap_limits(item=self._item, limits=merged)
                self._limits = merged if chosen is None else chosen
        return self._limits

    # --- processes --------------------------------------------------------------------------------------

    def spawn(
        self,
        cmd: str | Sequence[str | os.PathLike[str]],
        *,
        ready: Ready = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        timeout: float = 30,
    ) -> SpawnedProcess:
        """Start `cmd` (a list, or a string split like a shell would) in its own process group and wait for `ready`.

        Output goes to files (`.stdout`, `.stderr`); `env` adds to the inherited environment. `ready` is a
        callable returning truthy, a regex (str or compiled) matched on an output line, a TCP port (or
        `(host, port)`) accepting connections, or a `pathlib.Path` that appears; waiting longer than `timeout`
        seconds, or the process exiting first, fails the test with its output. The process group is ended
        at teardown (SIGTERM, then SIGKILL after `--pagemap-grace` seconds).
        """
        __tracebackhide__ = True  # a failure points at the test's call, with one short message
        from .processes import SpawnedProcess, interrupt_on_sigterm

        interrupt_on_sigterm()
        process = SpawnedProcess(
            cmd, log_dir=self._tmp_path_factory.mktemp("spawn"), env=env, cwd=cwd, grace=self._settings.grace
        )
        self._processes.append(process)
        process.wait_ready(ready, timeout)
        return process

    def attach(self, pid: int) -> AttachedProcess:
        """A handle on a process the test started itself, for `measure`; it is not ended at teardown."""
        from .processes import AttachedProcess

        return AttachedProcess(pid)

    # --- measuring --------------------------------------------------------------------------------------

    def measure(
        self,
        process: HasPid | int,
        *,
        label: str | None = None,
        writes: bool = False,
        accessed: bool = False,
        flags: bool = False,
        counts: bool = False,
        freeze: bool = True,
        tree: bool = False,
    ) -> MeasureContext:
        """Measure `process` (a spawned or attached process, or a pid) around the `with` block.

        `writes` counts memory written (soft-dirty), `accessed` memory accessed, `flags` reads page flags,
        `counts` computes PSS. A limit of the test's marker turns on the option it needs. When this kernel or
        user cannot give an option the test is skipped (failed with `--pagemap-strict`). When the block ends
        the limits in force are checked and a `MemoryLimitExceeded` raised for the first one exceeded.
        `tree=True` measures the process and all its descendants, stopped together (`m.after.processes`).
        """
        pid = process if isinstance(process, int) else process.pid
        named = label is not None  # a label the test chose keys the measurement in baselines; a command line never
        label = label or getattr(process, "label", None)
        options = {"writes": writes, "accessed": accessed, "flags": flags, "counts": counts}
        spawned = next((known for known in self._processes if known.pid == pid), None)
        return MeasureContext(
            self, pid, label=label, named=named, tree=tree, options=options, freeze=freeze, spawned=spawned
        )

    def run(self, func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> RunResult[T]:
        """Call `func(*args, **kwargs)` in a fresh Python interpreter and measure the child around the call.

        `func` and its arguments must pickle (a module-level function; test modules work too). Returns a
        `RunResult` with `.value` and `.measurement`. An exception `func` raises is re-raised here with the
        child's traceback as its cause; a child that dies during the call fails with `ChildCrashed`.
        Use `pagemap.runner(writes=True, ...)` for measurement options.
        """
        __tracebackhide__ = True
        return self.runner()(func, *args, **kwargs)

    def runner(
        self,
        *,
        label: str | None = None,
        writes: bool = False,
        accessed: bool = False,
        flags: bool = False,
        counts: bool = False,
        timeout: float | None = None,
    ) -> Runner:
        """`run` with measurement options: `pagemap.runner(writes=True, timeout=60)(func, *args)`.

        `timeout` bounds, in seconds, each wait for the child (loading the call, running it); None waits.
        """
        options = {"writes": writes, "accessed": accessed, "flags": flags, "counts": counts}
        return Runner(self, label=label, options=options, timeout=timeout)

    # --- internals --------------------------------------------------------------------------------------

    def _options(self, **wanted: bool) -> dict[Option, bool]:
        """The measurement options after the marker's needs, skipping the test when they cannot be met."""
        __tracebackhide__ = True
        options: dict[Option, bool] = {
            "writes": wanted["writes"],
            "accessed": wanted["accessed"],
            "flags": wanted["flags"],
            "counts": wanted["counts"],
        }
        flag_names: tuple[str, ...] = ()
        if self._settings.active:
            for need in marker_limits(self._item).needs():
                options[need] = True
            flag_names = self.limits.no_flag_gain
        if GATE_NEEDS_KEY in self._item.config.stash:
            try:
                tolerance = marker_tolerance(self._item)
            except ValueError:
                tolerance = ()  # reported as a marker problem at collection
            gated = {need_of for threshold in tolerance if (need_of := METRICS[threshold.metric].needs)}
            for gated_option in self._item.config.stash[GATE_NEEDS_KEY] | gated:
                options[gated_option] = True
        missing = missing_requirements(**options, flag_names=flag_names)
        if missing:
            self.unavailable(self._settings, missing)
        return options

    @staticmethod
    def unavailable(settings: Settings, reasons: list[str]) -> NoReturn:
        """Skip the test for these reasons (fail it with `--pagemap-strict`)."""
        __tracebackhide__ = True
        reason = "pagemap: " + "; ".join(reasons)
        if settings.strict:
            pytest.fail(f"{reason} (a skip turned into a failure by --pagemap-strict)", pytrace=False)
        pytest.skip(reason)

    def _finish(self, measurement: Measurement, *, enforce: bool) -> None:
        """Check the limits in force, announce the measurement, then raise for the first limit exceeded."""
        __tracebackhide__ = True
        limits = self.limits
        marker = marker_limits(self._item) if self._settings.active else Limits()
        verdicts = []
        for metric, limit in limits.below.items():
            needs = METRICS[metric].needs
            if needs is None or getattr(measurement, needs):
                source = "marker" if metric in marker.below else "default"
                verdicts.append(measurement.check(metric, limit, source=source))
        if measurement.flags:
            source = "marker" if marker.no_flag_gain else "default"
            verdicts += [measurement.check_flag(flag, source=source) for flag in limits.no_flag_gain]
        self._item.config.hook.pytest_pagemap_measurement(item=self._item, measurement=measurement)
        if enforce:
            for verdict in verdicts:
                if not verdict.passed:
                    raise measurement.failure(verdict)

    def _run(
        self,
        func: Callable[..., T],
        args: tuple[object, ...],
        kwargs: dict[str, object],
        *,
        label: str | None,
        options: dict[str, bool],
        timeout: float | None,
    ) -> RunResult[T]:
        __tracebackhide__ = True
        checked = self._options(**options)
        from .runner import ChildCall, RunResult, describe_callable

        call = ChildCall(
            func,
            args,
            kwargs,
            log_dir=self._tmp_path_factory.mktemp("run"),
            grace=self._settings.grace,
            timeout=timeout,
        )
        self._calls.append(call)
        call.wait_ready()
        measurement = Measurement(
            call.pid, label=label or f"{describe_callable(func)}()", named=label is not None, **checked
        )
        self.measurements.append(measurement)
        measurement.start()
        call.start_call()
        measurement.stop()
        try:
            value = call.outcome()
        except BaseException:
            # The call's own exception matters more than a limit: record the verdicts, raise the exception.
            self._finish(measurement, enforce=False)
            raise
        self._finish(measurement, enforce=True)
        return RunResult(value, measurement, call.pid, call.stdout, call.stderr)

    def close(self) -> None:
        """End every process and child interpreter this test started, with their process groups."""
        problems: list[BaseException] = []
        for ending in [process.stop for process in self._processes] + [call.close for call in self._calls]:
            try:
                ending()
            except Exception as exc:  # end the others before reporting it
                problems.append(exc)
        if problems:
            raise problems[0]


class MeasureContext:
    """The context manager `pagemap.measure(...)` returns; `with` gives the `Measurement`."""

    def __init__(
        self,
        pagemap: Pagemap,
        pid: int,
        *,
        label: str | None,
        named: bool,
        options: dict[str, bool],
        freeze: bool,
        tree: bool = False,
        spawned: SpawnedProcess | None = None,
    ) -> None:
        self._spawned = spawned
        self._pagemap = pagemap
        self._pid = pid
        self._label = label
        self._named = named
        self._options = options
        self._freeze = freeze
        self._tree = tree
        self._measurement: Measurement | None = None

    def __enter__(self) -> Measurement:
        __tracebackhide__ = True  # a skip or failure points at the test's `with` line, not here
        options = self._pagemap._options(**self._options)
        measurement = Measurement(self._pid, label=self._label, named=self._named, tree=self._tree, **options)
        self._pagemap.measurements.append(measurement)
        with self._explain_exit("before the measurement"):
            measurement.start(freeze=self._freeze)
        self._measurement = measurement
        return measurement

    @contextlib.contextmanager
    def _explain_exit(self, when: str) -> Iterator[None]:
        """Turn "process gone" from a spawned process that exited into its exit status and output."""
        __tracebackhide__ = True
        if self._spawned is not None:
            self._spawned.check_running(when)
        try:
            yield
        except (ProcessGone, NoAddressSpace):
            if self._spawned is None:
                raise
            with contextlib.suppress(subprocess.TimeoutExpired):  # an exiting process is about to be a zombie
                self._spawned.popen.wait(timeout=1)
            self._spawned.check_running(when)
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: types.TracebackType | None
    ) -> None:
        __tracebackhide__ = True
        if exc_type is not None or self._measurement is None:
            return  # the block failed: its exception matters, and the process may be gone
        with self._explain_exit("during the measurement"):
            self._measurement.stop(freeze=self._freeze)
        self._pagemap._finish(self._measurement, enforce=True)


class Runner:
    """`pagemap.run` with fixed measurement options; made by `pagemap.runner(...)`."""

    def __init__(self, pagemap: Pagemap, *, label: str | None, options: dict[str, bool], timeout: float | None) -> None:
        self._pagemap = pagemap
        self._label = label
        self._options = options
        self._timeout = timeout

    def __call__(self, func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> RunResult[T]:
        __tracebackhide__ = True
        return self._pagemap._run(func, args, kwargs, label=self._label, options=self._options, timeout=self._timeout)
