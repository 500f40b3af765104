"""Freezing under faults, against real processes: what stops, what is told, what resumes, and who is measured."""

from __future__ import annotations

import dataclasses
import errno
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from puppet import Puppet

import pagewalk
from pagewalk import procfs
from pagewalk.freeze import frozen

SLEEPER = (
    "import sys, threading\n"
    "for _ in range(int(sys.argv[1])): threading.Thread(target=sys.stdin.readline, daemon=True).start()\n"
    "print('ready', flush=True)\n"
    "sys.stdin.readline()\n"
)
# Traces the process named on its command line (PTRACE_SEIZE, which leaves it running), then waits.
TRACER = (
    "import ctypes, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "libc.ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)\n"
    "assert libc.ptrace(0x4206, int(sys.argv[1]), None, None) == 0, ctypes.get_errno()\n"
    "print('tracing', flush=True)\n"
    "sys.stdin.readline()\n"
)


def spawn(*command: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert process.stdout.readline() in ("ready\n", "tracing\n")
    return process


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[str]]:
    process = spawn(sys.executable, "-c", SLEEPER, "3")
    yield process
    process.kill()
    process.wait()


def states(pid: int) -> set[str]:
    return set(procfs.thread_states(pid))


def wait_until(condition: object, what: str) -> None:
    deadline = time.monotonic() + 30
    while not callable(condition) or not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.005)


def test_every_thread_is_stopped_in_the_block_and_runs_after(sleeper: subprocess.Popen[str]) -> None:
    with frozen([sleeper.pid]) as freeze:
        assert freeze and freeze.methods == {sleeper.pid: "ptrace"}
        assert states(sleeper.pid) == {"t"}
        assert len(procfs.thread_ids(sleeper.pid)) == 4
    assert "t" not in states(sleeper.pid) and "T" not in states(sleeper.pid)
    assert procfs.tracer_pid(sleeper.pid, sleeper.pid) == 0


def test_several_processes_are_stopped_together(sleeper: subprocess.Popen[str]) -> None:
    other = spawn(sys.executable, "-c", SLEEPER, "0")
    try:
        with frozen([sleeper.pid, other.pid]) as freeze:
            assert freeze
            assert states(sleeper.pid) == states(other.pid) == {"t"}
        assert "t" not in states(sleeper.pid) | states(other.pid)
    finally:
        other.kill()
        other.wait()


def test_a_signal_arriving_during_the_freeze_is_delivered_after(sleeper: subprocess.Popen[str]) -> None:
    with frozen([sleeper.pid]):
        os.kill(sleeper.pid, signal.SIGTERM)
        assert procfs.process_state(sleeper.pid)[0] == "t"
    assert sleeper.wait(timeout=30) == -signal.SIGTERM


def test_a_stop_sent_during_the_freeze_is_kept(sleeper: subprocess.Popen[str]) -> None:
    with frozen([sleeper.pid]):
        os.kill(sleeper.pid, signal.SIGSTOP)
    wait_until(lambda: states(sleeper.pid) == {"T"}, "the process shows the stop it was sent")
    os.kill(sleeper.pid, signal.SIGCONT)


def test_the_exit_status_of_our_own_child_killed_in_the_block_is_kept(sleeper: subprocess.Popen[str]) -> None:
    with frozen([sleeper.pid]):
        sleeper.kill()
    assert sleeper.wait(timeout=30) == -signal.SIGKILL


@pytest.mark.parametrize("measurer_signal", [signal.SIGKILL, signal.SIGTERM])
def test_a_measurer_that_dies_in_the_block_leaves_the_process_running(
    sleeper: subprocess.Popen[str], measurer_signal: signal.Signals
) -> None:
    code = (
        "import os, sys\nfrom pagewalk.freeze import frozen\n"
        f"with frozen([{sleeper.pid}]) as freeze:\n"
        "    print(dict(freeze.methods)[" + str(sleeper.pid) + "], flush=True)\n"
        "    sys.stdin.readline()\n"
    )
    measurer = spawn_measurer(code)
    assert measurer.stdout is not None and measurer.stdout.readline() == "ptrace\n"
    assert states(sleeper.pid) == {"t"}
    measurer.send_signal(measurer_signal)
    assert measurer.wait(timeout=30) == -measurer_signal
    wait_until(lambda: not states(sleeper.pid) & {"t", "T"}, "the target runs again")


def spawn_measurer(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_an_already_traced_process_is_stopped_with_sigstop_under_a_watchdog(sleeper: subprocess.Popen[str]) -> None:
    tracer = spawn(sys.executable, "-c", TRACER, str(sleeper.pid))
    try:
        code = (
            "import sys\nfrom pagewalk.freeze import frozen\n"
            f"with frozen([{sleeper.pid}]) as freeze:\n"
            f"    print(freeze.methods[{sleeper.pid}], flush=True)\n"
            "    sys.stdin.readline()\n"
        )
        measurer = spawn_measurer(code)
        assert measurer.stdout is not None and measurer.stdout.readline() == "sigstop\n"
        measurer.kill()
        assert measurer.wait(timeout=30) == -signal.SIGKILL
        # The tracer sees the SIGSTOP as a signal-delivery-stop; it stays "t" until the tracer lets it on.
        tracer.kill()
        tracer.wait()
        wait_until(lambda: not states(sleeper.pid) & {"t", "T"}, "the watchdog continued the target")
    finally:
        tracer.kill()
        tracer.wait()


def test_a_process_stopped_before_is_left_stopped(sleeper: subprocess.Popen[str]) -> None:
    os.kill(sleeper.pid, signal.SIGSTOP)
    wait_until(lambda: states(sleeper.pid) == {"T"}, "the process is stopped")
    with frozen([sleeper.pid]) as freeze:
        assert freeze.methods == {sleeper.pid: "already stopped"}
    assert states(sleeper.pid) == {"T"}
    os.kill(sleeper.pid, signal.SIGCONT)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("runuser") is None, reason="runuser needs root")
def test_a_wrapper_does_not_stop_itself_when_its_child_is_measured() -> None:
    wrapper = subprocess.Popen(
        ["runuser", "-u", "nobody", "--", "/bin/sh", "-c", "echo ready; exec cat"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert wrapper.stdout is not None and wrapper.stdout.readline() == "ready\n"
        with open(f"/proc/{wrapper.pid}/task/{wrapper.pid}/children") as children:
            (child,) = (int(pid) for pid in children.read().split())
        # The shell printed "ready" before it execs cat: measured mid-exec, its address space goes away.
        wait_until(lambda: os.readlink(f"/proc/{child}/exe").endswith("/cat"), "the shell execs cat")
        for _ in range(5):
            pagewalk.snapshot(child)
        assert procfs.process_state(wrapper.pid)[0] != "T"
        assert not states(child) & {"t", "T"}
    finally:
        wrapper.kill()
        wrapper.wait()


def test_a_thread_id_is_refused() -> None:
    done = threading.Event()
    thread = threading.Thread(target=done.wait)
    thread.start()
    try:
        assert thread.native_id is not None
        with pytest.raises(pagewalk.InvalidPid, match=f"thread of process {os.getpid()}"):
            pagewalk.snapshot(thread.native_id)
    finally:
        done.set()
        thread.join()


def test_the_measuring_process_is_read_unfrozen_with_a_note() -> None:
    with frozen([os.getpid()]) as freeze:
        assert freeze.methods == {os.getpid(): "self"}
        assert "cannot freeze itself" in freeze.notes[0]


def test_a_reused_pid_is_not_diffed(sleeper: subprocess.Popen[str]) -> None:
    before = pagewalk.snapshot(sleeper.pid)
    assert before.start_time == procfs.start_time(sleeper.pid) and before.exe is not None
    # A pid is reused only after the kernel cycles through all others (see the fault trials for the real
    # thing, in a pid namespace): here the later snapshot's identity is that of another process.
    after = dataclasses.replace(pagewalk.snapshot(sleeper.pid), start_time=(before.start_time or 0) + 1)
    with pytest.raises(pagewalk.ProcessGone, match="pid was reused"):
        pagewalk.diff(before, after)


def test_a_pid_reused_within_a_clock_tick_is_not_diffed(sleeper: subprocess.Popen[str]) -> None:
    """Start times count clock ticks, so a process given the pid within the same tick shares it; the pidfd's
    inode (pidfs, Linux 6.9+) still tells them apart. The fault trials reuse pids for real, in a namespace."""
    before = pagewalk.snapshot(sleeper.pid)
    if before.pidfd_inode is None:
        pytest.skip("pidfds share one inode before Linux 6.9")
    assert pagewalk.snapshot(sleeper.pid).pidfd_inode == before.pidfd_inode  # the same process, the same inode
    other = spawn(sys.executable, "-c", SLEEPER, "3")
    try:
        snap = pagewalk.snapshot(other.pid)
    finally:
        other.kill()
        other.wait()
    after = dataclasses.replace(snap, pid=before.pid, start_time=before.start_time, exe=before.exe)
    with pytest.raises(pagewalk.ProcessGone, match="pid was reused"):
        pagewalk.diff(before, after)


def test_an_exec_between_snapshots_is_a_note_that_fails_limits() -> None:
    code = "import os, sys\nprint('ready', flush=True)\nsys.stdin.readline()\nos.execv('/bin/cat', ['cat'])\n"
    target = spawn(sys.executable, "-c", code)
    try:
        measurement = pagewalk.Measurement(target.pid)
        measurement.start()
        assert target.stdin is not None
        target.stdin.write("\n")
        target.stdin.flush()
        wait_until(lambda: procfs.executable(target.pid) == os.path.realpath("/bin/cat"), "the exec")
        measurement.stop()
        assert measurement.delta.program_changed
        assert "called exec" in measurement.delta.notes[0]
        verdict = measurement.check("uss_growth", "1 TiB")
        assert not verdict.passed
        assert "called exec" in measurement.details(verdict)
        error = measurement.failure(verdict)
        assert str(error).startswith(f"process {target.pid} called exec between the snapshots")
        assert str(pickle.loads(pickle.dumps(error))) == str(error)
    finally:
        target.kill()
        target.wait()


def test_a_live_process_whose_main_thread_exited_is_not_called_a_zombie() -> None:
    code = (
        "import ctypes, sys, threading\n"
        "threading.Thread(target=sys.stdin.readline).start()\n"
        "print('ready', flush=True)\n"
        "ctypes.CDLL(None).pthread_exit(None)\n"
    )
    target = spawn(sys.executable, "-c", code)
    try:
        wait_until(lambda: procfs.process_state(target.pid)[0] == "Z", "the main thread exits")
        with pytest.raises(pagewalk.NoAddressSpace, match=r"main thread .* has exited while its other threads run"):
            pagewalk.snapshot(target.pid)
    finally:
        target.kill()
        target.wait()


def test_einval_from_the_proc_of_a_process_that_is_gone_is_process_gone() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    error = procfs.translate_os_error(OSError(errno.EINVAL, "Invalid argument"), process.pid, "mountinfo")
    assert isinstance(error, pagewalk.ProcessGone)


def test_the_ptrace_function_is_loaded_only_when_used() -> None:
    code = "import sys, pagewalk.freeze as f\nprint(f._PTRACE_CALL is None)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout == "True\n"


def test_read_over_a_huge_reservation_is_scanned_rather_than_walked_while_frozen(puppet: Puppet) -> None:
    if not pagewalk.capabilities().pagemap_scan:
        pytest.skip("PAGEMAP_SCAN needs Linux 6.7+")
    page = pagewalk.capabilities().page_size
    area = puppet.map((2 << 40) // page, noreserve=True)
    puppet.write(area, [0, 7])
    snap = pagewalk.snapshot(puppet.pid, method="read")
    assert snap.method == "scan" and snap.frozen
    assert any("would walk over 1 TiB" in note for note in snap.notes)
    (region,) = [region for region in snap.regions if region.start == area.address]
    assert region.uss == 2 * page
