"""Processes a test measures: commands started in their own process group, and processes attached to by pid.

A spawned command's output goes to files (never pipes, so a chatty process cannot block on a full pipe),
readable at any time; `stop()` ends its whole process group, and any descendant that left the group, with
SIGTERM and then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeAlias

import psutil

from pagewalk._present import tail
from pagewalk.measure import default_label

__all__ = [
    "AttachedProcess",
    "ProcessNotReady",
    "Ready",
    "SpawnedProcess",
    "end_process_tree",
]

# What `spawn(ready=...)` accepts: see `SpawnedProcess.wait_ready`.
Ready: TypeAlias = "Callable[[], object] | str | re.Pattern[str] | int | tuple[str, int] | os.PathLike[str] | None"

_POLL_SECONDS = 0.02


class ProcessNotReady(Exception):
    """A spawned process did not become ready in time, or exited before it did; the message holds its output."""


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


class _LineScanner:
    """Reads the complete lines a file gained since the last call, so a regex never sees half a line."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0
        self._partial = b""

    def new_lines(self) -> list[str]:
        try:
            with self._path.open("rb") as stream:
                stream.seek(self._offset)
                chunk = stream.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        *complete, self._partial = (self._partial + chunk).split(b"\n")
        return [line.decode("utf-8", "replace").rstrip("\r") for line in complete]


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _running(process: psutil.Process) -> bool:
    """Still running: not gone, and not a zombie waiting for a parent (maybe not us) to reap it."""
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(process.pid) == pgid and _running(process):
                members.append(process)
    return members


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def _signal_all(pgid: int, processes: Sequence[psutil.Process], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signum)


def _wait_ended(
    popen: subprocess.Popen[bytes], others: Sequence[psutil.Process], seconds: float
) -> list[psutil.Process]:
    """Wait up to `seconds` for the leader and `others` to end; return those of `others` still running."""
    deadline = time.monotonic() + seconds
    while True:
        leader_done = popen.poll() is not None  # reaps the leader, our child
        alive = [process for process in others if _running(process)]
        if (leader_done and not alive) or time.monotonic() >= deadline:
            return alive
        time.sleep(_POLL_SECONDS)


def end_process_tree(popen: subprocess.Popen[bytes], grace: float) -> int:
    """End the process group led by `popen` and every descendant: SIGTERM, then SIGKILL after `grace` seconds.

    Returns the leader's exit status (negative: the signal that ended it).
    """
    pgid = popen.pid  # the leader of a new session leads its process group too
    # Listed before signalling: once the leader is gone its children are reparented and harder to find.
    others = {process.pid: process for process in _descendants(popen.pid) + _group_members(pgid)}
    others.pop(popen.pid, None)
    tracked = list(others.values())
    _signal_all(pgid, tracked, signal.SIGTERM)
    _signal_all(pgid, tracked, signal.SIGCONT)  # a stopped process acts on SIGTERM only once continued
    alive = _wait_ended(popen, tracked, grace)
    if popen.returncode is None or alive or _group_members(pgid):
        _signal_all(pgid, alive, signal.SIGKILL)
        popen.kill()
        popen.wait()
        _wait_ended(popen, alive, grace)
    return popen.returncode


class SpawnedProcess:
    """A command started by `pagemap.spawn`, in its own session and process group, with its output captured.

    `stdout` and `stderr` hold the output so far; `returncode` is None while it runs; `stop()` ends it and
    everything it started. The fixture stops it at the end of the test in any case.
    """

    def __init__(
        self,
        command: str | Sequence[str | os.PathLike[str]],
        *,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        grace: float = 5.0,
    ) -> None:
        self.argv = shlex.split(command) if isinstance(command, str) else [os.fspath(arg) for arg in command]
        if not self.argv:
            raise ValueError("spawn() needs a command: got an empty one")
        self.label = default_label(shlex.join(self.argv))
        self.grace = grace
        self.stdout_path = log_dir / "stdout.txt"
        self.stderr_path = log_dir / "stderr.txt"
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.popen: subprocess.Popen[bytes] = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=environment,
                cwd=cwd,
                start_new_session=True,
            )
        self.pid = self.popen.pid
        self._scanners = (_LineScanner(self.stdout_path), _LineScanner(self.stderr_path))

    def __repr__(self) -> str:
        state = "running" if self.returncode is None else f"exited {self.returncode}"
        return f"<SpawnedProcess pid {self.pid} {self.label!r}: {state}>"

    @property
    def stdout(self) -> str:
        """Everything the process wrote to standard output so far."""
        return _read_text(self.stdout_path)

    @property
    def stderr(self) -> str:
        """Everything the process wrote to standard error so far."""
        return _read_text(self.stderr_path)

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has ended (negative: the signal that ended it), else None."""
        return self.popen.poll()

    def output_report(self) -> str:
        """The last lines of both streams, indented, for failure messages."""
        return (
            f"  stdout ({self.stdout_path}):\n{tail(self.stdout)}\n  stderr ({self.stderr_path}):\n{tail(self.stderr)}"
        )

    def stop(self) -> int:
        """End the process, its process group and its descendants (SIGTERM, then SIGKILL); return its status."""
        return end_process_tree(self.popen, self.grace)

    # --- readiness --------------------------------------------------------------------------------------

    def wait_ready(self, ready: Ready, timeout: float) -> None:
        """Wait until `ready` holds, raising `ProcessNotReady` with the output on timeout or early exit.

        `ready` is a callable returning truthy (an `OSError` it raises counts as not yet), a regex (str or
        compiled) searched in each complete line of stdout and stderr, a TCP port number or `(host, port)` accepting
        connections, or a `pathlib.Path` that appears. None returns at once.
        """
        if ready is None:
            return
        check, waiting_for = self._readiness_check(ready)
        deadline = time.monotonic() + timeout
        while True:
            if check():
                return
            status = self.returncode
            if status is not None:
                raise ProcessNotReady(
                    f"{self.label!r} (pid {self.pid}) exited with status {status} before it was ready "
                    f"(waiting for {waiting_for})\n{self.output_report()}"
                )
            if time.monotonic() >= deadline:
                raise ProcessNotReady(
                    f"{self.label!r} (pid {self.pid}) was not ready after {timeout:g} s "
                    f"(waiting for {waiting_for})\n{self.output_report()}"
                )
            time.sleep(_POLL_SECONDS)

    def _readiness_check(self, ready: Ready) -> tuple[Callable[[], bool], str]:
        if isinstance(ready, bool):
            raise TypeError("ready=True/False is ambiguous: pass a callable, a regex, a port or a pathlib.Path")
        if isinstance(ready, (str, re.Pattern)):
            pattern = re.compile(ready)
            return (lambda: self._output_matches(pattern)), f"output matching {pattern.pattern!r}"
        if isinstance(ready, int):
            port = ready
            return (lambda: _port_open("127.0.0.1", port)), f"TCP port {port} on 127.0.0.1"
        if isinstance(ready, tuple):
            host, port = ready
            return (lambda: _port_open(host, port)), f"TCP port {port} on {host}"
        if isinstance(ready, os.PathLike):
            path = Path(ready)
            return path.exists, f"the file {path}"
        if callable(ready):
            condition = ready

            def call_condition() -> bool:
                try:
                    return bool(condition())
                except OSError:
                    return False

            return call_condition, f"{getattr(condition, '__qualname__', repr(condition))}() to return true"
        raise TypeError(f"ready={ready!r}: expected a callable, a regex, a port, (host, port) or a pathlib.Path")

    def _output_matches(self, pattern: re.Pattern[str]) -> bool:
        # Every scanner reads its new lines on each call, so no line is skipped by a match in the other stream.
        matched = [any(pattern.search(line) for line in scanner.new_lines()) for scanner in self._scanners]
        return any(matched)


class AttachedProcess:
    """A process the test started itself, given to `pagemap.attach(pid)`; the fixture never ends it."""

    def __init__(self, pid: int) -> None:
        if not psutil.pid_exists(pid):
            raise ProcessLookupError(f"attach({pid}): no process has pid {pid}")
        self.pid = pid

    @property
    def label(self) -> str:
        """The process's command line, shortened; read when asked, as a process just forked has not exec'd yet."""
        try:
            command = " ".join(psutil.Process(self.pid).cmdline())
        except psutil.Error:
            command = ""
        return default_label(command) if command else f"pid {self.pid}"

    def __repr__(self) -> str:
        return f"<AttachedProcess pid {self.pid} {self.label!r}>"
