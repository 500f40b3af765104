"""Readers of /proc text files, against the files themselves."""

from __future__ import annotations

import os

from pagewalk import procfs


def test_status_fields_are_the_values_of_their_lines() -> None:
    with open(f"/proc/{os.getpid()}/status") as status:
        lines = [line.rstrip("\n").partition(":") for line in status]
    expected = {name: value.strip() for name, _, value in lines}
    first, last = lines[0][0], lines[-1][0]  # the text's edges: no newline before the first, maybe none after the last
    names = (first, "VmRSS", "Threads", last, "NoSuchLine", "Vm")
    found = procfs.status_fields(os.getpid(), names)
    assert list(found) == list(names)
    assert {name: found[name] for name in (first, last, "Threads")} == {
        name: expected[name] for name in (first, last, "Threads")
    }
    assert found["NoSuchLine"] is None and found["Vm"] is None  # a prefix of other names is no line of its own
    assert found["VmRSS"] is not None and found["VmRSS"].endswith(" kB")
