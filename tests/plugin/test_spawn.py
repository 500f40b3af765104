"""`pagemap.spawn` and `pagemap.attach` with real processes: readiness, output, teardown of whole process trees."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from pytest_pagemap import ProcessNotReady

pytest_plugins = ["pytester"]  # here, not in conftest.py: see conftest.py

PY = sys.executable


def python(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def listener(port: int, delay: float = 0.2) -> list[str]:
    return python(
        f"""
        import socket, time
        time.sleep({delay})
        server = socket.create_server(("127.0.0.1", {port}))
        while True:
            connection, _ = server.accept()
            connection.close()
        """
    )


def ended(pid: int) -> bool:
    """Gone, or a zombie waiting for a parent that is not ours to reap it: either way no longer running."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# --- readiness ------------------------------------------------------------------------------------------


def test_ready_regex_string_matches_a_stdout_line(pagemap):
    proc = pagemap.spawn(
        python("import time; time.sleep(0.2); print('listening on 8080'); time.sleep(60)"), ready=r"listening on \d+"
    )
    assert "listening on 8080" in proc.stdout
    assert proc.returncode is None


def test_ready_compiled_regex_matches_a_stderr_line(pagemap):
    proc = pagemap.spawn(
        python("import sys, time; print('up', file=sys.stderr); time.sleep(60)"), ready=re.compile(r"^up$")
    )
    assert proc.stderr == "up\n" and proc.stdout == ""


def test_ready_port_number(pagemap):
    port = free_port()
    pagemap.spawn(listener(port), ready=port)
    socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_ready_host_and_port(pagemap):
    port = free_port()
    pagemap.spawn(listener(port), ready=("127.0.0.1", port))
    socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_ready_path_appears(pagemap, tmp_path):
    marker = tmp_path / "ready"
    pagemap.spawn(
        python(f"import time, pathlib; time.sleep(0.2); pathlib.Path({str(marker)!r}).touch(); time.sleep(60)"),
        ready=marker,
    )
    assert marker.exists()


def test_ready_callable(pagemap, tmp_path):
    counter = tmp_path / "count"
    proc = pagemap.spawn(
        python(f"""
        import time, pathlib
        for n in range(100):
            pathlib.Path({str(counter)!r}).write_text(str(n))
            time.sleep(0.01)
        time.sleep(60)
        """),
        ready=lambda: counter.exists() and int(counter.read_text() or 0) >= 5,
    )
    assert int(counter.read_text() or 0) >= 5 and proc.returncode is None


def test_ready_callable_raising_oserror_means_not_yet(pagemap, tmp_path):
    path = tmp_path / "late"
    pagemap.spawn(
        python(f"import time, pathlib; time.sleep(0.2); pathlib.Path({str(path)!r}).write_text('x'); time.sleep(60)"),
        ready=lambda: path.read_text() == "x",
    )


def test_timeout_fails_with_the_output(pagemap):
    with pytest.raises(ProcessNotReady) as caught:
        pagemap.spawn(
            python("import sys, time; print('hello out'); print('hello err', file=sys.stderr); time.sleep(60)"),
            ready=r"never",
            timeout=0.5,
        )
    message = str(caught.value)
    assert "was not ready after 0.5 s (waiting for output matching 'never')" in message
    assert "    hello out" in message and "    hello err" in message


def test_early_exit_fails_with_status_and_output(pagemap):
    with pytest.raises(ProcessNotReady) as caught:
        pagemap.spawn(python("print('bye'); raise SystemExit(3)"), ready=free_port(), timeout=10)
    message = str(caught.value)
    assert "exited with status 3 before it was ready (waiting for TCP port" in message
    assert "    bye" in message


@pytest.mark.parametrize("ready", [True, 1.5, object()])
def test_ready_of_a_wrong_type_is_refused(pagemap, ready):
    with pytest.raises(TypeError, match="ready="):
        pagemap.spawn(python("import time; time.sleep(60)"), ready=ready)


# --- output, command forms, handle -------------------------------------------------------------------------


def test_large_output_does_not_block_the_process(pagemap):
    proc = pagemap.spawn(
        python("""
        import sys
        chunk = "x" * 1023 + "\\n"
        for _ in range(4096):
            sys.stdout.write(chunk)
            sys.stderr.write(chunk)
        print("done", flush=True)
        import time; time.sleep(60)
        """),
        ready=r"^done$",
        timeout=20,
    )
    assert len(proc.stdout) > 4 * 1024 * 1024 and len(proc.stderr) == 4 * 1024 * 1024


def test_string_command_env_and_cwd(pagemap, tmp_path):
    proc = pagemap.spawn(
        f"{PY} -c 'import os, time; "
        'print(os.getcwd(), os.environ["PAGEMAP_TEST"], "PATH" in os.environ); time.sleep(60)\'',
        env={"PAGEMAP_TEST": "hello"},
        cwd=tmp_path,
        ready="hello",
    )
    assert proc.stdout == f"{tmp_path} hello True\n"  # env adds to the inherited environment


def test_spawned_process_leads_its_own_session(pagemap):
    proc = pagemap.spawn(python("import time; time.sleep(60)"))
    assert os.getsid(proc.pid) == proc.pid and os.getpgid(proc.pid) == proc.pid
    assert proc.label.startswith("python") and "-c" in proc.label


def test_stop_ends_the_process_and_reports_the_signal(pagemap):
    proc = pagemap.spawn(python("import time; time.sleep(60)"))
    assert proc.stop() == -signal.SIGTERM
    assert proc.returncode == -signal.SIGTERM


def test_measure_a_spawned_process_by_handle_and_by_pid(pagemap):
    proc = pagemap.spawn(python("print('ready', flush=True); import time; time.sleep(60)"), ready="ready")
    with pagemap.measure(proc) as by_handle:
        pass
    with pagemap.measure(proc.pid) as by_pid:
        pass
    assert by_handle.label == proc.label and by_handle.after.uss > 0
    assert by_pid.pid == proc.pid and by_pid.label.startswith("python")
    assert pagemap.measurements == [by_handle, by_pid]


def test_attach_measures_a_process_the_test_owns(pagemap):
    own = subprocess.Popen(python("import time; time.sleep(60)"))
    try:
        handle = pagemap.attach(own.pid)
        while "-c" not in psutil.Process(own.pid).cmdline():  # until the child has exec'd
            time.sleep(0.01)
        assert handle.pid == own.pid and "python" in handle.label
        with pagemap.measure(handle) as m:
            pass
        assert m.label == handle.label
    finally:
        own.kill()
        own.wait()


def test_attach_to_a_missing_process():
    from pytest_pagemap import AttachedProcess

    with pytest.raises(ProcessLookupError, match="no process has pid"):
        AttachedProcess(2**22 + 12345)


# --- teardown: no process outlives its test ----------------------------------------------------------------

TREE = """
import os, subprocess, sys, time
from pathlib import Path


out = Path(sys.argv[1])
IGNORE_SIGTERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
stubborn = subprocess.Popen([sys.executable, "-c", IGNORE_SIGTERM])
plain = subprocess.Popen(["sleep", "300"])
escaped = subprocess.Popen([sys.executable, "-c", "import os, time; os.setsid(); time.sleep(300)"])
time.sleep(0.3)  # let the escaped one leave the group and the stubborn one ignore SIGTERM
grandchild = subprocess.Popen(["sh", "-c", "sleep 300 & echo $! > %s.inner; wait" % out])
while not Path(f"{out}.inner").exists():
    time.sleep(0.01)
pids = [os.getpid(), stubborn.pid, plain.pid, escaped.pid, grandchild.pid, int(Path(f"{out}.inner").read_text())]
Path(f"{out}.tmp").write_text(" ".join(map(str, pids)))
os.rename(f"{out}.tmp", out)
time.sleep(300)
"""


@pytest.mark.parametrize("outcome", ["passes", "fails"])
def test_teardown_ends_the_whole_process_tree(pytester, tmp_path, outcome):
    pids_file = tmp_path / "pids"
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    pytester.makepyfile(f"""
        import sys
        from pathlib import Path

        def test_tree(pagemap):
            proc = pagemap.spawn([sys.executable, {str(script)!r}, {str(pids_file)!r}], ready=Path({str(pids_file)!r}))
            with pagemap.measure(proc) as m:
                pass
            assert {outcome == "passes"}
        """)
    started = time.monotonic()
    result = pytester.runpytest("--pagemap-grace=0.5")
    result.assert_outcomes(passed=1 if outcome == "passes" else 0, failed=0 if outcome == "passes" else 1)
    assert time.monotonic() - started < 10
    pids = [int(pid) for pid in pids_file.read_text().split()]
    assert len(pids) == 6
    deadline = time.monotonic() + 2
    while not all(ended(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in pids if not ended(pid)] == []


def test_processes_end_even_when_ready_times_out(pytester, tmp_path):
    pid_file = tmp_path / "pid"
    pytester.makepyfile(f"""
        import sys

        def test_never_ready(pagemap):
            code = (
                "import os, pathlib, time; "
                "pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid())); time.sleep(300)"
            )
            pagemap.spawn([sys.executable, "-c", code], ready="never", timeout=0.5)
        """)
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*ProcessNotReady*was not ready after 0.5 s (waiting for output matching 'never')*"])
    assert ended(int(pid_file.read_text()))
