"""The puppet helper itself (tests/puppet.py, tests/puppet_child.py): commands, errors, and clean-up."""

from __future__ import annotations

import json
import mmap
import os
import signal
import subprocess
import sys
import time

import pytest
from puppet import CHILD, HUGE_ALIGN, Mapping, Puppet, PuppetError, group_members

PAGE = mmap.PAGESIZE


def maps_lines(pid: int) -> list[tuple[int, int, str]]:
    lines = []
    with open(f"/proc/{pid}/maps", encoding="utf-8") as maps:
        for line in maps:
            span, perms = line.split()[:2]
            start, end = (int(value, 16) for value in span.split("-"))
            lines.append((start, end, perms))
    return lines


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # dead, not yet reaped
    except FileNotFoundError:
        return True


def test_child_uses_the_standard_library_only() -> None:
    """The child runs with no site-packages (-S) and isolated (-I): as inside a minimal test guest."""
    commands = [{"cmd": "ping"}, {"cmd": "map", "pages": 4}, {"cmd": "write", "id": 1}, {"cmd": "exit"}]
    result = subprocess.run(
        [sys.executable, "-I", "-S", str(CHILD)],
        input="".join(json.dumps(command) + "\n" for command in commands),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert [answer["ok"] for answer in answers] == [True] * 5, result.stderr
    assert answers[0]["ready"] and answers[2]["size"] == 4 * PAGE and answers[3]["pages"] == 4


def test_map_fenced_and_aligned(puppet: Puppet) -> None:
    """A mapping has a PROT_NONE page either side (it never merges with a neighbour) and can be aligned."""
    area = puppet.map(8)
    huge = puppet.map(4, thp=True)
    assert huge.address % HUGE_ALIGN == 0
    lines = maps_lines(puppet.pid)
    for mapping in (area, huge):
        index = next(i for i, line in enumerate(lines) if line[0] == mapping.address)
        assert lines[index][1] == mapping.end and lines[index][2] == "rw-p"
        assert lines[index - 1][1] == mapping.address and lines[index - 1][2] == "---p"
        assert lines[index + 1][0] == mapping.end and lines[index + 1][2] == "---p"
    puppet.munmap(area)
    assert not any(start <= area.address < end for start, end, _ in maps_lines(puppet.pid))


def test_write_read_fill_and_file_mappings(puppet: Puppet, tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "file")
    with open(path, "wb") as file:
        file.write(bytes(4 * PAGE))
    shared = puppet.map(4, path=path, shared=True)
    puppet.fill(shared, [1], value=0x11)
    puppet.write(shared, range(2, 4))
    puppet.read(shared)
    with open(path, "rb") as file:
        data = file.read()
    assert data[:PAGE] == bytes(PAGE) and data[PAGE : 2 * PAGE] == b"\x11" * PAGE
    third, fourth = data[2 * PAGE : 2 * PAGE + 16], data[3 * PAGE : 3 * PAGE + 16]
    assert third != fourth and any(third) and any(fourth)  # distinct, non-zero content per page


def test_errors_come_back_as_exceptions(puppet: Puppet) -> None:
    area = puppet.map(2)
    with pytest.raises(PuppetError, match="no mapping"):
        puppet.write(Mapping(99, area.address, PAGE, PAGE))
    with pytest.raises(PuppetError, match="outside") as excinfo:
        puppet.read(area, [5])
    assert excinfo.value.remote_type == "CommandError"
    with pytest.raises(PuppetError) as excinfo:
        puppet.madvise(area, 9999)
    assert excinfo.value.errno == 22
    with pytest.raises(PuppetError, match="unknown command"):
        puppet.call("no_such_command")
    assert puppet.ping()["pid"] == puppet.pid  # still serving


def test_prctl_name(puppet: Puppet) -> None:
    area = puppet.map(4)
    try:
        puppet.prctl_name(area, "puppet-test")
    except PuppetError as exc:
        if exc.errno == 22:
            pytest.skip("this kernel cannot name anonymous memory (CONFIG_ANON_VMA_NAME)")
        raise
    with open(f"/proc/{puppet.pid}/maps", encoding="utf-8") as maps:
        assert "[anon:puppet-test]" in maps.read()


def test_stopped_stops_the_whole_group(puppet: Puppet) -> None:
    child = puppet.fork()
    assert puppet.members() == sorted([puppet.pid, child])
    with puppet.stopped():
        for pid in (puppet.pid, child):
            with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
                assert stat.read().rsplit(")", 1)[1].split()[0] == "T"
    assert puppet.ping()["children"] == [child]


def test_forked_children_end_with_the_puppet() -> None:
    with Puppet() as puppet:
        children = [puppet.fork(), puppet.fork()]
        os.kill(children[0], signal.SIGKILL)  # reaped by the puppet at once
        deadline = time.monotonic() + 10
        while puppet.ping()["children"] != children[1:]:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        group = puppet.pgid
    assert all(gone(pid) for pid in [puppet.pid, *children])
    assert group_members(group) == []


def test_a_killed_puppet_takes_its_children_along() -> None:
    """Even when the puppet dies without cleaning up, its children die (PR_SET_PDEATHSIG) and close() checks."""
    puppet = Puppet()
    children = [puppet.fork(), puppet.fork()]
    os.kill(puppet.pid, signal.SIGKILL)
    puppet.process.wait()
    with pytest.raises(PuppetError, match=r"gone|exited"):
        puppet.ping()
    puppet.close()  # raises if any process of the group outlives it
    assert all(gone(pid) for pid in children)
