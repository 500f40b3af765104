"""Session records of measurements, stored as readable JSON baselines with the context that makes them fair.

A record holds every measurement of a session (test id, label, metrics in bytes) and the context:
kernel release, architecture, page size, Python version, capabilities, git commit and branch. Records are
written atomically (a temporary file renamed into place) and never overwritten unless asked.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .capabilities import capabilities
from .errors import PagewalkError
from .measure import METRICS, Measurement, NotMeasured
from .procfs import status_field

__all__ = [
    "DEFAULT_STORAGE",
    "RECORDED_METRICS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "BaselineError",
    "MeasurementRecord",
    "SessionRecord",
    "check_can_save",
    "check_name",
    "collect_context",
    "latest_record",
    "load_record",
    "measurement_metrics",
    "median_metrics",
    "merge_repeats",
    "records_of_test",
    "resolve_record",
    "save_record",
    "write_json_atomic",
    "write_text_atomic",
]

SCHEMA = "pytest-pagemap/session"
SCHEMA_VERSION = 1
DEFAULT_STORAGE = ".pagemap"
LOCK_NAME = ".lock"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_CONTEXT_KEYS_THAT_MATTER = ("kernel", "machine", "page_size")
# What a record keeps of each measurement, in bytes (None when not measured); smaller is better for all.
RECORDED_METRICS = tuple(METRICS)
KEY_SEPARATOR = " > "  # between a test id and a measurement's label, when a test measures several times


class BaselineError(PagewalkError):
    """A baseline file is missing, unreadable, corrupt, of another schema, or would be overwritten."""


@dataclass(frozen=True)
class MeasurementRecord:
    """One measurement of one test: `key` is unique in its session (test id, plus label when a test has several)."""

    key: str
    test: str
    label: str
    metrics: Mapping[str, int | None]
    repeat: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "test": self.test,
            "label": self.label,
            "metrics": dict(self.metrics),
            "repeat": self.repeat,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MeasurementRecord:
        if not isinstance(data, Mapping):
            raise ValueError(f"a measurement must be an object, not {type(data).__name__}")
        metrics = data["metrics"]
        if not isinstance(metrics, Mapping) or not all(
            (isinstance(value, int) and not isinstance(value, bool)) or value is None for value in metrics.values()
        ):
            raise ValueError(f"metrics of {data.get('key')!r} must map names to integers or null")
        repeat = data.get("repeat", 1)
        if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
            raise ValueError(f"repeat of {data.get('key')!r} must be a positive integer, not {repeat!r}")
        return cls(
            key=str(data["key"]),
            test=str(data["test"]),
            label=str(data.get("label", "")),
            metrics=dict(metrics),
            repeat=repeat,
        )


@dataclass(frozen=True)
class SessionRecord:
    """The measurements of one test session and the context they were taken in."""

    context: Mapping[str, Any]
    measurements: tuple[MeasurementRecord, ...]
    created: str = field(
        default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    )
    path: Path | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "version": SCHEMA_VERSION,
            "created": self.created,
            "context": dict(self.context),
            "measurements": [m.to_dict() for m in self.measurements],
        }

    def by_key(self) -> dict[str, MeasurementRecord]:
        return {m.key: m for m in self.measurements}

    def context_differences(self, other: SessionRecord) -> list[str]:
        """What differs between the two records' machines in a way that makes comparisons unfair."""
        differences = []
        for key in _CONTEXT_KEYS_THAT_MATTER:
            mine, theirs = self.context.get(key), other.context.get(key)
            if mine != theirs:
                differences.append(f"{key}: {theirs} (baseline) vs {mine} (now)")
        return differences


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def collect_context() -> dict[str, Any]:
    """Kernel, architecture, page size, Python, capabilities, and git commit and branch where available."""
    caps = capabilities()
    commit = _git("rev-parse", "HEAD")
    return {
        "kernel": caps.kernel,
        "machine": caps.machine,
        "page_size": caps.page_size,
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "capabilities": {
            "pfn_visible": caps.pfn_visible,
            "kpageflags": caps.kpageflags,
            "pagemap_scan": caps.pagemap_scan,
            "soft_dirty": caps.soft_dirty,
            "thp_mode": caps.thp_mode,
        },
        "git": {
            "commit": commit,
            "branch": _git("rev-parse", "--abbrev-ref", "HEAD") if commit else None,
            "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")) if commit else None,
        },
    }


def _problem(path: Path, what: str) -> BaselineError:
    return BaselineError(f"baseline {path}: {what}")


def load_record(path: str | os.PathLike[str]) -> SessionRecord:
    """Read and validate a stored record; every problem is a `BaselineError` naming the file and the fault."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _problem(path, "no such file") from None
    except OSError as exc:
        raise _problem(path, f"cannot be read ({exc.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _problem(
            path,
            f"is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "was it truncated? Save a new baseline with --pagemap-save",
        ) from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise _problem(path, f'is not a pytest-pagemap session record (expected "schema": "{SCHEMA}")')
    if data.get("version") != SCHEMA_VERSION:
        raise _problem(
            path,
            f"has schema version {data.get('version')!r}; this pytest-pagemap reads version {SCHEMA_VERSION}: "
            "save a new baseline with --pagemap-save",
        )
    try:
        context = data["context"]
        if not isinstance(context, dict):
            raise ValueError("context must be an object")
        entries = data["measurements"]
        if not isinstance(entries, list):
            raise ValueError("measurements must be a list")
        measurements = tuple(MeasurementRecord.from_dict(entry) for entry in entries)
        keys = [m.key for m in measurements]
        duplicated = sorted({key for key in keys if keys.count(key) > 1})
        if duplicated:
            raise ValueError(f"measurement keys must be unique; repeated: {', '.join(map(repr, duplicated))}")
    except (KeyError, TypeError, ValueError) as exc:
        detail = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
        raise _problem(path, f"is malformed: {detail}") from None
    return SessionRecord(context=context, measurements=measurements, created=str(data.get("created", "")), path=path)


def _records(storage: Path) -> list[Path]:
    return sorted(storage.glob("[0-9][0-9][0-9][0-9]_*.json")) if storage.is_dir() else []


def latest_record(storage: str | os.PathLike[str]) -> Path | None:
    """The most recently saved record in `storage`, by its sequence number."""
    records = _records(Path(storage))
    return records[-1] if records else None


def resolve_record(storage: str | os.PathLike[str], name_or_path: str | None) -> Path:
    """The record `--pagemap-compare` names: the latest when None, a saved name, or a path."""
    storage = Path(storage)
    if name_or_path is None:
        latest = latest_record(storage)
        if latest is None:
            raise BaselineError(
                f"no baseline to compare against: {storage}/ holds no saved record; "
                "run once with --pagemap-save first, or name a file with --pagemap-compare=PATH"
            )
        return latest
    candidate = Path(name_or_path)
    if candidate.is_dir() or candidate.suffix == ".py":
        # `--pagemap-compare tests/` takes the path as the option's value: say so rather than "no baseline".
        raise BaselineError(
            f"{name_or_path!r} is a test path, not a baseline: write --pagemap-compare=NAME (with '='), "
            "or put --pagemap-compare after the test paths to compare with the latest baseline"
        )
    if candidate.suffix == ".json" or os.sep in name_or_path:
        if not candidate.exists():
            raise BaselineError(f"baseline {candidate}: no such file")
        return candidate
    matches = [path for path in _records(storage) if path.stem.split("_", 1)[1] == name_or_path]
    if not matches:
        saved = ", ".join(path.stem.split("_", 1)[1] for path in _records(storage)) or "none"
        raise BaselineError(f"no baseline named {name_or_path!r} in {storage}/ (saved: {saved})")
    return matches[-1]


def check_name(name: str) -> str:
    """Validate a baseline name: letters, digits, dot, dash and underscore."""
    if not _NAME_RE.match(name):
        raise ValueError(f"baseline name {name!r} may hold only letters, digits, '.', '-' and '_'")
    return name


def default_name(context: Mapping[str, Any]) -> str:
    commit = (context.get("git") or {}).get("commit")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{commit[:12]}_{stamp}" if commit else stamp


def check_can_save(storage: str | os.PathLike[str], name: str | None, *, overwrite: bool = False) -> Path | None:
    """Where a record named `name` exists in `storage` (None if nowhere); a `BaselineError` if it exists and
    `overwrite` is false, or if `storage` is not a directory. Run before a session to fail early."""
    storage = Path(storage)
    if storage.exists() and not storage.is_dir():
        raise BaselineError(f"baseline storage {storage} is not a directory")
    if not name:
        return None
    existing = [path for path in _records(storage) if path.stem.split("_", 1)[1] == name]
    if existing and not overwrite:
        raise BaselineError(
            f"a baseline named {name!r} exists ({existing[-1]}): choose another name, or pass "
            "--pagemap-overwrite to replace it"
        )
    return existing[-1] if existing else None


def save_record(
    record: SessionRecord,
    storage: str | os.PathLike[str],
    name: str | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write `record` as `NNNN_NAME.json` in `storage`, atomically. An existing NAME is an error unless
    `overwrite`; unnamed records get the next sequence number and the commit and time as their name."""
    storage = Path(storage)
    name = check_name(name) if name else default_name(record.context)
    storage.mkdir(parents=True, exist_ok=True)
    with _locked(storage):  # sessions saving into one folder at once get distinct numbers and names
        target = check_can_save(storage, name, overwrite=overwrite)
        if target is None:
            numbers = [int(path.name[:4]) for path in _records(storage)]
            target = storage / f"{(max(numbers) + 1 if numbers else 1):04d}_{name}.json"
        write_json_atomic(target, record.to_dict())
    return target


@contextlib.contextmanager
def _locked(storage: Path) -> Iterator[None]:
    """Hold an exclusive lock on `storage` (a hidden `.lock` file in it) for the block."""
    with open(storage / LOCK_NAME, "a", encoding="utf-8") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file closes
        yield


def _umask() -> int:
    """The process's umask, read without changing it (os.umask would, for a moment, in every thread)."""
    try:
        umask = status_field("self", "Umask")  # Linux 4.7+
        return int(umask, 8) if umask else 0o022
    except (PagewalkError, ValueError):
        return 0o022


def write_json_atomic(target: Path, data: Any) -> None:
    """Write JSON to a temporary file beside `target`, flush it to disk, then rename it into place."""
    write_text_atomic(target, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_text_atomic(target: Path, text: str) -> None:
    """Write text to a temporary file beside `target`, flush it to disk, then rename it into place."""
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(handle, 0o666 & ~_umask())  # as `open` would create it: mkstemp makes it private to its owner
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def median_metrics(samples: Iterable[Mapping[str, int | None]]) -> dict[str, int | None]:
    """The per-metric median of repeated measurements (the lower middle value, so it stays an integer)."""
    collected: dict[str, list[int | None]] = {}
    for sample in samples:
        for name, value in sample.items():
            collected.setdefault(name, []).append(value)
    result: dict[str, int | None] = {}
    for name, values in collected.items():
        known = sorted(v for v in values if v is not None)
        result[name] = known[(len(known) - 1) // 2] if known and len(known) == len(values) else None
    return result


def measurement_metrics(measurement: Measurement) -> dict[str, int | None]:
    """The recorded metrics of a finished measurement, in bytes; None for what it did not measure."""
    metrics: dict[str, int | None] = {}
    for metric in RECORDED_METRICS:
        try:
            metrics[metric] = measurement.value(metric)
        except NotMeasured:
            metrics[metric] = None
    return metrics


def records_of_test(
    test: str, measured: Sequence[tuple[str | None, Mapping[str, int | None]]]
) -> list[MeasurementRecord]:
    """The records of one test's measurements, given as `(label, metrics)` in the order they were made.

    A test's only measurement is keyed by the test id; several are keyed `TEST > LABEL`, and a label used
    again gets `#2`, `#3`... in order, so keys are unique and stable while the test measures the same way.
    """
    if len(measured) == 1:
        label, metrics = measured[0]
        return [MeasurementRecord(key=test, test=test, label=label or "", metrics=dict(metrics))]
    records = []
    seen: dict[str, int] = {}
    for label, metrics in measured:
        name = label or "measurement"
        seen[name] = seen.get(name, 0) + 1
        suffix = f" #{seen[name]}" if seen[name] > 1 else ""
        key = f"{test}{KEY_SEPARATOR}{name}{suffix}"
        records.append(MeasurementRecord(key=key, test=test, label=label or "", metrics=dict(metrics)))
    return records


def merge_repeats(runs: Sequence[Sequence[MeasurementRecord]]) -> list[MeasurementRecord]:
    """One record per key from several runs of the same test: the per-metric median, with `repeat` saying
    how many runs measured that key (a run that failed early may have measured fewer)."""
    samples: dict[str, list[MeasurementRecord]] = {}
    for run in runs:
        for record in run:
            samples.setdefault(record.key, []).append(record)
    merged = []
    for key, records in samples.items():
        first = records[0]
        metrics = median_metrics(record.metrics for record in records)
        repeat = sum(record.repeat for record in records)
        merged.append(MeasurementRecord(key=key, test=first.test, label=first.label, metrics=metrics, repeat=repeat))
    return merged
