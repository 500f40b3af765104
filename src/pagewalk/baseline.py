"""Session records of measurements, stored as readable JSON baselines with the context that makes them fair.

A record holds every measurement of a session (test id, label, metrics in bytes) and the context:
kernel release, architecture, page size, Python version, capabilities, git commit and branch. Records are
written atomically (a temporary file renamed into place) and never overwritten unless asked.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import platform
import re
import secrets
import stat
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .capabilities import capabilities
from .errors import PagewalkError
from .measure import METRICS, Measurement, NotMeasured
from .record_format import (
    REPORT_SCHEMA,
    SESSION_SCHEMA,
    SESSION_VERSION,
    FormatFault,
    read_document,
    validate_measurement,
)

__all__ = [
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
    "record_from_bytes",
    "records_of_test",
    "resolve_record",
    "save_record",
    "write_json_atomic",
    "write_report_file",
    "write_text_atomic",
]

SCHEMA = SESSION_SCHEMA
SCHEMA_VERSION = SESSION_VERSION
LOCK_NAME = ".lock"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", re.ASCII)
_RECORD_FILE = re.compile(r"^[0-9]{4}_.+\.json$", re.ASCII)
_CONTEXT_KEYS_THAT_MATTER = ("kernel", "machine", "page_size")
# What a record keeps of each measurement, in bytes (None when not measured); smaller is better for all.
RECORDED_METRICS = tuple(METRICS)
KEY_SEPARATOR = " > "  # between a test id and a measurement's label, when a test measures several times
MAX_RECORD_BYTES = 256 << 20  # a record of 20,000 measurements takes about 10 MiB
# Temporary files are named after their target and their writer's pid, so a dead writer's can be told apart.
_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.(?P<pid>[0-9]{1,10})\.[0-9a-f]{8}\.tmp$")
_LEGACY_TEMPORARY = re.compile(r"^\.(?P<target>[0-9]{4}_.+\.json)\.[a-z0-9_]{8}\.tmp$")  # mkstemp's, unowned
_LEGACY_TEMPORARY_AGE = 3600.0  # seconds after which an unowned temporary file cannot be a live save's


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
        """A measurement from its `to_dict` form; a `ValueError` (a `FormatFault`) saying what is wrong."""
        return cls._from_valid(validate_measurement(dict(data) if isinstance(data, Mapping) else data, "measurement"))

    @classmethod
    def _from_valid(cls, entry: Mapping[str, Any]) -> MeasurementRecord:
        """From an entry the strict reader has checked and completed."""
        return cls(
            key=entry["key"], test=entry["test"], label=entry["label"], metrics=entry["metrics"], repeat=entry["repeat"]
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
        # Where THP is "always", anonymous memory faults in huge pages and khugepaged fills ranges in.
        mine, theirs = (recorded_capability(record.context, "thp_mode") for record in (self, other))
        if mine != theirs and mine is not _UNRECORDED and theirs is not _UNRECORDED:
            mine, theirs = (mode or "not built in" for mode in (mine, theirs))
            differences.append(f"transparent huge pages: {theirs} (baseline) vs {mine} (now)")
        return differences


_UNRECORDED = object()


def recorded_capability(context: Mapping[str, Any], name: str) -> Any:
    """A capability a record's context holds, or `_UNRECORDED` (a record from before it was recorded)."""
    capabilities = context.get("capabilities")
    return capabilities.get(name, _UNRECORDED) if isinstance(capabilities, Mapping) else _UNRECORDED


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


def _read_bytes(path: Path) -> bytes:
    """The file's bytes: refused, without blocking, when it is a FIFO, a device or too large to be a record."""
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _problem(path, "no such file") from None
    except OSError as exc:
        raise _problem(path, f"cannot be read ({exc.strerror})") from None
    info = os.fstat(handle)
    if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_RECORD_BYTES:
        os.close(handle)
        if not stat.S_ISREG(info.st_mode):
            raise _problem(path, f"is {_file_kind(info.st_mode)}, not a regular file")
        raise _problem(path, f"is {info.st_size} bytes, more than a record can be ({MAX_RECORD_BYTES})")
    with os.fdopen(handle, "rb") as stream:
        try:
            data = stream.read(MAX_RECORD_BYTES + 1)
        except OSError as exc:
            raise _problem(path, f"cannot be read ({exc.strerror})") from None
    if len(data) > MAX_RECORD_BYTES:
        raise _problem(path, f"grew beyond {MAX_RECORD_BYTES} bytes while it was read")
    return data


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symbolic link"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def record_from_bytes(data: bytes, path: str | os.PathLike[str]) -> SessionRecord:
    """The session record in `data` (a stored record, or a `--pagemap-json` report, which holds one), read by
    the strict reader; every fault is a `BaselineError` naming `path`, the JSON path and what is wrong."""
    try:
        document = read_document(data, (SESSION_SCHEMA, REPORT_SCHEMA))
    except FormatFault as fault:
        where = f"at {fault.where}: " if fault.where else ""
        raise _problem(Path(path), f"{where}{fault.what} (repair the file, or save a new baseline)") from None
    measurements = tuple(MeasurementRecord._from_valid(entry) for entry in document["measurements"])
    return SessionRecord(
        context=document["context"], measurements=measurements, created=document["created"], path=Path(path)
    )


def load_record(path: str | os.PathLike[str]) -> SessionRecord:
    """Read and validate a stored record; every problem is a `BaselineError` naming the file and the fault."""
    path = Path(path)
    return record_from_bytes(_read_bytes(path), path)


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
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"baseline name {name!r} may hold only letters, digits, '.', '-' and '_'")
    return name


def default_name(context: Mapping[str, Any]) -> str:
    git = context.get("git")
    commit = git.get("commit") if isinstance(git, Mapping) else None
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{commit[:12]}_{stamp}" if isinstance(commit, str) and _NAME_RE.fullmatch(commit[:12]) else stamp


def _free_default_name(storage: Path, context: Mapping[str, Any]) -> str:
    """The default name, with `-2`, `-3`... when sessions saved in the same second: called under the lock."""
    base = default_name(context)
    taken = {path.stem.split("_", 1)[1] for path in _records(storage)}
    name, number = base, 1
    while name in taken:
        number += 1
        name = f"{base}-{number}"
    return name


def check_can_save(storage: str | os.PathLike[str], name: str | None, *, overwrite: bool = False) -> Path | None:
    """Where a record named `name` exists in `storage` (None if nowhere); a `BaselineError` if it exists and
    `overwrite` is false, or if `storage` is not a directory. Run before a session to fail early."""
    storage = Path(storage)
    if storage.exists() and not storage.is_dir():
        raise BaselineError(f"baseline storage {storage} is not a directory")
    with contextlib.suppress(FileNotFoundError):
        lock_mode = os.lstat(storage / LOCK_NAME).st_mode
        if not stat.S_ISREG(lock_mode):
            raise BaselineError(
                f"the lock file {storage / LOCK_NAME} is {_file_kind(lock_mode)}, not a regular file: remove it"
            )
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
    if name:
        check_name(name)
    storage.mkdir(parents=True, exist_ok=True)
    with _locked(storage):  # sessions saving into one folder at once get distinct numbers and names
        _remove_stale_temporaries(storage)
        name = name or _free_default_name(storage, record.context)
        target = check_can_save(storage, name, overwrite=overwrite)
        if target is None:
            numbers = [int(path.name[:4]) for path in _records(storage)]
            target = storage / f"{(max(numbers) + 1 if numbers else 1):04d}_{name}.json"
        write_json_atomic(target, record.to_dict())
    return target


def _open_plain_file(path: Path, flags: int, what: str) -> int:
    """Open (or create) `path` without following a symbolic link or blocking on a FIFO or device, and refuse
    anything but a regular file: a planted link or FIFO must not redirect or hang a save."""
    try:
        handle = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BaselineError(f"{what} {path} is a symbolic link, which is not followed: remove it") from None
        if exc.errno in (errno.ENXIO, errno.ENODEV, errno.EWOULDBLOCK):
            raise BaselineError(f"{what} {path} is not a regular file (a FIFO, socket or device): remove it") from None
        if exc.errno == errno.EISDIR:
            raise BaselineError(f"{what} {path} is a directory, not a regular file: remove it") from None
        raise
    mode = os.fstat(handle).st_mode
    if not stat.S_ISREG(mode):
        os.close(handle)
        raise BaselineError(f"{what} {path} is {_file_kind(mode)}, not a regular file: remove it")
    return handle


@contextlib.contextmanager
def _locked(storage: Path) -> Iterator[None]:
    """Hold an exclusive lock on `storage` (a hidden `.lock` file in it) for the block."""
    import fcntl  # here: importing this module must work where fcntl does not exist

    handle = _open_plain_file(storage / LOCK_NAME, os.O_RDWR | os.O_CREAT, "the lock file")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield
    finally:
        os.close(handle)


def _writer_is_gone(pid: int) -> bool:
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False  # alive as another user's process; or not a pid this kernel has: leave it be
    return False


def _remove_stale_temporaries(directory: Path, target: str | None = None) -> None:
    """Remove the temporary files that writers of `directory`'s records (or of `target` alone) left when they
    were killed: named for a process that is gone, or made by older versions and older than an hour."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    now = time.time()
    for entry in entries:
        if not entry.name.endswith(".tmp"):
            continue
        owned, legacy = _TEMPORARY.match(entry.name), _LEGACY_TEMPORARY.match(entry.name)
        match = owned or legacy
        if match is None or (target is not None and match.group("target") != target):
            continue
        if target is None and not _RECORD_FILE.match(match.group("target")):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        stale = _writer_is_gone(int(owned.group("pid"))) if owned else now - info.st_mtime > _LEGACY_TEMPORARY_AGE
        if stale and stat.S_ISREG(info.st_mode):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


def _create_temporary(target: Path) -> tuple[int, Path]:
    """A new temporary file beside `target`, named for it and for this process; created as `open` would
    (0666 less the umask), never through a symbolic link or onto a FIFO."""
    for _ in range(100):
        temporary = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            return _open_plain_file(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, "the temporary file"), temporary
        except FileExistsError:
            continue
    raise BaselineError(f"cannot create a temporary file beside {target}: every name tried exists")


def write_json_atomic(target: Path, data: Any) -> None:
    """Write standard JSON (no NaN or Infinity) to a temporary file beside `target`, flush it to disk, then
    rename it into place. Temporary files that killed writers of `target` left are removed first."""
    write_text_atomic(target, json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")


def write_text_atomic(target: Path, text: str) -> None:
    """Write text to a temporary file beside `target`, flush it to disk, then rename it into place; temporary
    files that killed writers of `target` left are removed first."""
    _remove_stale_temporaries(target.parent, target.name)
    handle, temporary = _create_temporary(target)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_report_file(path: Path, text: str) -> None:
    """Write a report to a path the user named: a regular file (or a new one) is replaced atomically; a
    symbolic link or a device (/dev/stdout, a FIFO) is written through, as any program would, and stays."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        with open(path, "w", encoding="utf-8") as stream:
            stream.write(text)
        return
    write_text_atomic(path, text)


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
    test: str, measured: Sequence[tuple[str | None, str, Mapping[str, int | None]]]
) -> list[MeasurementRecord]:
    """The records of one test's measurements, given as `(name, display label, metrics)` in the order they
    were made; `name` is the label the test gave, or None.

    A test's only measurement is keyed by the test id. Of several, a named one is keyed `TEST > NAME` (a name
    used again gets ` #2`, ` #3`...), an unnamed one `TEST > #N` by its position in the test: never by its
    command line, which holds ports, temporary paths and process titles that change from run to run.
    """
    if len(measured) == 1:
        _, display, metrics = measured[0]
        return [MeasurementRecord(key=test, test=test, label=display, metrics=dict(metrics))]
    records = []
    seen: dict[str, int] = {}
    for position, (name, display, metrics) in enumerate(measured, start=1):
        if name:
            seen[name] = seen.get(name, 0) + 1
            suffix = name + (f" #{seen[name]}" if seen[name] > 1 else "")
        else:
            suffix = f"#{position}"
        key = f"{test}{KEY_SEPARATOR}{suffix}"
        records.append(MeasurementRecord(key=key, test=test, label=display, metrics=dict(metrics)))
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
