"""Peak RSS and process trees through the pytest front: run(), measure(tree=True), markers, the summary."""

from __future__ import annotations

import json

pytest_plugins = ["pytester"]  # here, not in conftest.py: see conftest.py

TRANSIENT = """
import mmap
import sys

import pytest


def transient(mib):
    area = mmap.mmap(-1, mib << 20)
    area.write(b"x" * (mib << 20))
    area.close()
    return mib


def test_run_catches_the_peak(pagemap):
    result = pagemap.run(transient, 80)
    m = result.measurement
    assert abs(m.delta.rss_growth) < (4 << 20)
    assert m.peak_rss_growth >= 150 << 20  # the 80 MiB map and the 80 MiB bytes written into it
    m.assert_peak_rss_growth_below("400 MiB")


@pytest.mark.pagemap(peak_rss_growth_below="64 MiB")
def test_marker_limit_on_the_peak(pagemap):
    pagemap.run(transient, 80)
"""


def test_run_peak_and_a_marker_limit_on_it(pytester):
    pytester.makepyfile(TRANSIENT)
    report = pytester.path / "report.json"
    result = pytester.runpytest("--pagemap", f"--pagemap-json={report}", "--pagemap-summary=full")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*MemoryLimitExceeded: Peak RSS growth of 'test_run_peak_and_a_marker_limit_on_it.transient()' "
            "(pid *) limited to 64.0 MiB but measured 1*.* MiB*",
        ]
    )
    result.stdout.fnmatch_lines(["*transient()' (pid *): USS *, peak RSS * MiB"])
    data = json.loads(report.read_text())
    for measurement in data["measurements"]:
        assert measurement["metrics"]["peak_rss_growth"] >= 150 << 20
        assert measurement["metrics"]["peak_rss"] >= measurement["metrics"]["peak_rss_growth"]


WRAPPED = """
import json
import sys


SERVER = (
    "import time; x = bytearray(24 << 20); x[::4096] = b'y' * len(x[::4096]); print('up', flush=True); "
    "time.sleep(600)"
)


def test_wrapper_alone(pagemap):
    shell = pagemap.spawn(["sh", "-c", f"{sys.executable} -c {json.dumps(SERVER)}; true"], ready="up")
    with pagemap.measure(shell) as m:
        pass
    assert any("use tree=True" in note for note in m.notes)


def test_wrapper_as_a_tree(pagemap):
    shell = pagemap.spawn(["sh", "-c", f"{sys.executable} -c {json.dumps(SERVER)}; true"], ready="up")
    with pagemap.measure(shell, tree=True) as m:
        pass
    assert m.notes == []
    assert m.after.rss > 24 << 20
    assert len(m.after.processes) == 2
    m.assert_uss_growth_below("1 MiB")
"""


def test_wrapper_note_in_the_summary_and_tree_measurement(pytester):
    pytester.makepyfile(WRAPPED)
    result = pytester.runpytest("--pagemap")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*note: measured `sh`; its children hold *.* MiB (1 descendant, RSS): use tree=True"])
