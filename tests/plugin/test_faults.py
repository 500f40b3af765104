"""Spawned processes under faults: a missing program, a server that dies, a port someone else holds, and a
pytest that is sent SIGTERM or a second Ctrl-C during teardown. Real processes, real signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .test_spawn import ended, free_port

pytest_plugins = ["pytester"]

# A server that starts a child which leaves the process group (setsid), writes the pids, then crashes
# when told to (the file `crash` appears) or waits to be ended.
ESCAPING_SERVER = """
import os, subprocess, sys, time
from pathlib import Path

out = Path(sys.argv[1])
IGNORE_SIGTERM = "import os, signal, time; os.setsid(); signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
escaped = subprocess.Popen([sys.executable, "-c", IGNORE_SIGTERM])
while os.getpgid(escaped.pid) == os.getpgid(0):
    time.sleep(0.01)
out.with_suffix(".tmp").write_text(f"{os.getpid()} {escaped.pid}")
os.rename(out.with_suffix(".tmp"), out)
while not out.with_suffix(".crash").exists():
    time.sleep(0.01)
os._exit(3)
"""


def wait_for(condition: object, what: str) -> None:
    deadline = time.monotonic() + 60
    while not (callable(condition) and condition()):
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def test_a_missing_program_is_one_short_message(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        def test_missing(pagemap):
            pagemap.spawn(["no-such-program-anywhere", "--port", "1"])
        """)
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*SpawnFailed: spawn('no-such-program-anywhere --port 1'): no program*on PATH*"])
    output = result.stdout.str()
    assert "subprocess.py" not in output and "processes.py" not in output
    assert len(output.splitlines()) < 40


def test_a_server_exiting_during_the_measurement_gives_its_status_and_output(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import sys
        from pathlib import Path

        def test_dies(pagemap, tmp_path):
            go = tmp_path / "go"
            code = (
                "import os, sys, time; print('port in use', flush=True)\\n"
                f"while not os.path.exists({str(go)!r}): time.sleep(0.01)\\n"
                "raise SystemExit(4)"
            )
            proc = pagemap.spawn([sys.executable, "-c", code], ready="port in use")
            with pagemap.measure(proc):
                go.write_text("")
                proc.popen.wait()
        """)
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*ProcessEnded: *exited with status 4 during the measurement*", "*port in use*"])
    assert "zombie" not in result.stdout.str()
    assert "fixtures.py" not in result.stdout.str()


def test_a_server_that_exited_before_the_measurement_is_named(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import sys

        def test_gone(pagemap):
            proc = pagemap.spawn([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"])
            proc.popen.wait()
            with pagemap.measure(proc):
                pass
        """)
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*ProcessEnded: *was killed by signal 11 (SIGSEGV) before the measurement*"])


def test_a_ready_port_held_by_another_process_is_not_ready(pytester: pytest.Pytester) -> None:
    port = free_port()
    with socket.create_server(("127.0.0.1", port)) as holder:
        holder.listen()
        pytester.makepyfile(f"""
            import sys

            def test_port(pagemap):
                pagemap.spawn([sys.executable, "-c", "import time; time.sleep(1); raise SystemExit(1)"], ready={port})
            """)
        result = pytester.runpytest_subprocess()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [f"*exited with status 1 before it was ready*port {port} is held by pid {os.getpid()}*not by this process*"]
    )


def run_pytest_in_background(pytester: pytest.Pytester, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=pytester.path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


SERVER_TEST = """
import sys
from pathlib import Path

def test_server(pagemap):
    proc = pagemap.spawn([sys.executable, {script!r}, {out!r}], ready=Path({out!r}))
    Path({out!r} + ".measuring").write_text("")
    with pagemap.measure(proc):
        while True:
            pass
"""


@pytest.mark.parametrize(("interruption", "grace"), [("SIGTERM", "1"), ("SIGINT twice", "300")])
def test_an_interrupted_session_ends_the_spawned_tree(
    pytester: pytest.Pytester, tmp_path: Path, interruption: str, grace: str
) -> None:
    script, out = tmp_path / "server.py", tmp_path / "pids"
    script.write_text(ESCAPING_SERVER)
    pytester.makepyfile(SERVER_TEST.format(script=str(script), out=str(out)))
    session = run_pytest_in_background(pytester, f"--pagemap-grace={grace}")
    try:
        wait_for(Path(f"{out}.measuring").exists, "the test measures")
        pids = [int(pid) for pid in out.read_text().split()]
        if interruption == "SIGTERM":
            session.send_signal(signal.SIGTERM)
        else:
            session.send_signal(signal.SIGINT)
            # The server does not handle SIGTERM: once it is gone, teardown waits out the grace on its
            # child, which ignores SIGTERM. A second Ctrl-C then must not leave that child behind.
            wait_for(lambda: ended(pids[0]), "teardown signals the server")
            session.send_signal(signal.SIGINT)
        session.wait(timeout=120)
        wait_for(lambda: all(ended(pid) for pid in pids), "every process of the tree ends")
    finally:
        session.kill()
        session.wait()


def test_a_crashed_server_s_escaped_child_is_ended(pytester: pytest.Pytester, tmp_path: Path) -> None:
    script, out = tmp_path / "server.py", tmp_path / "pids"
    script.write_text(ESCAPING_SERVER)
    pytester.makepyfile(f"""
        import sys
        from pathlib import Path

        def test_crash(pagemap):
            proc = pagemap.spawn([sys.executable, {str(script)!r}, {str(out)!r}], ready=Path({str(out)!r}))
            escaped = int(Path({str(out)!r}).read_text().split()[1])
            while escaped not in proc.descendants:  # seen while the server ran
                pass
            Path({str(out)!r}).with_suffix(".crash").write_text("")
            proc.popen.wait()
        """)
    result = pytester.runpytest("--pagemap-grace=1")
    result.assert_outcomes(passed=1)
    pids = [int(pid) for pid in out.read_text().split()]
    wait_for(lambda: all(ended(pid) for pid in pids), "the escaped child ends")
