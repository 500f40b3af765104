"""Readers of /proc text files, against the files themselves."""

from __future__ import annotations

import signal
import subprocess
import time

from pagewalk import procfs


def test_status_fields_are_the_values_of_their_lines() -> None:
    # A stopped process: its context switch counts, the status file's last lines, stay as they are.
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        sleeper.send_signal(signal.SIGSTOP)
        path = f"/proc/{sleeper.pid}/status"
        deadline = time.monotonic() + 10
        while procfs.status_field(sleeper.pid, "State") != "T (stopped)":
            assert time.monotonic() < deadline, "sleep did not stop"
        with open(path) as status:
            lines = [line.rstrip("\n").partition(":") for line in status]
        expected = {name: value.strip() for name, _, value in lines}
        first, last = lines[0][0], lines[-1][0]  # the text's edges: no newline before the first, maybe none after
        names = (first, "VmRSS", "Threads", last, "NoSuchLine", "Vm")
        found = procfs.status_fields(sleeper.pid, names)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert list(found) == list(names)
    assert {name: found[name] for name in (first, "VmRSS", "Threads", last)} == {
        name: expected[name] for name in (first, "VmRSS", "Threads", last)
    }
    assert found["NoSuchLine"] is None and found["Vm"] is None  # a prefix of other names is no line of its own
    assert found["VmRSS"] is not None and found["VmRSS"].endswith(" kB")
