"""The gate on real processes, in inner pytest sessions: it neither passes a regression silently nor fails
unchanged code. Keys stay stable when command lines change, every gated metric is measured or the session
says it cannot gate, the noise floor holds, neighbours mapping the same files move only the file-backed part
of USS, and `accessed_anon` counts nothing for a process that did not run."""

from __future__ import annotations

import re

import pytest

from pagewalk import capabilities
from pagewalk.baseline import load_record

from .support import privileged

pytest_plugins = ["pytester"]  # here, not in conftest.py: see conftest.py

KiB, MiB = 1 << 10, 1 << 20

# A server: listens on the port its command line names, optionally maps and reads a file first (as a program
# maps its libraries), and for each connection allocates, touches and keeps as many bytes as the client sends.
HOLDER = """
import mmap, socket, sys

port = int(sys.argv[1])
if len(sys.argv) > 2:
    with open(sys.argv[2], "rb") as data:
        mapped = mmap.mmap(data.fileno(), 0, prot=mmap.PROT_READ)
    total = sum(mapped[offset] for offset in range(0, len(mapped), 4096))  # fault every page in
kept = []
server = socket.create_server(("127.0.0.1", port))
while True:
    connection, _ = server.accept()
    with connection, connection.makefile("rw") as stream:
        line = stream.readline()
        if not line:
            continue  # a readiness probe: connected, sent nothing
        block = bytearray(int(line))
        block[::4096] = b"x" * len(block[::4096])
        kept.append(block)
        stream.write("ok\\n")
        stream.flush()
"""

HELPERS = """
import os, signal, socket, sys
from pathlib import Path

import pytest

HOLDER = str(Path(__file__).with_name("holder.py"))


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve(pagemap, *extra):
    port = free_port()  # a new port each run, so a new command line each run
    return pagemap.spawn([sys.executable, HOLDER, str(port), *extra], ready=port), port


def ask(port, nbytes):
    with socket.create_connection(("127.0.0.1", port)) as connection, connection.makefile("rw") as stream:
        stream.write(f"{nbytes}\\n")
        stream.flush()
        assert stream.readline() == "ok\\n"
"""


@pytest.fixture
def servers(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makepyfile(holder=HOLDER)
    monkeypatch.delenv("NEIGHBOUR", raising=False)
    return pytester


def outcome(result: pytest.RunResult) -> str:
    output = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in output and "INTERNALERROR" not in output, output
    return output


# --- stable keys ----------------------------------------------------------------------------------------

TWO_UNLABELLED = (
    HELPERS
    + """

def test_server(pagemap):
    server, port = serve(pagemap)
    work = int(os.environ["WORK"])
    with pagemap.measure(server):  # unlabelled: labelled by its command line, which holds the port
        ask(port, work)
    with pagemap.measure(server):
        ask(port, work)
"""
)


def test_unlabelled_measurements_on_a_free_port_are_caught_at_twice_the_work(servers, monkeypatch):
    servers.makepyfile(test_server=TWO_UNLABELLED)
    monkeypatch.setenv("WORK", str(4 * MiB))
    servers.runpytest("--pagemap-save=base").assert_outcomes(passed=1)
    (path,) = (servers.path / ".pagemap").glob("*.json")
    keys = [m.key for m in load_record(path).measurements]
    assert keys == ["test_server.py::test_server > #1", "test_server.py::test_server > #2"]

    same = servers.runpytest("--pagemap-compare=base", "--pagemap-fail=anon:5%")
    assert same.ret == pytest.ExitCode.OK, outcome(same)
    assert "new, not in the baseline" not in outcome(same) and "gate: passed, 2 metrics" in outcome(same)

    monkeypatch.setenv("WORK", str(8 * MiB))
    doubled = servers.runpytest("--pagemap-compare=base", "--pagemap-fail=anon:5%")
    assert doubled.ret == pytest.ExitCode.TESTS_FAILED, outcome(doubled)
    doubled.stdout.fnmatch_lines(
        [
            "2 regressions beyond their threshold:",
            "*REGRESSED  test_server.py::test_server > #1  anon * anon:5%",
            "*REGRESSED  test_server.py::test_server > #2  anon * anon:5%",
            "gate: FAILED, 2 regressions, exit code 1",
        ]
    )


def test_a_baseline_keyed_by_command_lines_still_gates(servers, monkeypatch):
    """Baselines saved before measurements were keyed by position held command lines: matched by position."""
    servers.makepyfile(test_server=TWO_UNLABELLED)
    monkeypatch.setenv("WORK", str(4 * MiB))
    servers.runpytest("--pagemap-save=base").assert_outcomes(passed=1)
    (path,) = (servers.path / ".pagemap").glob("*.json")
    text = path.read_text()
    for ordinal, port in (("#1", 41234), ("#2", 41234)):  # as an older version keyed them
        text = text.replace(f"test_server > {ordinal}", f"test_server > python holder.py {port} {ordinal[1]}", 1)
    path.write_text(text)
    monkeypatch.setenv("WORK", str(8 * MiB))
    result = servers.runpytest("--pagemap-compare=base", "--pagemap-fail=anon:5%")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, outcome(result)
    result.stdout.fnmatch_lines(["matched by position, as the baseline keys them by command line *", "2 regressions *"])


def test_a_baseline_measurement_without_counterpart_fails_the_gate(servers, monkeypatch):
    servers.makepyfile(test_server=TWO_UNLABELLED)
    monkeypatch.setenv("WORK", str(MiB))
    servers.runpytest("--pagemap-save=base").assert_outcomes(passed=1)
    servers.makepyfile(
        test_server=TWO_UNLABELLED.replace("    with pagemap.measure(server):\n        ask(port, work)\n", "", 1)
    )
    result = servers.runpytest("--pagemap-compare=base", "--pagemap-fail=anon:5%")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, outcome(result)
    result.stdout.fnmatch_lines(
        [
            "UNMATCHED: 'test_server.py::test_server > #2' of the baseline matches no measurement of "
            "test_server.py::test_server now *",
            "gate: FAILED, 1 unmatched baseline measurement, exit code 1",
            "*= 1 passed, 1 memory unmatched in *",
        ]
    )


# --- every gated metric is measured ---------------------------------------------------------------------

GROWING = (
    HELPERS
    + """

def test_server(pagemap):
    server, port = serve(pagemap)
    with pagemap.measure(server):  # no counts=True: PSS is not asked for
        ask(port, int(os.environ["WORK"]))
"""
)


def test_a_pss_gate_on_a_baseline_without_pss_cannot_gate(servers, monkeypatch):
    servers.makepyfile(test_server=GROWING)
    monkeypatch.setenv("WORK", str(4 * MiB))
    servers.runpytest("--pagemap-save=base").assert_outcomes(passed=1)
    monkeypatch.setenv("WORK", str(12 * MiB))
    result = servers.runpytest("--pagemap-compare=base", "--pagemap-fail=pss:5%")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, outcome(result)
    output = outcome(result)
    assert "0 regressed" not in output
    assert re.search(
        r"(CANNOT GATE: pss is not recorded in the baseline for 1 measurement: "
        r"test_server.py::test_server|cannot gate pss:5%: pss cannot be measured here)",
        output,
    ), output


@privileged
def test_a_pss_gate_measures_pss_without_counts(servers, monkeypatch):
    servers.makepyfile(test_server=GROWING)
    monkeypatch.setenv("WORK", str(4 * MiB))
    servers.runpytest("--pagemap-save=base", "--pagemap-fail=pss:5%").assert_outcomes(passed=1)
    (path,) = (servers.path / ".pagemap").glob("*.json")
    assert load_record(path).measurements[0].metrics["pss"]  # recorded though the test never asked for it
    monkeypatch.setenv("WORK", str(12 * MiB))
    result = servers.runpytest("--pagemap-compare=base", "--pagemap-fail=pss:5%")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, outcome(result)
    result.stdout.fnmatch_lines(["*REGRESSED  test_server.py::test_server  pss * pss:5%"])


# --- the noise floor ------------------------------------------------------------------------------------


def test_the_noise_floor(servers, monkeypatch):
    servers.makepyfile(test_server=GROWING)
    monkeypatch.setenv("WORK", str(256 * KiB))
    servers.runpytest("--pagemap-save=base").assert_outcomes(passed=1)
    monkeypatch.setenv("WORK", str(256 * KiB + 32 * KiB))  # eight pages more: +12% of the growth
    within = servers.runpytest("--pagemap-compare=base", "--pagemap-fail=anon_growth:1%")
    assert within.ret == pytest.ExitCode.OK, outcome(within)
    for args in (["--pagemap-noise=4KiB"], ["-o", "pagemap_noise=4 KiB"], []):
        threshold = "anon_growth:1%" if args else "anon_growth:1%,noise=4KiB"
        beyond = servers.runpytest("--pagemap-compare=base", f"--pagemap-fail={threshold}", *args)
        assert beyond.ret == pytest.ExitCode.TESTS_FAILED, outcome(beyond)
        beyond.stdout.fnmatch_lines(["*REGRESSED  test_server.py::test_server  anon_growth *"])
    bad = servers.runpytest("--pagemap-compare=base", "--pagemap-noise=lots")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*argument --pagemap-noise: 'lots': cannot read 'lots' as a size*"])


# --- neighbours -----------------------------------------------------------------------------------------

WITH_NEIGHBOUR = (
    HELPERS
    + """

def test_server(pagemap):
    data = str(Path(__file__).with_name("data.bin"))
    server, port = serve(pagemap, data)  # maps and reads the file, as a program does its libraries
    if os.environ.get("NEIGHBOUR"):
        serve(pagemap, data)  # another process of the same program: the file's pages are shared
    with pagemap.measure(server):
        ask(port, int(os.environ["WORK"]))
"""
)


def test_a_neighbour_moves_file_backed_uss_only_and_an_anonymous_regression_still_fails(servers, monkeypatch):
    (servers.path / "data.bin").write_bytes(bytes(range(256)) * (32 * MiB // 256))
    servers.makepyfile(test_server=WITH_NEIGHBOUR)
    monkeypatch.setenv("WORK", str(4 * MiB))
    monkeypatch.setenv("NEIGHBOUR", "1")
    servers.runpytest("--pagemap-save=base").assert_outcomes(passed=1)
    monkeypatch.delenv("NEIGHBOUR")  # the neighbour is gone: the file's 32 MiB are this process's alone now
    alone = servers.runpytest("--pagemap-compare=base", "--pagemap-fail=uss:5%")
    assert alone.ret == pytest.ExitCode.OK, outcome(alone)
    alone.stdout.fnmatch_lines(
        [
            "1 USS change beyond the threshold made of file-backed pages only, *",
            "*file only  test_server.py::test_server  uss * +3?.* MiB (+*%)  anon *, file +3?.* MiB  uss:5%",
            "gate: passed, *",
        ]
    )
    explicit = servers.runpytest("--pagemap-compare=base", "--pagemap-fail=uss:5%", "--pagemap-fail=uss_file:5%")
    assert explicit.ret == pytest.ExitCode.TESTS_FAILED, outcome(explicit)
    explicit.stdout.fnmatch_lines(["*REGRESSED  test_server.py::test_server  uss_file *"])
    monkeypatch.setenv("WORK", str(12 * MiB))  # and the code allocates 8 MiB more
    regressed = servers.runpytest("--pagemap-compare=base", "--pagemap-fail=uss:5%")
    assert regressed.ret == pytest.ExitCode.TESTS_FAILED, outcome(regressed)
    regressed.stdout.fnmatch_lines(["*REGRESSED  test_server.py::test_server  uss * anon +8.* MiB, file +3?.* MiB *"])


LEAVING_NEIGHBOUR = (
    HELPERS
    + """

def test_server(pagemap):
    data = str(Path(__file__).with_name("data.bin"))
    server, port = serve(pagemap, data)
    neighbour, _ = serve(pagemap, data)  # another process of the same program: the file's pages are shared
    with pagemap.measure(server):
        ask(port, int(os.environ["WORK"]))
        if os.environ.get("LEAVE"):
            neighbour.stop()  # it exits during the block: the file's pages become the server's alone
"""
)


def test_a_neighbour_leaving_during_the_block_moves_file_backed_uss_growth_only(servers, monkeypatch):
    (servers.path / "data.bin").write_bytes(bytes(range(256)) * (32 * MiB // 256))
    servers.makepyfile(test_server=LEAVING_NEIGHBOUR)
    monkeypatch.setenv("WORK", str(4 * MiB))
    servers.runpytest("--pagemap-save=base").assert_outcomes(passed=1)
    monkeypatch.setenv("LEAVE", "1")
    left = servers.runpytest("--pagemap-compare=base", "--pagemap-fail=uss_growth:+1MiB")
    assert left.ret == pytest.ExitCode.OK, outcome(left)
    left.stdout.fnmatch_lines(
        [
            "*made of file-backed pages only, * (not failing; gate uss_file_growth to fail on them):",
            "*file only  test_server.py::test_server  uss_growth * +3?.* MiB *  anon *, file +3?.* MiB  uss_growth:+1*",
            "gate: passed, *",
        ]
    )
    explicit = servers.runpytest("--pagemap-compare=base", "--pagemap-fail=uss_file_growth:+1MiB")
    assert explicit.ret == pytest.ExitCode.TESTS_FAILED, outcome(explicit)
    monkeypatch.setenv("WORK", str(12 * MiB))  # and the code allocates 8 MiB more
    regressed = servers.runpytest("--pagemap-compare=base", "--pagemap-fail=uss_growth:+1MiB")
    assert regressed.ret == pytest.ExitCode.TESTS_FAILED, outcome(regressed)
    regressed.stdout.fnmatch_lines(["*REGRESSED  test_server.py::test_server  uss_growth * anon +8.* MiB, file +3?.*"])


# --- accessed_anon --------------------------------------------------------------------------------------

STOPPED = (
    HELPERS
    + """

def stopped(pid):
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "tT"


@pytest.mark.pagemap(accessed_anon_below=0)
def test_stopped_process_accesses_nothing(pagemap):
    server, port = serve(pagemap)
    ask(port, 4 << 20)
    other, other_port = serve(pagemap)  # the same program, running through the block
    os.kill(server.pid, signal.SIGSTOP)
    while not stopped(server.pid):
        os.sched_yield()
    try:
        with pagemap.measure(server) as m:  # accessed=True: the marker's limit needs it
            for _ in range(20):
                ask(other_port, 256 << 10)
    finally:
        os.kill(server.pid, signal.SIGCONT)
    print("accessed", m.delta.accessed, "accessed_anon", m.delta.accessed_anon)
    assert m.delta.accessed_anon == 0
"""
)


def test_accessed_anon_is_zero_for_a_process_stopped_through_the_block(servers):
    servers.makepyfile(test_stopped=STOPPED)
    for _ in range(3):  # the measurement reads the process's command line: never counted against it
        result = servers.runpytest("--pagemap", "-s")
        assert result.ret == pytest.ExitCode.OK, outcome(result)
        result.stdout.fnmatch_lines(["*accessed * accessed_anon 0"])


def test_a_written_gate_on_a_kernel_without_soft_dirty_is_a_usage_error_at_start_up(servers, monkeypatch):
    if capabilities().soft_dirty:
        pytest.skip("this kernel tracks writes: a written gate works here")
    monkeypatch.setenv("WORK", str(MiB))
    servers.makepyfile(test_server=GROWING)
    servers.runpytest("--pagemap-save=base").assert_outcomes(passed=1)
    result = servers.runpytest("--pagemap-compare=base", "--pagemap-fail=written:5%")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: cannot gate written:5%: written cannot be measured here (*CONFIG_MEM_SOFT_DIRTY*); gate a metric *"]
    )
    assert "passed" not in result.stdout.str()  # refused before running anything
