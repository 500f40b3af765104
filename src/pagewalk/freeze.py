"""Freezing processes for a consistent snapshot, in a way that cannot outlive the measuring process.

The stop is made with ptrace: `PTRACE_SEIZE` and `PTRACE_INTERRUPT` on every thread. Unlike SIGSTOP this is
no job-control stop, so the target's parent is not told (a wrapper such as `su` or `runuser` does not stop
itself in sympathy), and the kernel releases every tracee when its tracer exits for any reason, SIGKILL
included. Where ptrace cannot be used (the process is already traced, or Yama or a missing capability
denies it), the process is stopped with SIGSTOP instead, guarded by a watchdog process that continues it
if the measuring process dies before doing so itself. A process already stopped before the freeze is
left as it is, and stays stopped.

The ptrace calls are made from the calling thread, which must stay the same for the whole block (ptrace
binds tracees to the tracer thread): use `frozen` as a plain `with` block.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from . import procfs
from .errors import AccessDenied, PagewalkError, ProcessGone

__all__ = ["Freeze", "finish_despite_signals", "frozen"]

Method = Literal["ptrace", "sigstop", "already stopped", "self"]

_PTRACE_DETACH = 17
_PTRACE_SEIZE = 0x4206
_PTRACE_INTERRUPT = 0x4207
_PTRACE_EVENT_STOP = 128
_WALL = 0x40000000  # wait for clone children (threads) too
_SETTLE_SECONDS = 2.0  # how long resuming waits for a thread caught exiting, so its exit can be passed on
_SPIN_SECONDS = 0.0002  # a stop usually lands within this: yield the CPU meanwhile rather than sleep

# The watchdog of a SIGSTOP freeze: it waits on a pipe from the measuring process, and continues the
# stopped processes unless told "done" first, which is to say when the measuring process died holding them.
_WATCHDOG = 'trap "" INT TERM HUP QUIT TSTP; read -r line; [ "$line" = done ] || exec kill -CONT "$@"'


@dataclass
class Freeze:
    """What a freeze achieved: true when every thread of every process was stopped for the block."""

    pids: tuple[int, ...]
    methods: dict[int, Method] = field(default_factory=dict)  # how each process was held
    complete: bool = False  # every thread of every process stopped within the timeout
    notes: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.complete


@contextlib.contextmanager
def frozen(pids: Sequence[int], *, timeout: float = 2.0) -> Iterator[Freeze]:
    """Stop every process in `pids` for the duration of the block, and always resume them.

    All processes are stopped before the block runs, and all are resumed however it ends (an exception,
    Ctrl-C, SIGTERM turned into an exception). If the measuring process dies instead, the kernel (ptrace)
    or the watchdog (SIGSTOP) resumes them. The yielded `Freeze` is false when some thread did not stop
    within `timeout` seconds (a thread in an uninterruptible sleep, or one of thousands of busy threads):
    the block then runs on a partly frozen process, and `Freeze.notes` says so. The measuring process itself
    cannot be frozen and is skipped (method "self"); a thread id raises `InvalidPid`, a missing process
    `ProcessGone`, and one that may not be stopped `AccessDenied`.
    """
    session = _Session(tuple(procfs.check_pid(pid) for pid in pids), timeout)
    try:
        session.stop()
        yield session.result
    finally:
        finish_despite_signals(session.resume)


def finish_despite_signals(action: Callable[[], bool]) -> None:
    """Run `action` until it reports done, even when a signal handler raises in the middle of it.

    Ctrl-C (or a SIGTERM handler raising) may land between two system calls of the resume; the steps are
    idempotent, so the action is run again, and the first such exception is raised once it has finished.
    """
    interrupted: BaseException | None = None
    for _ in range(100):
        try:
            if action():
                break
        except (KeyboardInterrupt, SystemExit) as exc:
            interrupted = interrupted or exc
    if interrupted is not None:
        raise interrupted


class _Session:
    """The state of one freeze: which threads are traced, which processes were sent SIGSTOP."""

    def __init__(self, pids: tuple[int, ...], timeout: float) -> None:
        self.result = Freeze(pids)
        self.deadline = time.monotonic() + timeout
        self.traced: dict[int, set[int]] = {}  # pid -> its threads seized (or being seized)
        self.signals: dict[int, int] = {}  # tid -> a signal that arrived while stopping it, to deliver on release
        self.sigstopped: list[int] = []
        self.watchdog: subprocess.Popen[bytes] | None = None

    # --- stopping -------------------------------------------------------------------------------------

    def stop(self) -> None:
        _settle_leftovers()
        fallback = []
        for pid in self.result.pids:
            method = self._classify(pid)
            if method is None and not self._seize(pid):
                fallback.append(pid)
            elif method is not None:
                self.result.methods[pid] = method
        if fallback:
            self._sigstop(fallback)
        complete = self._wait_traced()
        complete = self._wait_sigstopped() and complete
        self.result.complete = complete
        if not complete:
            self.result.notes.append(
                "not every thread stopped within the timeout (a thread in an uninterruptible sleep, or too "
                "many busy threads): the snapshot was read while part of the process ran, and may not be atomic"
            )

    def _classify(self, pid: int) -> Method | None:
        """The method for a process needing no stop ("self", "already stopped"), else None; checks the pid."""
        procfs.check_thread_group_leader(pid)
        if pid == os.getpid():
            self.result.notes.append("the measuring process cannot freeze itself: it was read while running")
            return "self"
        if procfs.process_state(pid)[0] not in "TtZX":
            return None  # the main thread runs: no need to look at the others
        states = procfs.thread_states(pid)
        if not states:
            raise ProcessGone(f"process {pid} does not exist (or exited while being read)", pid)
        live = [state for state in states if state not in "ZX"]
        if live and all(state in "Tt" for state in live):
            return "already stopped"  # left exactly as found: it is not ours to continue
        return None

    def _seize(self, pid: int) -> bool:
        """Seize and interrupt every thread of `pid`; False when ptrace may not be used on it."""
        ptrace = _ptrace()
        seized = self.traced.setdefault(pid, set())
        tried: set[int] = set()
        while time.monotonic() < self.deadline:
            # Threads started while the others were being seized show up in the next listing.
            new = [tid for tid in procfs.thread_ids(pid) if tid not in tried]
            if not new:
                break
            for tid in new:
                tried.add(tid)
                seized.add(tid)  # before the call: a Ctrl-C right after it must still release the thread
                error = ptrace(_PTRACE_SEIZE, tid, 0)
                if error == 0:
                    ptrace(_PTRACE_INTERRUPT, tid, 0)
                    continue
                seized.discard(tid)
                if error in (errno.EPERM, errno.EBUSY) and not seized and not _is_exiting(pid, tid):
                    del self.traced[pid]
                    return False  # already traced, Yama, or no CAP_SYS_PTRACE: use SIGSTOP
                # ESRCH, or EPERM on an exiting thread: it is leaving and needs no stop
        self.result.methods[pid] = "ptrace"
        if not seized and not procfs.thread_ids(pid):
            raise ProcessGone(f"process {pid} exited while being frozen", pid)
        return True

    def _sigstop(self, pids: list[int]) -> None:
        self.watchdog = subprocess.Popen(
            ["/bin/sh", "-c", _WATCHDOG, "pagewalk-watchdog", *map(str, pids)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # signals sent to the measurer's process group do not reach it
        )
        for pid in pids:
            self.sigstopped.append(pid)  # before the call: a Ctrl-C right after it must still continue it
            self.result.methods[pid] = "sigstop"
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                raise ProcessGone(f"process {pid} does not exist (or exited while being read)", pid) from None
            except PermissionError:
                self.sigstopped.remove(pid)
                raise AccessDenied(
                    f"not allowed to stop process {pid} for a consistent snapshot: run as its owner or root, "
                    "or pass freeze=False",
                    pid,
                ) from None

    def _wait_traced(self) -> bool:
        """Wait until every seized thread reports its stop (or exit); False at the deadline."""
        waiting = {tid for tids in self.traced.values() for tid in tids}

        def all_reported() -> bool:
            for tid in list(waiting):
                state = _peek(tid)
                if state == "stopped":
                    _consume_stop(tid, self.signals)
                if state != "running":
                    waiting.discard(tid)  # stopped, or exited (its exit is passed on when resuming)
            return not waiting

        return self._poll_until(all_reported)

    def _wait_sigstopped(self) -> bool:
        def all_stopped() -> bool:
            live = [state for pid in self.sigstopped for state in procfs.thread_states(pid) if state not in "ZX"]
            return all(state in "Tt" for state in live)

        return self._poll_until(all_stopped)

    def _poll_until(self, done: Callable[[], bool]) -> bool:
        """Poll `done` until it is true (True) or the deadline passes (False).

        The first polls only yield the CPU, which lets a target sharing it stop at once; a sleep costs 60
        microseconds or more before the next look.
        """
        spin_until = time.monotonic() + _SPIN_SECONDS
        while not done():
            now = time.monotonic()
            if now > self.deadline:
                return False
            os.sched_yield() if now < spin_until else time.sleep(0.0002)
        return True

    # --- resuming -------------------------------------------------------------------------------------

    def resume(self) -> bool:
        """Release every thread and continue every SIGSTOPped process; True once all is done (idempotent)."""
        for pid, tids in self.traced.items():
            for tid in sorted(tids):
                if not _release(tid, pid, self.signals.get(tid, 0), _SETTLE_SECONDS):
                    _LEFTOVERS.add((tid, pid))
                tids.discard(tid)
        while self.sigstopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.sigstopped[-1], signal.SIGCONT)
            self.sigstopped.pop()
        if self.watchdog is not None:
            _dismiss(self.watchdog)
            self.watchdog = None
        return True


# --- ptrace and wait ----------------------------------------------------------------------------------

_PTRACE_CALL: Callable[[int, int, int], int] | None = None


def _ptrace() -> Callable[[int, int, int], int]:
    """`ptrace(request, tid, data)` returning 0 or the errno; libc is loaded on first use, not at import."""
    global _PTRACE_CALL
    if _PTRACE_CALL is None:
        function = ctypes.CDLL(None, use_errno=True).ptrace
        function.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)
        function.restype = ctypes.c_long

        def call(request: int, tid: int, data: int) -> int:
            ctypes.set_errno(0)
            if function(request, tid, None, data or None) == -1:
                return ctypes.get_errno() or errno.EIO
            return 0

        _PTRACE_CALL = call
    return _PTRACE_CALL


def _peek(tid: int) -> Literal["running", "stopped", "exited", "gone"]:
    """What a traced thread has to report, without consuming it."""
    try:
        info = os.waitid(os.P_PID, tid, os.WEXITED | os.WSTOPPED | os.WNOHANG | os.WNOWAIT | _WALL)
    except ChildProcessError:
        return "gone"  # not (or no longer) traced by this thread
    if info is None:
        return "running"
    return "stopped" if info.si_code == os.CLD_TRAPPED else "exited"


def _consume_stop(tid: int, signals: dict[int, int]) -> None:
    """Take a stop report off a traced thread (never an exit), keeping a signal that stopped it for later."""
    with contextlib.suppress(ChildProcessError):
        info = os.waitid(os.P_PID, tid, os.WSTOPPED | os.WNOHANG | _WALL)
        if info is not None:
            signal_number, event = info.si_status & 0xFF, info.si_status >> 8
            if event == 0 and signal_number:  # a signal arrived first: deliver it on release
                signals[tid] = signal_number


def _release(tid: int, pid: int, signal_number: int, settle: float) -> bool:
    """Detach from a thread. One that is not stopped is exiting: wait up to `settle` seconds for its exit
    and pass that on to its real parent. True when the thread is no longer traced by this process."""
    ptrace = _ptrace()
    if ptrace(_PTRACE_DETACH, tid, signal_number) == 0:
        return True
    deadline = time.monotonic() + settle
    while procfs.tracer_pid(pid, tid) == os.getpid():
        state = _peek(tid)
        if state == "gone":
            return True
        if state == "stopped":
            _consume_stop(tid, {})
            if ptrace(_PTRACE_DETACH, tid, signal_number) == 0:
                return True
        elif state == "exited":
            _reap_traced_exit(tid, pid)
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def _reap_traced_exit(tid: int, pid: int) -> None:
    """Collect a traced thread's exit, which hands it on to its real parent. The exit of our own child
    process is left alone: it belongs to whoever waits for the child (`subprocess`)."""
    if tid == pid and _is_own_child(pid):
        return
    with contextlib.suppress(ChildProcessError):
        os.waitid(os.P_PID, tid, os.WEXITED | os.WNOHANG | _WALL)


def _is_own_child(pid: int) -> bool:
    try:
        return procfs.parent_pid(pid) == os.getpid()
    except PagewalkError:  # gone entirely: nothing left to decide
        return False


def _is_exiting(pid: int, tid: int) -> bool:
    return procfs.thread_state(pid, tid) in (None, "Z", "X")


def _dismiss(watchdog: subprocess.Popen[bytes]) -> None:
    """Tell the watchdog its processes were continued, and collect it."""
    with contextlib.suppress(OSError):
        assert watchdog.stdin is not None
        watchdog.stdin.write(b"done\n")
        watchdog.stdin.close()
    try:
        watchdog.wait(timeout=5)
    except subprocess.TimeoutExpired:
        watchdog.kill()
        watchdog.wait()


# Threads caught exiting at release whose exit was not yet reported: collected by the next freeze, and at exit.
_LEFTOVERS: set[tuple[int, int]] = set()


def _settle_leftovers() -> None:
    for tid, pid in list(_LEFTOVERS):
        if _release(tid, pid, 0, 0.0):
            _LEFTOVERS.discard((tid, pid))


atexit.register(_settle_leftovers)
