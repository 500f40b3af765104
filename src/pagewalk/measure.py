"""Measuring a process around a block of work, and asserting on what changed.

>>> with measure(pid, label="python -m app") as m:
...     drive_the_app()
>>> m.assert_uss_growth_below("8 MiB")

A `Measurement` snapshots the process before the block (starting write and access tracking while the process
is still stopped) and after it, and keeps the difference. Its `assert_*` methods raise `MemoryLimitExceeded`,
an `AssertionError`, with a one-line message and a `details()` table of the regions that contributed most;
every check, passed or failed, is kept as a `Verdict` so reports can list them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ._present import Unit, amount, plural, size_cell, table, verdict_text
from .bits import FLAG_BITS
from .errors import PagewalkError, Unsupported
from .metrics import FILE_PARTS, LIMIT_KEYS, METRICS, NO_FLAG_GAIN, Metric, Option
from .units import format_size, parse_size

if TYPE_CHECKING:
    from .delta import Delta, RegionDelta
    from .snapshot import Region, Snapshot

__all__ = [
    "FLAG_NAMES",
    "LIMIT_KEYS",
    "METRICS",
    "Limits",
    "Measurement",
    "MemoryLimitExceeded",
    "Metric",
    "NotMeasured",
    "SharingBelow",
    "Verdict",
    "default_label",
    "limit_message",
    "measure",
    "missing_requirements",
]

FLAG_NAMES: tuple[str, ...] = tuple(FLAG_BITS)
_FLAG_PREFIX = "flags_gained:"
_LABEL_WIDTH = 60
_DETAIL_ROWS = 8
_PEAK_METRICS = ("peak_rss", "peak_rss_growth")  # read from the delta: the high-water mark between the snapshots


class NotMeasured(PagewalkError, ValueError):
    """A limit was asked of a quantity this measurement did not record (PSS without counts=True, ...)."""


class SharingBelow(AssertionError):
    """A process of a tree shares less of its memory with its parent than required."""


def _who(label: str | None, pid: int) -> str:
    return f"'{label}' (pid {pid})" if label else f"pid {pid}"


def _subject(metric: str) -> str:
    if metric.startswith(_FLAG_PREFIX):
        return f"Pages that gained {metric[len(_FLAG_PREFIX) :]} in"
    spec = METRICS[metric]
    return f"{spec.title} {spec.preposition}"


def limit_message(metric: str, limit: int, measured: int, label: str | None, pid: int, unit: Unit = "bytes") -> str:
    """The one-line failure message: `USS of 'app' (pid 42) limited to 64.0 MiB but measured 71.2 MiB, 7.2 MiB over`.

    "over" rather than a sign: the next lines of a report show signed changes, which mean growth."""
    return (
        f"{_subject(metric)} {_who(label, pid)} limited to {amount(limit, unit)} "
        f"but measured {amount(measured, unit)}, {amount(measured - limit, unit)} over"
    )


class MemoryLimitExceeded(AssertionError):
    """A measured quantity of a process went over its limit."""

    def __init__(
        self,
        metric: str,
        limit: int,
        measured: int,
        label: str | None,
        pid: int,
        details: str = "",
        unit: Unit = "bytes",
        reason: str = "",
    ) -> None:
        self.metric = metric
        self.limit = limit
        self.measured = measured
        self.label = label
        self.pid = pid
        self.unit: Unit = unit
        self.reason = reason  # why it failed when the value is within the limit (an exec between the snapshots)
        self.message = reason or limit_message(metric, limit, measured, label, pid, unit)
        self._details = details
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def details(self) -> str:
        """Several lines: the message, the totals before and after, and the regions that contributed most."""
        return self._details or self.message

    def __reduce__(self) -> tuple[type[MemoryLimitExceeded], tuple[Any, ...]]:
        # Keep the failure intact across process boundaries (xdist workers, `pagemap.run` children).
        return (
            type(self),
            (self.metric, self.limit, self.measured, self.label, self.pid, self._details, self.unit, self.reason),
        )


@dataclass(frozen=True)
class Verdict:
    """One limit checked against one measurement."""

    metric: str
    limit: int
    measured: int
    passed: bool
    unit: Unit = "bytes"
    source: str = "assert"  # who asked: "assert", "marker", "default", ...

    def describe(self) -> str:
        """`pass  uss_growth 1.2 MiB <= 8.0 MiB (marker)`."""
        return verdict_text(self.metric, self.measured, self.limit, self.passed, self.unit, self.source)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "limit": self.limit,
            "measured": self.measured,
            "passed": self.passed,
            "unit": self.unit,
            "source": self.source,
        }


def _parse_limit(key: str, value: object) -> int:
    metric = METRICS[LIMIT_KEYS[key]]
    if not isinstance(value, (int, str)):
        raise ValueError(f"{key}={value!r}: a limit is an int of bytes or a size string, not {type(value).__name__}")
    try:
        return parse_size(value, allow_negative=metric.growth)
    except ValueError as exc:
        raise ValueError(f"{key}={value!r}: {exc}") from None


def _parse_flag_names(value: object) -> tuple[str, ...]:
    names = (value,) if isinstance(value, str) else value
    if not isinstance(names, Iterable):
        raise ValueError(f"expected a flag name or a sequence of flag names, not {value!r}")
    result = []
    for name in names:
        if not isinstance(name, str) or name.upper() not in FLAG_NAMES:
            raise ValueError(f"unknown page flag {name!r}; known flags: {', '.join(FLAG_NAMES)}")
        result.append(name.upper())
    return tuple(dict.fromkeys(result))


@dataclass(frozen=True)
class Limits:
    """Limits to check a measurement against: bytes per metric, and page flags no page may gain."""

    below: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    no_flag_gain: tuple[str, ...] = ()

    @classmethod
    def parse(cls, values: Mapping[str, object]) -> Limits:
        """Read keyword limits such as `{"uss_below": "64 MiB", "no_flag_gain": "THP"}`.

        Raises `ValueError` naming the bad key or value and what is accepted.
        """
        below: dict[str, int] = {}
        flags: tuple[str, ...] = ()
        for key, value in values.items():
            if key == NO_FLAG_GAIN:
                try:
                    flags = _parse_flag_names(value)
                except ValueError as exc:
                    raise ValueError(f"{NO_FLAG_GAIN}: {exc}") from None
            elif key in LIMIT_KEYS:
                below[LIMIT_KEYS[key]] = _parse_limit(key, value)
            else:
                accepted = ", ".join([*LIMIT_KEYS, NO_FLAG_GAIN])
                raise ValueError(f"unknown limit {key!r}; accepted: {accepted}")
        return cls(MappingProxyType(below), flags)

    def over(self, defaults: Limits) -> Limits:
        """These limits, with `defaults` filling in the metrics they do not set."""
        below = {**defaults.below, **self.below}
        flags = self.no_flag_gain or defaults.no_flag_gain
        return Limits(MappingProxyType(below), flags)

    def needs(self) -> frozenset[Option]:
        """The measure() options without which some of these limits cannot be checked."""
        options: set[Option] = {need for metric in self.below if (need := METRICS[metric].needs)}
        if self.no_flag_gain:
            options.add("flags")
        return frozenset(options)

    def __bool__(self) -> bool:
        return bool(self.below or self.no_flag_gain)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {f"{metric}_below": limit for metric, limit in self.below.items()}
        if self.no_flag_gain:
            data[NO_FLAG_GAIN] = list(self.no_flag_gain)
        return data


def missing_requirements(
    *,
    writes: bool = False,
    accessed: bool = False,
    flags: bool = False,
    counts: bool = False,
    flag_names: Iterable[str] = (),
) -> list[str]:
    """Why this kernel and user cannot measure with these options (and tell these page flags): one reason per
    missing piece, or none."""
    from .capabilities import capabilities  # the kernel probes (/proc) load when a measurement needs them

    caps = capabilities()
    reasons = []
    if writes and (missing := caps.missing_for_soft_dirty()):
        reasons.append(f"pages written cannot be tracked: {missing}")
    if flags and (missing := caps.missing_for_flags()):
        reasons.append(missing)
    elif flags:
        reasons += [
            f"page flag {name} cannot be checked: {why}" for name in flag_names if (why := caps.missing_for_flag(name))
        ]
    if counts and (missing := caps.missing_for_pss()):
        reasons.append(missing)
    return reasons


def default_label(command: str) -> str:
    """A short name for a process from its command line: the program's base name and the first arguments."""
    program, _, arguments = command.partition(" ")
    label = f"{os.path.basename(program)} {arguments}".strip()
    return label if len(label) <= _LABEL_WIDTH else label[: _LABEL_WIDTH - 3] + "..."


class Measurement:
    """A process measured around a block of work: `before` and `after` snapshots, their `delta`, and verdicts.

    `after` and `delta` exist once the block has finished (`finished`). The `assert_*` methods check the
    measurement against a limit (anything `parse_size` accepts), record a `Verdict`, and raise
    `MemoryLimitExceeded` when the measured value is over it.
    """

    def __init__(
        self,
        pid: int,
        *,
        label: str | None = None,
        writes: bool = False,
        accessed: bool = False,
        flags: bool = False,
        counts: bool = False,
        named: bool | None = None,
        tree: bool = False,
    ) -> None:
        self.pid = pid
        self.label = label
        # Whether `label` is a name the caller chose (kept between runs), not one made from the command line.
        self.named = label is not None if named is None else named
        self.writes = writes
        self.accessed = accessed
        self.flags = flags
        self.counts = counts
        self.tree = tree  # the process and all its descendants (see `pagewalk.tree`)
        self.before: Snapshot | None = None
        self._after: Snapshot | None = None
        self._delta: Delta | None = None
        self.verdicts: list[Verdict] = []
        self.notes: list[str] = []  # what a reader of the numbers should know (a wrapper measured alone, ...)

    @classmethod
    def from_snapshots(cls, before: Snapshot, after: Snapshot, *, label: str | None = None) -> Measurement:
        """A finished measurement made of two snapshots taken elsewhere (the options are read off them)."""
        from .tree import TreeSnapshot

        measurement = cls(
            after.pid,
            label=label or default_label(before.command),
            named=label is not None,
            writes=after.written is not None,
            accessed=after.accessed is not None,
            flags=before.flag_counts is not None and after.flag_counts is not None,
            counts=after.pss is not None,
            tree=isinstance(after, TreeSnapshot),
        )
        measurement.before = before
        measurement._finish(after)
        return measurement

    def __repr__(self) -> str:
        state = self.describe() if self.finished else "running"
        return f"<Measurement {_who(self.label, self.pid)}: {state}>"

    # --- taking the snapshots ---------------------------------------------------------------------------

    def start(self, *, freeze: bool = True) -> None:
        """Take the `before` snapshot and start the tracking the options ask for."""
        from .snapshot import snapshot  # loads numpy: on first use, not when limits are merely parsed

        track = [name for name, wanted in (("writes", self.writes), ("accessed", self.accessed)) if wanted]
        self.before = snapshot(
            self.pid, flags=self.flags, counts=self.counts, freeze=freeze, track=[*track, "peak"], tree=self.tree
        )
        if self.label is None:
            self.label = default_label(self.before.command)

    def stop(self, *, freeze: bool = True) -> None:
        """Take the `after` snapshot (with what was tracked since `start`) and compute the delta."""
        if self.before is None:
            raise PagewalkError("stop() before start(): the measurement has no 'before' snapshot", self.pid)
        from .snapshot import snapshot

        after = snapshot(
            self.pid,
            flags=self.flags,
            counts=self.counts,
            freeze=freeze,
            writes=self.writes,
            accessed=self.accessed,
            tree=self.tree,
        )
        self._finish(after)
        if not self.tree:
            self._note_wrapper()

    def _finish(self, after: Snapshot) -> None:
        from .delta import diff

        assert self.before is not None
        self._after = after
        self._delta = diff(self.before, after)

    def _note_wrapper(self) -> None:
        """Note when the process measured alone is a wrapper: its descendants hold more memory than it does."""
        from .tree import descendants_rss

        held, pids = descendants_rss(self.pid)
        if held > self.after.rss:
            # "nginx: master process": programs that set their title end the name with a colon
            name = os.path.basename(self.after.command.split(" ", 1)[0]).rstrip(":") or f"pid {self.pid}"
            count = plural(len(pids), "descendant")
            self.notes.append(f"measured `{name}`; its children hold {format_size(held)} ({count}, RSS): use tree=True")

    @property
    def finished(self) -> bool:
        return self._delta is not None

    @property
    def after(self) -> Snapshot:
        """The snapshot taken when the block ended."""
        if self._after is None:
            raise PagewalkError("the measurement is still running: 'after' exists once its block has ended", self.pid)
        return self._after

    @property
    def delta(self) -> Delta:
        """`after - before`."""
        if self._delta is None:
            raise PagewalkError("the measurement is still running: 'delta' exists once its block has ended", self.pid)
        return self._delta

    # --- values and verdicts ----------------------------------------------------------------------------

    def value(self, metric: str) -> int:
        """The measured value of `metric` (a name in `METRICS`), in bytes."""
        spec = METRICS.get(metric)
        if spec is None:
            raise ValueError(f"unknown metric {metric!r}; known metrics: {', '.join(METRICS)}")
        delta = self.delta
        measured: int | None
        if metric == "written":
            measured = None if delta.written is None else delta.written + (delta.written_new_regions or 0)
        elif metric in ("accessed", "accessed_anon", *_PEAK_METRICS) or spec.growth:
            measured = getattr(delta, metric)
        else:
            measured = getattr(self.after, metric)
        if measured is None:
            raise NotMeasured(self._not_measured(spec), self.pid)
        return int(measured)

    def _not_measured(self, spec: Metric) -> str:
        if spec.name in _PEAK_METRICS:
            why = next(
                (note for note in self.delta.before.notes if "peak" in note), "its high-water mark was not reset"
            )
            return f"{spec.title} of {_who(self.label, self.pid)} is unknown: {why}"
        if spec.needs is not None:
            return f"{spec.title} was not measured: pass {spec.needs}=True when measuring {_who(self.label, self.pid)}"
        return f"{spec.title} of {_who(self.label, self.pid)} is unknown on this kernel"

    @property
    def peak_rss(self) -> int | None:
        """The highest RSS during the block (bytes), from the kernel's high-water mark; None when it could not be
        reset. For a tree, the sum of each process's peak: an upper bound, as they need not peak together."""
        return self.delta.peak_rss

    @property
    def peak_rss_growth(self) -> int | None:
        """`peak_rss` minus the RSS when the block started."""
        return self.delta.peak_rss_growth

    def flags_gained(self, flag: str) -> int:
        """How many pages gained page flag `flag` (a name in `FLAG_NAMES`) during the block."""
        (name,) = _parse_flag_names(flag)
        gained = self.delta.flags_gained
        if gained is None:
            raise NotMeasured(
                f"page flags were not read: pass flags=True when measuring {_who(self.label, self.pid)}", self.pid
            )
        if name not in gained:  # withheld: this kernel misreports it
            from .capabilities import capabilities

            reason = capabilities().missing_for_flag(name) or "this kernel does not report it reliably"
            raise Unsupported(f"page flag {name} of {_who(self.label, self.pid)} is unknown: {reason}", self.pid)
        return int(gained[name])

    def check(self, metric: str, limit: int | str, *, source: str = "assert") -> Verdict:
        """Compare `metric` with `limit`, record the verdict and return it (without raising)."""
        key = f"{metric}_below"
        if key not in LIMIT_KEYS:
            raise ValueError(f"unknown metric {metric!r}; known metrics: {', '.join(METRICS)}")
        limit_bytes = _parse_limit(key, limit)
        measured = self.value(metric)
        passed = measured <= limit_bytes and not self.delta.program_changed  # across an exec nothing compares
        verdict = Verdict(metric, limit_bytes, measured, passed, "bytes", source)
        self.verdicts.append(verdict)
        return verdict

    def check_flag(self, flag: str, *, source: str = "assert") -> Verdict:
        """Check that no page gained `flag`; record the verdict and return it (without raising)."""
        (name,) = _parse_flag_names(flag)
        gained = self.flags_gained(name)
        passed = gained == 0 and not self.delta.program_changed
        verdict = Verdict(f"{_FLAG_PREFIX}{name}", 0, gained, passed, "pages", source)
        self.verdicts.append(verdict)
        return verdict

    def check_limits(self, limits: Limits, *, source: str) -> list[Verdict]:
        """Check every limit of `limits`; record and return the verdicts."""
        verdicts = [self.check(metric, limit, source=source) for metric, limit in limits.below.items()]
        verdicts += [self.check_flag(flag, source=source) for flag in limits.no_flag_gain]
        return verdicts

    def enforce(self, limits: Limits, *, source: str) -> list[Verdict]:
        """Check every limit of `limits`, then raise `MemoryLimitExceeded` for the first one exceeded."""
        __tracebackhide__ = True
        verdicts = self.check_limits(limits, source=source)
        self._raise_if_failed(verdicts)
        return verdicts

    def _raise_if_failed(self, verdicts: Iterable[Verdict]) -> None:
        __tracebackhide__ = True  # pytest shows the caller's assertion line, not this frame
        for verdict in verdicts:
            if not verdict.passed:
                raise self.failure(verdict)

    def failure(self, verdict: Verdict) -> MemoryLimitExceeded:
        """The exception that reports `verdict` as exceeded, with the details of this measurement."""
        return MemoryLimitExceeded(
            verdict.metric,
            verdict.limit,
            verdict.measured,
            self.label,
            self.pid,
            self.details(verdict),
            verdict.unit,
            self.delta.notes[0] if self.delta.program_changed else "",
        )

    def _assert(self, metric: str, limit: int | str) -> Verdict:
        __tracebackhide__ = True
        verdict = self.check(metric, limit)
        self._raise_if_failed([verdict])
        return verdict

    def assert_uss_below(self, limit: int | str) -> Verdict:
        """USS (memory only this process maps) after the block is at most `limit`."""
        __tracebackhide__ = True
        return self._assert("uss", limit)

    def assert_rss_below(self, limit: int | str) -> Verdict:
        """RSS (resident memory) after the block is at most `limit`."""
        __tracebackhide__ = True
        return self._assert("rss", limit)

    def assert_pss_below(self, limit: int | str) -> Verdict:
        """PSS (shared pages divided among their sharers) after the block is at most `limit`; needs counts=True."""
        __tracebackhide__ = True
        return self._assert("pss", limit)

    def assert_swap_below(self, limit: int | str) -> Verdict:
        """Swapped-out memory after the block is at most `limit`."""
        __tracebackhide__ = True
        return self._assert("swap", limit)

    def assert_anon_below(self, limit: int | str) -> Verdict:
        """Resident anonymous memory (heap, stacks, anonymous maps) after the block is at most `limit`."""
        __tracebackhide__ = True
        return self._assert("anon", limit)

    def assert_uss_growth_below(self, limit: int | str) -> Verdict:
        """USS grew by at most `limit` during the block."""
        __tracebackhide__ = True
        return self._assert("uss_growth", limit)

    def assert_rss_growth_below(self, limit: int | str) -> Verdict:
        """RSS grew by at most `limit` during the block."""
        __tracebackhide__ = True
        return self._assert("rss_growth", limit)

    def assert_anon_growth_below(self, limit: int | str) -> Verdict:
        """Resident anonymous memory grew by at most `limit` during the block.

        Unlike USS, it does not move when other processes map or unmap the same library pages, so it suits
        tight limits on what the process itself allocates.
        """
        __tracebackhide__ = True
        return self._assert("anon_growth", limit)

    def assert_written_below(self, limit: int | str) -> Verdict:
        """At most `limit` of memory was written during the block (new mappings count whole); needs writes=True."""
        __tracebackhide__ = True
        return self._assert("written", limit)

    def assert_accessed_below(self, limit: int | str) -> Verdict:
        """At most `limit` of memory was accessed during the block; needs accessed=True."""
        __tracebackhide__ = True
        return self._assert("accessed", limit)

    def assert_accessed_anon_below(self, limit: int | str) -> Verdict:
        """At most `limit` of anonymous memory (heap, stacks, anonymous maps) was accessed during the block;
        needs accessed=True. Only this process can mark these pages, unlike the page cache `accessed` counts."""
        __tracebackhide__ = True
        return self._assert("accessed_anon", limit)

    def assert_uss_file_below(self, limit: int | str) -> Verdict:
        """The file-backed part of USS (page cache and shared memory only this process maps) is at most `limit`."""
        __tracebackhide__ = True
        return self._assert("uss_file", limit)

    def assert_uss_file_growth_below(self, limit: int | str) -> Verdict:
        """The file-backed part of USS grew by at most `limit` during the block."""
        __tracebackhide__ = True
        return self._assert("uss_file_growth", limit)

    def assert_peak_rss_below(self, limit: int | str) -> Verdict:
        """The highest RSS during the block is at most `limit` (it catches memory freed before the block ended)."""
        __tracebackhide__ = True
        return self._assert("peak_rss", limit)

    def assert_peak_rss_growth_below(self, limit: int | str) -> Verdict:
        """The highest RSS during the block exceeds the RSS at its start by at most `limit`."""
        __tracebackhide__ = True
        return self._assert("peak_rss_growth", limit)

    def assert_shared_with_parent_above(self, fraction: float) -> dict[int, float]:
        """Every process of a tree measurement (but its root) still shares at least `fraction` (0 to 1) of its
        resident memory with its parent, as the same frames: a pre-fork server's workers keep their parent's
        pages (gunicorn --preload, gc.freeze()). Needs tree=True and visible PFNs (root). Returns pid -> share."""
        __tracebackhide__ = True
        if not 0 <= fraction <= 1:
            raise ValueError(f"fraction must be between 0 and 1, not {fraction!r}")
        from .tree import TreeSnapshot

        after = self.after
        if not isinstance(after, TreeSnapshot):
            raise NotMeasured(
                f"sharing with the parent needs a tree: measure {_who(self.label, self.pid)} with tree=True"
            )
        if after.shared_with_parent is None:
            raise NotMeasured(
                f"sharing with the parent of {_who(self.label, self.pid)} is unknown: it needs visible PFNs and page "
                "counts (CAP_SYS_ADMIN)",
                self.pid,
            )
        shares = {
            pid: shared / after.processes[pid].rss if after.processes[pid].rss else 1.0
            for pid, shared in after.shared_with_parent.items()
        }
        low = {pid: share for pid, share in shares.items() if share < fraction}
        if low:
            listed = ", ".join(
                f"pid {pid} ({after.processes[pid].command[:40]}) {share:.0%}" for pid, share in sorted(low.items())
            )
            raise SharingBelow(
                f"processes of {_who(self.label, self.pid)} share less than {fraction:.0%} of their RSS with "
                f"their parent: {listed}"
            )
        return shares

    def assert_no_flag_gain(self, *flags: str) -> list[Verdict]:
        """No page gained any of the page flags `flags` ("THP", "KSM", "SWAPPED", ...); needs flags=True."""
        __tracebackhide__ = True
        if not flags:
            raise ValueError(f"name at least one page flag; known flags: {', '.join(FLAG_NAMES)}")
        verdicts = [self.check_flag(flag) for flag in flags]
        self._raise_if_failed(verdicts)
        return verdicts

    # --- describing -------------------------------------------------------------------------------------

    def describe(self) -> str:
        """`USS 9.0 MiB -> 9.4 MiB (+412.0 KiB)`."""
        delta = self.delta
        change = format_size(delta.uss_growth, signed=True)
        return f"USS {format_size(delta.before.uss)} -> {format_size(delta.after.uss)} ({change})"

    def details(self, verdict: Verdict | None = None, *, top: int = _DETAIL_ROWS) -> str:
        """Several lines: the verdict's message, totals before and after, and the regions that contributed most."""
        lines = []
        if verdict is not None:
            lines.append(
                limit_message(verdict.metric, verdict.limit, verdict.measured, self.label, self.pid, verdict.unit)
            )
        delta = self.delta
        totals = [self.describe(), f"RSS {format_size(delta.after.rss)} ({format_size(delta.rss_growth, signed=True)})"]
        if delta.written is not None:
            totals.append(f"written {format_size(self.value('written'))}")
        if delta.accessed is not None:
            totals.append(f"accessed {format_size(delta.accessed)} (anonymous {format_size(delta.accessed_anon or 0)})")
        if delta.peak_rss is not None:
            totals.append(f"peak RSS {format_size(delta.peak_rss)}")
        lines.append("; ".join(totals))
        lines.extend(f"note: {note}" for note in (*delta.notes, *self.notes))
        if verdict is not None and (file_note := self._file_part_note(verdict)):
            lines.append(f"note: {file_note}")
        metric = verdict.metric if verdict is not None else "uss_growth"
        spec = METRICS.get(metric)
        if spec is not None and not spec.growth and spec.needs is None and metric not in _PEAK_METRICS:
            lines.extend(self._level_table(spec, top))
        else:
            column = spec.region_column if spec is not None else "uss_growth"
            lines.extend(self._change_table(column, top))
        return "\n".join(lines)

    def _file_part_note(self, verdict: Verdict) -> str | None:
        """Why a USS limit failed when its page cache part alone took it over: other processes move that part."""
        part = FILE_PARTS.get(verdict.metric)
        if part is None or verdict.passed:
            return None
        file_bytes = self.value(part)
        if file_bytes <= 0 or verdict.measured - file_bytes > verdict.limit:
            return None
        anon = "anon_growth" if METRICS[verdict.metric].growth else "anon"
        return (
            f"{format_size(file_bytes)} of it ({part}) is page cache and shared memory that only this process maps "
            f"at the moment: other processes move it by mapping or unmapping the same files (another instance of "
            f"the same program, say); without it the limit holds. Limit {anon} for what the process itself allocates"
        )

    def _change_table(self, column: str, top: int) -> list[str]:
        regions = self.delta.top_regions(column, top)
        if not regions:
            return [f"no region changed its {column.replace('_', ' ')}"]
        title = column.replace("_", " ")
        signed = column.endswith("_growth")
        rows = [
            (
                size_cell(getattr(region, column) or 0, signed=signed),
                region.status,
                region.kind,
                f"{region.start:012x}-{region.end:012x}",  # tells identical [anon] rows apart
                region.name,
            )
            for region in regions
        ]
        return [
            f"regions that contributed most to {title}:",
            *table((title, "status", "kind", "address", "name"), rows, right={0}, indent="  "),
        ]

    def _level_table(self, spec: Metric, top: int) -> list[str]:
        changes: dict[tuple[int, str], RegionDelta] = {(r.start, r.name): r for r in self.delta.regions}
        ranked: list[Region] = sorted(self.after.regions, key=lambda r: getattr(r, spec.name) or 0, reverse=True)
        ranked = [region for region in ranked[:top] if getattr(region, spec.name)]
        if not ranked:
            return [f"no region holds any {spec.title}"]
        rows = []
        for region in ranked:
            change = changes.get((region.start, region.name))
            growth = getattr(change, spec.region_column, None) if change is not None else None
            held, change_text = size_cell(getattr(region, spec.name) or 0), size_cell(growth, signed=True)
            rows.append((held, change_text, region.kind, f"{region.start:012x}-{region.end:012x}", region.name))
        header = (spec.title, "change", "kind", "address", "name")
        return [f"regions holding the most {spec.title}:", *table(header, rows, right={0, 1}, indent="  ")]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: totals before and after, the changes, the options and the verdicts."""
        delta = self.delta
        levels = ("rss", "uss", "uss_file", "pss", "swap", "anon")
        return {
            "pid": self.pid,
            "label": self.label,
            "options": {
                "writes": self.writes,
                "accessed": self.accessed,
                "flags": self.flags,
                "counts": self.counts,
                "tree": self.tree,
            },
            "seconds": delta.seconds,
            "before": {name: getattr(delta.before, name) for name in levels},
            "after": {name: getattr(delta.after, name) for name in levels},
            "delta": {
                "uss_growth": delta.uss_growth,
                "rss_growth": delta.rss_growth,
                "pss_growth": delta.pss_growth,
                "swap_growth": delta.swap_growth,
                "anon_growth": delta.anon_growth,
                "written": None if delta.written is None else self.value("written"),
                "accessed": delta.accessed,
                "accessed_anon": delta.accessed_anon,
                "peak_rss": delta.peak_rss,
                "peak_rss_growth": delta.peak_rss_growth,
                "flags_gained": None
                if delta.flags_gained is None
                else {name: pages for name, pages in delta.flags_gained.items() if pages},
            },
            "verdicts": [verdict.to_dict() for verdict in self.verdicts],
            "notes": list(self.notes),
            "processes": len(getattr(self.after, "processes", None) or (self.pid,)),
        }


@contextlib.contextmanager
def measure(
    pid: int,
    *,
    label: str | None = None,
    writes: bool = False,
    accessed: bool = False,
    flags: bool = False,
    counts: bool = False,
    freeze: bool = True,
    tree: bool = False,
) -> Iterator[Measurement]:
    """Measure process `pid` around the block: snapshot before (starting tracking), run it, snapshot after.

    `writes=True` counts the memory written during the block (soft-dirty; raises `Unsupported` naming
    CONFIG_MEM_SOFT_DIRTY on kernels without it), `accessed=True` the memory accessed, `flags=True` reads
    page flags for `assert_no_flag_gain`, `counts=True` reads page counts for PSS; the last two need
    CAP_SYS_ADMIN. `label` names the process in messages (default: its command line). When the block raises,
    the exception propagates and no `after` snapshot is taken. `tree=True` measures `pid` and all its
    descendants, stopped together. The RSS high-water mark is reset at the start: `m.peak_rss`.
    """
    measurement = Measurement(pid, label=label, writes=writes, accessed=accessed, flags=flags, counts=counts, tree=tree)
    measurement.start(freeze=freeze)
    yield measurement
    measurement.stop(freeze=freeze)
