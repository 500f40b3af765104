"""Bad input and processes that vanish: clear errors, no partial results, no hang, no leaked fd."""

from __future__ import annotations

import gc
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

import pagewalk
from pagewalk import procfs, reader

SLEEPER = [sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.readline()"]


@pytest.fixture
def child() -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(SLEEPER, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    yield process
    process.kill()
    process.wait()


def open_fds() -> set[str]:
    gc.collect()  # let earlier tests' objects close their fds now, not in the middle of a comparison
    return set(os.listdir("/proc/self/fd"))


def thread_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


@pytest.mark.parametrize("pid", [0, -1, -4242])
def test_non_positive_pid(pid: int) -> None:
    with pytest.raises(pagewalk.InvalidPid, match="positive"):
        pagewalk.snapshot(pid)


@pytest.mark.parametrize("pid", ["123", 1.0, None, True])
def test_pid_of_wrong_type(pid: object) -> None:
    with pytest.raises(pagewalk.InvalidPid, match="must be an int"):
        pagewalk.snapshot(pid)  # type: ignore[arg-type]


def test_invalid_pid_is_also_a_value_error() -> None:
    with pytest.raises(ValueError):
        pagewalk.snapshot(0)


def test_no_such_process() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()  # reaped: the pid is free
    with pytest.raises(pagewalk.ProcessGone, match=f"process {process.pid} does not exist") as info:
        pagewalk.snapshot(process.pid)
    assert info.value.pid == process.pid


def test_kernel_thread() -> None:
    kthreadd = 2  # the parent of all kernel threads
    with open("/proc/2/comm") as comm:
        assert comm.read().strip() == "kthreadd"
    with pytest.raises(pagewalk.NoAddressSpace, match="kernel thread"):
        pagewalk.snapshot(kthreadd)


def test_zombie() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while thread_state(process.pid) != "Z":
        assert time.monotonic() < deadline, "child never became a zombie"
        time.sleep(0.01)
    try:
        with pytest.raises(pagewalk.NoAddressSpace, match="zombie"):
            pagewalk.snapshot(process.pid)
    finally:
        process.wait()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may read every process; run unprivileged to test denial")
def test_permission_denied_names_the_fix() -> None:
    with pytest.raises(pagewalk.AccessDenied, match="ptrace") as info:
        pagewalk.snapshot(1)
    assert info.value.pid == 1
    assert isinstance(info.value, PermissionError)


def test_unknown_method(child: subprocess.Popen[str]) -> None:
    with pytest.raises(ValueError, match="'auto', 'read' or 'scan'"):
        pagewalk.snapshot(child.pid, method="fast")  # type: ignore[arg-type]


def test_unknown_tracking(child: subprocess.Popen[str]) -> None:
    with pytest.raises(ValueError, match="choose from writes, accessed"):
        pagewalk.snapshot(child.pid, track=("reads",))


@pytest.mark.parametrize("method", ["read", "scan"])
def test_process_exiting_mid_snapshot_is_gone_not_partial(
    child: subprocess.Popen[str], monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """The child is killed and reaped between the maps read and the pagemap read: a real exit mid-snapshot."""
    if method == "scan" and not pagewalk.capabilities().pagemap_scan:
        pytest.skip("PAGEMAP_SCAN needs Linux 6.7+")
    real_read_maps = procfs.read_maps

    def read_maps_then_die(pid: int) -> list[procfs.MapsEntry]:
        maps = real_read_maps(pid)
        os.kill(pid, signal.SIGKILL)
        child.wait()
        return maps

    monkeypatch.setattr(procfs, "read_maps", read_maps_then_die)
    before = open_fds()
    with pytest.raises(pagewalk.ProcessGone, match="exited while") as info:
        pagewalk.snapshot(child.pid, freeze=False, method=method)  # type: ignore[arg-type]
    assert info.value.pid == child.pid
    assert open_fds() <= before


@pytest.mark.parametrize("method", ["read", "scan"])
def test_an_exec_during_the_read_is_named_as_such(monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    """A process that runs another program while it is read keeps its pid and start time but loses the
    address space being read: the error says it exec'd, not that it exited."""
    if method == "scan" and not pagewalk.capabilities().pagemap_scan:
        pytest.skip("PAGEMAP_SCAN needs Linux 6.7+")
    process = subprocess.Popen(
        ["/bin/sh", "-c", "echo ready; read line; exec sleep 60"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        assert process.stdout.readline() == b"ready\n"
        real_read_maps = procfs.read_maps

        def read_maps_then_exec(pid: int) -> list[procfs.MapsEntry]:
            maps = real_read_maps(pid)
            process.stdin.write(b"go\n")  # type: ignore[union-attr]
            process.stdin.flush()  # type: ignore[union-attr]
            deadline = time.monotonic() + 10
            while not os.readlink(f"/proc/{pid}/exe").endswith("/sleep") and time.monotonic() < deadline:
                time.sleep(0.001)
            return maps

        monkeypatch.setattr(procfs, "read_maps", read_maps_then_exec)
        with pytest.raises(pagewalk.ProcessGone, match="started another program") as info:
            pagewalk.snapshot(process.pid, freeze=False, method=method)  # type: ignore[arg-type]
        assert info.value.pid == process.pid
    finally:
        process.kill()
        process.wait()


def test_process_is_resumed_after_an_error(child: subprocess.Popen[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        assert thread_state(child.pid) in ("T", "t"), "the process should be stopped while it is read"
        raise KeyboardInterrupt

    monkeypatch.setattr(reader, "read_entries", interrupted)
    before = open_fds()
    with pytest.raises(KeyboardInterrupt):
        pagewalk.snapshot(child.pid, method="read")
    assert thread_state(child.pid) in ("S", "R")
    assert open_fds() <= before


def test_already_stopped_process_stays_stopped(child: subprocess.Popen[str]) -> None:
    os.kill(child.pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while thread_state(child.pid) != "T":
        assert time.monotonic() < deadline
        time.sleep(0.001)
    snap = pagewalk.snapshot(child.pid)
    assert snap.frozen
    assert thread_state(child.pid) == "T"
    os.kill(child.pid, signal.SIGCONT)


def test_snapshot_of_self_does_not_freeze() -> None:
    snap = pagewalk.snapshot(os.getpid())
    assert not snap.frozen
    assert snap.uss > 0


def test_errors_pickle_with_pid_and_message() -> None:
    error = pagewalk.ProcessGone("process 7 does not exist", 7)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is pagewalk.ProcessGone
    assert (copy.pid, str(copy)) == (7, "process 7 does not exist")


def test_non_linux_platform_is_unsupported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(pagewalk.Unsupported, match="Linux"):
        pagewalk.snapshot(os.getpid())


def test_core_does_not_import_pytest() -> None:
    code = "import sys, pagewalk, pagewalk.cli, pagewalk.delta; print('pytest' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
