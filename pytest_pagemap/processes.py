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
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeAlias

import psutil

from pagewalk.freeze import finish_despite_signals
from pagewalk.measure import default_label

__all__ = [
    "AttachedProcess",
    "ProcessEnded",
    "ProcessNotReady",
    "Ready",
    "SpawnFailed",
    "SpawnedProcess",
    "end_process_tree",
    "interrupt_on_sigterm",
]

# What `spawn(ready=...)` accepts: see `SpawnedProcess.wait_ready`.
Ready: TypeAlias = "Callable[[], object] | str | re.Pattern[str] | int | tuple[str, int] | os.PathLike[str] | None"

_POLL_SECONDS = 0.02
_OUTPUT_TAIL_LINES = 40
_TRACK_SECONDS = 0.2  # how often a spawned process's descendants are listed while it runs


class ProcessNotReady(Exception):
    """A spawned process did not become ready in time, or exited before it did; the message holds its output."""


class SpawnFailed(Exception):
    """A command could not be started at all (no such program, not executable)."""


class ProcessEnded(Exception):
    """A spawned process exited before or during a measurement; the message holds its status and output."""


def describe_status(returncode: int | None) -> str:
    """`exited with status 3`, `was killed by signal 11 (SIGSEGV)`."""
    if returncode is None:
        return "is still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        return f"was killed by signal {-returncode} ({name})"
    return f"exited with status {returncode}"


def interrupt_on_sigterm() -> None:
    """Make SIGTERM stop the test session as Ctrl-C does, so teardown still ends the processes it started.

    Left alone when something else already handles SIGTERM, and outside the main thread (where Python
    cannot set handlers).
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"terminated by signal {signum} (SIGTERM)")

    signal.signal(signal.SIGTERM, interrupt)


def _tail(text: str, lines: int = _OUTPUT_TAIL_LINES) -> str:
    kept = text.splitlines()[-lines:]
    return "\n".join("    " + line for line in kept) if kept else "    (empty)"


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


_TCP_LISTEN = "0A"


def _listening_inodes(port: int) -> set[int]:
    """The inodes of the sockets listening on TCP `port` (any address) in this network namespace."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as lines:
                next(lines, None)
                for line in lines:
                    fields = line.split()
                    if len(fields) > 9 and fields[3] == _TCP_LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(int(fields[9]))
        except FileNotFoundError:
            continue
    return inodes


def _socket_inodes(pids: Iterable[int]) -> set[int]:
    """The inodes of the sockets the processes `pids` hold open."""
    inodes = set()
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        with contextlib.suppress(OSError):
            for fd in os.listdir(fd_dir):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"{fd_dir}/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(int(target[8:-1]))
    return inodes


def _holders(inodes: set[int]) -> list[str]:
    """`pid 42 (nginx)` for each process holding one of the sockets `inodes` (those this user can see)."""
    found = []
    for process in psutil.process_iter(["name"]):
        if _socket_inodes([process.pid]) & inodes:
            found.append(f"pid {process.pid} ({process.info['name']})")
    return found


def _running(process: psutil.Process) -> bool:
    """Still running: not gone, and not a zombie waiting for a parent (maybe not us) to reap it."""
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _has_exited(pid: int) -> bool:
    """Whether our child `pid` has exited, without collecting anything: a wait from this thread must not take
    the exit status from `subprocess`, nor a ptrace stop from a freeze running in another thread."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None and info.si_code in (os.CLD_EXITED, os.CLD_KILLED, os.CLD_DUMPED)


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


def end_process_tree(popen: subprocess.Popen[bytes], grace: float, known: Iterable[psutil.Process] = ()) -> int | None:
    """End the process group led by `popen` and every descendant: SIGTERM, then SIGKILL after `grace` seconds.

    `known` adds descendants seen earlier, which may since have left the group and lost their parent. A
    Ctrl-C or SIGTERM arriving meanwhile cuts the grace short: everything is killed at once, then the
    interruption goes on. Returns the leader's exit status (negative: the signal that ended it).
    """
    pgid = popen.pid  # the leader of a new session leads its process group too
    # Listed before signalling: once the leader is gone its children are reparented and harder to find.
    others = {process.pid: process for process in [*known, *_descendants(popen.pid), *_group_members(pgid)]}
    others.pop(popen.pid, None)
    tracked = [process for process in others.values() if _running(process)]
    try:
        _signal_all(pgid, tracked, signal.SIGTERM)
        _signal_all(pgid, tracked, signal.SIGCONT)  # a stopped process acts on SIGTERM only once continued
        alive = _wait_ended(popen, tracked, grace)
    except (KeyboardInterrupt, SystemExit):
        finish_despite_signals(lambda: _kill_all(popen, pgid, tracked))
        raise
    if popen.returncode is None or alive or _group_members(pgid):
        finish_despite_signals(lambda: _kill_all(popen, pgid, alive))
        _wait_ended(popen, alive, grace)
    return popen.returncode


def _kill_all(popen: subprocess.Popen[bytes], pgid: int, others: Sequence[psutil.Process]) -> bool:
    _signal_all(pgid, others, signal.SIGKILL)
    popen.kill()
    popen.wait()
    return True


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
        __tracebackhide__ = True  # a program that cannot start is one line, not this frame
        self.argv = shlex.split(command) if isinstance(command, str) else [os.fspath(arg) for arg in command]
        if not self.argv:
            raise ValueError("spawn() needs a command: got an empty one")
        self.label = default_label(shlex.join(self.argv))
        self.grace = grace
        self.stdout_path = log_dir / "stdout.txt"
        self.stderr_path = log_dir / "stderr.txt"
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            try:
                self.popen: subprocess.Popen[bytes] = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    env=environment,
                    cwd=cwd,
                    start_new_session=True,
                )
            except OSError as exc:
                raise SpawnFailed(_spawn_failure(self.argv, exc, cwd)) from None
        self.pid = self.popen.pid
        self._scanners = (_LineScanner(self.stdout_path), _LineScanner(self.stderr_path))
        # Descendants are listed while the process runs, so teardown reaches those that leave its group
        # and lose their parent when it crashes.
        self._descendants: dict[int, psutil.Process] = {}
        self._tracking = threading.Event()
        threading.Thread(target=self._track_descendants, name=f"pagemap-track-{self.pid}", daemon=True).start()

    def _track_descendants(self) -> None:
        while not self._tracking.wait(_TRACK_SECONDS) and not _has_exited(self.pid):
            self._note_descendants()

    def _note_descendants(self) -> None:
        for process in _descendants(self.pid):
            self._descendants.setdefault(process.pid, process)

    def __repr__(self) -> str:
        if not hasattr(self, "popen"):
            return f"<SpawnedProcess {self.label!r}: not started>"
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
            f"  stdout ({self.stdout_path}):\n{_tail(self.stdout)}\n"
            f"  stderr ({self.stderr_path}):\n{_tail(self.stderr)}"
        )

    @property
    def descendants(self) -> list[int]:
        """The pids of every descendant seen while the process ran: teardown ends those still running."""
        return list(self._descendants)

    def stop(self) -> int | None:
        """End the process, its process group and its descendants (SIGTERM, then SIGKILL); return its status."""
        self._tracking.set()
        if self.popen.poll() is None:
            self._note_descendants()
        return end_process_tree(self.popen, self.grace, list(self._descendants.values()))

    def check_running(self, when: str) -> None:
        """Raise `ProcessEnded` (status and output) when the process has exited; `when`: "before the measurement"."""
        __tracebackhide__ = True
        status = self.returncode
        if status is not None:
            raise ProcessEnded(
                f"{self.label!r} (pid {self.pid}) {describe_status(status)} {when}\n{self.output_report()}"
            )

    # --- readiness --------------------------------------------------------------------------------------

    def wait_ready(self, ready: Ready, timeout: float) -> None:
        """Wait until `ready` holds, raising `ProcessNotReady` with the output on timeout or early exit.

        `ready` is a callable returning truthy (an `OSError` it raises counts as not yet), a regex (str or
        compiled) searched in each complete line of stdout and stderr, a TCP port number or `(host, port)` accepting
        connections, or a `pathlib.Path` that appears. None returns at once.
        """
        __tracebackhide__ = True
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
                    f"{self.label!r} (pid {self.pid}) {describe_status(status)} before it was ready "
                    f"(waiting for {waiting_for}{self._port_note(ready)})\n{self.output_report()}"
                )
            if time.monotonic() >= deadline:
                raise ProcessNotReady(
                    f"{self.label!r} (pid {self.pid}) was not ready after {timeout:g} s "
                    f"(waiting for {waiting_for}{self._port_note(ready)})\n{self.output_report()}"
                )
            time.sleep(_POLL_SECONDS)

    def _tree_pids(self) -> list[int]:
        return [self.pid, *(process.pid for process in _descendants(self.pid))]

    def _port_ready(self, host: str, port: int) -> bool:
        """The port accepts connections, and (when it is local) on a socket the spawned processes hold."""
        if not _port_open(host, port):
            return False
        listening = _listening_inodes(port)
        if not listening:  # not in this network namespace (a remote host): the connection is all we know
            return True
        return bool(listening & _socket_inodes(self._tree_pids()))

    def _port_note(self, ready: Ready) -> str:
        """`; port 8080 is held by pid 42 (nginx), not by this process` when another process listens there."""
        port = ready if isinstance(ready, int) and not isinstance(ready, bool) else None
        if isinstance(ready, tuple):
            port = ready[1]
        if port is None:
            return ""
        listening = _listening_inodes(port)
        if not listening or listening & _socket_inodes(self._tree_pids()):
            return ""
        holders = ", ".join(_holders(listening)) or "another process"
        return f"; port {port} is held by {holders}, not by this process or its children"

    def _readiness_check(self, ready: Ready) -> tuple[Callable[[], bool], str]:
        if isinstance(ready, bool):
            raise TypeError("ready=True/False is ambiguous: pass a callable, a regex, a port or a pathlib.Path")
        if isinstance(ready, (str, re.Pattern)):
            pattern = re.compile(ready)
            return (lambda: self._output_matches(pattern)), f"output matching {pattern.pattern!r}"
        if isinstance(ready, int):
            port = ready
            return (lambda: self._port_ready("127.0.0.1", port)), f"TCP port {port} on 127.0.0.1"
        if isinstance(ready, tuple):
            host, port = ready
            return (lambda: self._port_ready(host, port)), f"TCP port {port} on {host}"
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


def _spawn_failure(argv: list[str], exc: OSError, cwd: str | os.PathLike[str] | None) -> str:
    program = argv[0]
    command = shlex.join(argv)
    if cwd is not None and not os.path.isdir(cwd):
        return f"spawn({command!r}): the working directory {os.fspath(cwd)!r} does not exist"
    # A search of PATH that met an unreadable directory fails with EACCES even when the program is nowhere.
    missing = shutil.which(program) is None if os.sep not in program else not os.path.exists(program)
    if isinstance(exc, (FileNotFoundError, PermissionError)) and missing:
        where = "" if os.sep in program else " on PATH"
        return f"spawn({command!r}): no program {program!r}{where}: install it or give its full path"
    if isinstance(exc, PermissionError):
        return f"spawn({command!r}): {program!r} is not executable by this user ({exc.strerror})"
    return f"spawn({command!r}): cannot start {program!r}: {exc.strerror or exc}"


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
