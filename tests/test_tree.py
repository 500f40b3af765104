"""Tree snapshots and measurements against the kernel: a process family started on command (family_child.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType

import pytest
from family import Family
from puppet import Puppet

import pagewalk
from pagewalk.measure import SharingBelow, measure
from pagewalk.tree import TreeSnapshot, descendants
from pagewalk.units import PAGE_SIZE

MiB = 1 << 20
ROOT = os.geteuid() == 0


def rollup(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        values[name.rstrip(":")] = int(value) * 1024
    return values


def stop_all(pids: list[int]) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    for pid in pids:  # wait on what the kernel shows: every thread stopped
        while not all(
            Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
            for tid in os.listdir(f"/proc/{pid}/task")
        ):
            os.sched_yield()


def resume_all(pids: list[int]) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGCONT)


def test_tree_totals_are_the_sums_of_each_process_smaps_rollup(family: Family) -> None:
    family.do("map 16")
    family.fork()
    family.fork()
    family.do("child 0 write 4")
    pids = [family.pid, *descendants(family.pid)]
    assert len(pids) == 3
    # Shared library pages are mapped by every Python on the machine: their map counts, and so PSS, move as
    # other processes start and exit between the two reads, even with this tree stopped (by 3% under -n 2).
    # PSS is compared again on a fresh pair of reads until one pair saw the same map counts.
    for _attempt in range(5):
        stop_all(pids)  # the whole tree stays stopped while both sides read it
        try:
            tree = pagewalk.snapshot(family.pid, tree=True, counts=ROOT)
            rollups = [rollup(pid) for pid in pids]
        finally:
            resume_all(pids)
        assert isinstance(tree, TreeSnapshot)
        assert sorted(tree.processes) == sorted(pids)
        assert tree.rss == sum(r["Rss"] for r in rollups)
        assert tree.anon == sum(r["Anonymous"] for r in rollups)
        assert tree.swap == sum(r["Swap"] for r in rollups)
        if not ROOT:
            break
        assert tree.pss is not None
        assert tree.pss == sum(snap.pss or 0 for snap in tree.processes.values())
        pss_apart = abs(tree.pss - sum(r["Pss"] for r in rollups))
        if pss_apart < sum(r["Pss"] for r in rollups) // 100:
            break
    else:
        pytest.fail(f"tree PSS and the smaps_rollup sums stayed {pss_apart} bytes apart in 5 tries")
    for pid, snap in tree.processes.items():
        assert snap.rss == rollup_rss(rollups, pids, pid)


def rollup_rss(rollups: list[dict[str, int]], pids: list[int], pid: int) -> int:
    return rollups[pids.index(pid)]["Rss"]


# The tree's own library pages stop being its own while another process maps the same files, as another xdist
# worker's Python children do (three importing a few of the same modules took 72 KiB here), and come back when
# it exits: the tree's USS moves by them between snapshots, whatever its own pages do.
FILE_NOISE = MiB


@pytest.mark.root(reason="the tree's own frames need PFNs and page counts (CAP_SYS_ADMIN)")
@pytest.mark.parametrize("counts", [False, True], ids=["counts looked up", "counts from the snapshots"])
def test_tree_uss_counts_shared_frames_once_and_copies_apart(family: Family, counts: bool) -> None:
    family.do("map 64")
    alone = pagewalk.snapshot(family.pid, tree=True, counts=counts)
    family.fork()
    family.fork()
    forked = pagewalk.snapshot(family.pid, tree=True, counts=counts)
    # The 64 MiB is mapped by all three and by nobody else: the tree's own, counted once...
    assert alone.uss - FILE_NOISE <= forked.uss <= alone.uss + 4 * MiB  # plus the pages each child touched since
    # ...while each process's own USS leaves it out: all three share it.
    assert sum(snap.uss for snap in forked.processes.values()) <= alone.uss - 64 * MiB + FILE_NOISE
    family.do("child 1 write 32")
    written = pagewalk.snapshot(family.pid, tree=True, counts=counts)
    # One child wrote half of it: 32 MiB of copies are the tree's too (plus the few pages Python touches).
    assert 32 * MiB - FILE_NOISE <= written.uss - forked.uss <= 33 * MiB + FILE_NOISE
    child = sorted(written.processes)[2]
    assert written.processes[child].uss >= 32 * MiB


@pytest.mark.root(reason="the tree's own frames need PFNs and page counts (CAP_SYS_ADMIN)")
@pytest.mark.parametrize("counts", [False, True], ids=["counts looked up", "counts from the snapshots"])
def test_tree_uss_file_is_the_tree_s_own_page_cache(
    make_puppet: Callable[..., Puppet], tmp_path: Path, counts: bool
) -> None:
    size = 16 * MiB  # far above the library pages other processes may take or leave meanwhile (FILE_NOISE)
    path = tmp_path / "data"
    path.write_bytes(os.urandom(size))
    tree_root = make_puppet()
    mapped = tree_root.map(size // PAGE_SIZE, shared=True, path=path)
    tree_root.read(mapped)
    tree_root.fork(touch=[mapped])  # parent and child map the file's pages: shared, so neither's own USS
    alone = pagewalk.snapshot(tree_root.pid, tree=True, counts=counts)
    assert sum(snap.uss_file for snap in alone.processes.values()) < FILE_NOISE
    assert alone.uss_file >= size  # ...but the tree's own: nobody else maps them
    # The rest of the tree's own is anonymous, and holds each process's own anonymous pages at least.
    assert alone.uss - alone.uss_file >= sum(snap.uss - snap.uss_file for snap in alone.processes.values()) > 0
    outsider = make_puppet()
    outsider.read(outsider.map(size // PAGE_SIZE, shared=True, path=path))
    shared = pagewalk.snapshot(tree_root.pid, tree=True, counts=counts)
    # Another process mapping the file takes its pages out of the tree's own, USS and its file part alike;
    # the anonymous part does not move (but for the few pages the new child may still copy on write), so a
    # gate tells the change for page cache (file-only).
    assert alone.uss_file - shared.uss_file >= size - FILE_NOISE
    anonymous_change = (shared.uss - shared.uss_file) - (alone.uss - alone.uss_file)
    assert abs(anonymous_change) <= 16 * PAGE_SIZE
    outsider.close()
    again = pagewalk.snapshot(tree_root.pid, tree=True, counts=counts)
    assert again.uss_file - shared.uss_file >= size - FILE_NOISE


def test_tree_uss_without_page_counts_is_a_lower_bound_with_a_note(family: Family) -> None:
    if ROOT:
        pytest.skip("PFNs are visible to root: covered as the unprivileged user")
    family.do("map 8")
    family.fork()
    tree = pagewalk.snapshot(family.pid, tree=True)
    assert isinstance(tree, TreeSnapshot)
    assert tree.uss == sum(snap.uss for snap in tree.processes.values())
    assert any("lower bound" in note for note in tree.notes)
    assert tree.shared_with_parent is None


@pytest.mark.root(reason="sharing frames with the parent needs visible PFNs (CAP_SYS_ADMIN)")
def test_shared_with_parent_follows_copy_on_write(family: Family) -> None:
    family.do("map 64")
    first, second = family.fork(), family.fork()
    with measure(family.pid, tree=True) as m:
        family.do("child 1 write 48")
    shared = m.after.shared_with_parent
    assert isinstance(m.after, TreeSnapshot) and shared is not None
    assert family.pid not in shared  # the root has no parent in the tree
    assert shared[first] >= 64 * MiB
    assert 16 * MiB <= shared[second] <= shared[first] - 48 * MiB + MiB
    shares = m.assert_shared_with_parent_above(0.25)
    assert shares[first] > 0.9
    with pytest.raises(SharingBelow, match=rf"pid {second} .* share less than 90%|{second}"):
        m.assert_shared_with_parent_above(0.9)


def test_tree_measurement_lists_processes_started_and_exited(family: Family) -> None:
    family.do("map 4")
    leaving = family.fork()
    with measure(family.pid, tree=True) as m:
        family.do("child 0 exit")
        arriving = family.fork()
    assert m.delta.processes_exited == {leaving: m.before.processes[leaving].command}
    assert m.delta.processes_started == {arriving: m.after.processes[arriving].command}
    assert "family_child.py" in m.delta.processes_started[arriving]
    data = m.delta.to_dict(regions=False)
    assert data["processes_started"] == {str(arriving): m.after.processes[arriving].command}
    assert set(data["after"]["processes"]) == {str(family.pid), str(arriving)}


def test_a_member_pid_reused_within_a_clock_tick_is_a_new_process(family: Family) -> None:
    """Start times count clock ticks: a member whose pid another process took within the tick has the same one,
    and the pidfd inodes (Linux 6.9+) still tell the two apart."""
    child = family.fork()
    before = pagewalk.snapshot(family.pid, tree=True)
    member = before.processes[child]
    if member.pidfd_inode is None:
        pytest.skip("pidfds share one inode before Linux 6.9")
    other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        stranger = dataclasses.replace(
            pagewalk.snapshot(other.pid), pid=child, start_time=member.start_time, exe=member.exe
        )
    finally:
        other.kill()
        other.wait()
    unchanged = pagewalk.snapshot(family.pid, tree=True)
    assert isinstance(before, TreeSnapshot) and isinstance(unchanged, TreeSnapshot)
    after = dataclasses.replace(unchanged, processes=MappingProxyType({**unchanged.processes, child: stranger}))
    same = pagewalk.diff(before, unchanged)
    assert (same.processes_started, same.processes_exited) == ({}, {})
    delta = pagewalk.diff(before, after)
    assert delta.processes_started == {child: stranger.command}
    assert delta.processes_exited == {child: member.command}


def test_tree_measurement_sees_what_a_wrapper_hides(tmp_path: Path) -> None:
    # `sh -c` forks the program: measured alone, the shell grows by nothing and a note says why.
    ready = tmp_path / "ready"
    script = f"import time; x = bytearray(24 << 20); open({str(ready)!r}, 'w').close(); time.sleep(600)"
    shell = subprocess.Popen(["sh", "-c", f"{sys.executable} -c {json.dumps(script)}; true"])
    try:
        while not ready.exists():
            os.sched_yield()
        with measure(shell.pid) as alone:
            pass
        assert any("measured `sh`; its children hold" in note and "tree=True" in note for note in alone.notes)
        assert "use tree=True" in alone.details()
        with measure(shell.pid, tree=True) as whole:
            pass
        assert whole.notes == []
        assert whole.after.rss >= alone.after.rss + 24 * MiB
        assert len(whole.after.processes) == 2  # type: ignore[attr-defined]
    finally:
        for pid in descendants(shell.pid):
            os.kill(pid, signal.SIGKILL)
        shell.wait()


def test_cli_snapshot_and_delta_with_tree(family: Family) -> None:
    family.do("map 4")
    child = family.fork()
    command = [sys.executable, "-m", "pagewalk"]
    result = subprocess.run([*command, "snapshot", "--tree", "--json", str(family.pid)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data["processes"]) == {str(family.pid), str(child)}
    assert data["processes"][str(child)]["ppid"] == family.pid
    assert data["rss"] == sum(process["rss"] for process in data["processes"].values())
    text = subprocess.run([*command, "snapshot", "--tree", str(family.pid)], capture_output=True, text=True)
    assert text.returncode == 0 and re.search(rf"^ *{child}  +{family.pid}  ", text.stdout, re.MULTILINE)
    delta = subprocess.run(
        [*command, "delta", "--tree", "--for", "0", "--json", str(family.pid)], capture_output=True, text=True
    )
    assert delta.returncode == 0, delta.stderr
    data = json.loads(delta.stdout)
    assert data["processes_started"] == {} and data["processes_exited"] == {}
    assert set(data["after"]["processes"]) == {str(family.pid), str(child)}
    assert data["peak_rss"] >= data["after"]["rss"]


def test_a_child_forked_between_listing_and_stopping_is_caught(family: Family, monkeypatch: pytest.MonkeyPatch) -> None:
    # The race (a fork right after the descendants were listed) cannot be timed on demand: the first listing
    # is made to miss the newest child, as if it had been forked just after it.
    family.do("map 4")
    family.fork()
    late = family.fork()
    listings: list[list[int]] = []

    def listing_that_misses_the_late_child_once(pid: int) -> list[int]:
        found = descendants(pid)
        listings.append(found)
        return [child for child in found if child != late] if len(listings) == 1 else found

    monkeypatch.setattr(pagewalk.tree, "descendants", listing_that_misses_the_late_child_once)
    tree = pagewalk.snapshot(family.pid, tree=True)
    assert late in tree.processes  # type: ignore[attr-defined]
    assert len(listings) >= 2 and tree.frozen


def test_every_process_is_resumed_when_reading_the_tree_fails(family: Family, monkeypatch: pytest.MonkeyPatch) -> None:
    family.do("map 4")
    family.fork()
    family.fork()
    members = [family.pid, *descendants(family.pid)]
    read = pagewalk.tree.snapshot

    def failing_on_the_second_process(pid: int, **options: object) -> pagewalk.Snapshot:
        if pid == members[1]:
            states = {member: process_state(member) for member in members}
            assert all(state in "tT" for state in states.values()), states  # all stopped while reading
            raise RuntimeError("reading failed")
        return read(pid, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(pagewalk.tree, "snapshot", failing_on_the_second_process)
    with pytest.raises(RuntimeError, match="reading failed"):
        pagewalk.snapshot(family.pid, tree=True)
    assert all(process_state(member) not in "tT" for member in members)
    family.do("child 1 write 1")  # and they still answer


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
