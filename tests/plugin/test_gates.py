"""Baselines and gates through inner pytest sessions: save, compare, thresholds, tolerance, repeat, reports, xdist."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from pagewalk.baseline import SCHEMA, load_record
from pagewalk.ci_reports import REPORT_SCHEMA

from .support import GROW

pytest_plugins = ["pytester"]  # here, not in conftest.py: see conftest.py

MiB = 1 << 20

# `test_growing` allocates what GROW_BYTES says: set it higher on the second run to make a regression.
WORKLOAD = (
    GROW
    + """
import os


def test_steady(pagemap):
    pagemap.run(grow, 1 << 20)


def test_growing(pagemap):
    pagemap.run(grow, int(os.environ.get("GROW_BYTES", 1 << 20)))


def test_without_measurement():
    pass
"""
)


@pytest.fixture
def workload(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("GROW_BYTES", str(MiB))
    pytester.makepyfile(test_workload=WORKLOAD)
    return pytester


def saved_records(pytester: pytest.Pytester) -> list[Path]:
    return sorted((pytester.path / ".pagemap").glob("*.json"))


def no_traceback(result: pytest.RunResult) -> None:
    output = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in output and "INTERNALERROR" not in output, output


# --- save and compare -----------------------------------------------------------------------------------


def test_save_then_compare_passes(workload):
    saved = workload.runpytest("--pagemap-save=base")
    saved.assert_outcomes(passed=3)
    saved.stdout.fnmatch_lines(["*= pagemap records =*", "saved 2 measurements as baseline .pagemap/0001_base.json"])
    (path,) = saved_records(workload)
    data = json.loads(path.read_text())
    assert data["schema"] == SCHEMA and data["version"] == 1
    assert [m["key"] for m in data["measurements"]] == [
        "test_workload.py::test_steady",
        "test_workload.py::test_growing",
    ]
    assert set(data["measurements"][0]["metrics"]) == {
        "uss", "uss_file", "rss", "pss", "swap", "anon", "uss_growth", "uss_file_growth", "rss_growth", "anon_growth",
        "written", "accessed", "accessed_anon", "peak_rss", "peak_rss_growth",
    }  # fmt: skip
    assert data["context"]["page_size"] > 0 and "kernel" in data["context"]

    compared = workload.runpytest("--pagemap-compare=base", "--pagemap-fail=uss:5%", "--pagemap-fail=anon_growth:10%")
    compared.assert_outcomes(passed=3)
    assert compared.ret == pytest.ExitCode.OK
    compared.stdout.fnmatch_lines(
        [
            "pagemap baseline: .pagemap/0001_base.json (2 measurements); thresholds: uss:5%, anon_growth:10%",
            "*= pagemap gate =*",
            "compared with .pagemap/0001_base.json (saved *)",
            "thresholds: uss:5%, anon_growth:10%; noise floor 64.0 KiB",
            "* of 2 measurements compared: *",
            "gate: passed, * metrics within their threshold",
        ]
    )
    assert "memory regressed" not in compared.stdout.str()


def test_a_regression_fails_the_session_with_a_list(workload, monkeypatch):
    workload.runpytest("--pagemap-save=base").assert_outcomes(passed=3)
    monkeypatch.setenv("GROW_BYTES", str(8 * MiB))  # the code change: test_growing now keeps 8 MiB, not 1
    result = workload.runpytest("--pagemap-compare=base", "--pagemap-fail=uss:5%", "--pagemap-fail=anon_growth:+1MiB")
    result.assert_outcomes(passed=3)  # every test passed: the gate alone fails the session
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*= pagemap gate =*",
            "2 regressions beyond their threshold:",
            "  * measurement * metric * baseline * current * change * anon / file part * threshold",
            "  REGRESSED  test_workload.py::test_growing * uss * MiB * +* MiB (+*%) * anon +7.* MiB, file * uss:5%",
            "  REGRESSED  *::test_growing * anon_growth * 1.* MiB * 8.* MiB * +*.* MiB (+*%) * anon_growth:+1.0 MiB",
            "* compared: 2 regressed, *",
            "gate: FAILED, 2 regressions, exit code 1",
            "*= 3 passed, 2 memory regressed in *",
        ]
    )
    assert "test_steady " not in result.stdout.str().split("regressions beyond")[1].split("compared:")[0]


def test_compare_works_with_pagemap_and_keeps_test_failures_first(workload, monkeypatch):
    workload.runpytest("--pagemap-save").assert_outcomes(passed=3)  # unnamed: commit and time
    (path,) = saved_records(workload)
    assert path.name.startswith("0001_")
    monkeypatch.setenv("GROW_BYTES", str(4 * MiB))
    workload.makepyfile(test_broken="def test_broken():\n    assert False\n")
    result = workload.runpytest("--pagemap", "--pagemap-compare", "--pagemap-fail=anon_growth:10%")
    result.assert_outcomes(passed=3, failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*= pagemap =*", "*= pagemap gate =*", f"compared with .pagemap/{path.name} *"])
    result.stdout.fnmatch_lines(["  REGRESSED  test_workload.py::test_growing * anon_growth * 1.* MiB * 4.* MiB * +*"])


def test_without_thresholds_growth_is_reported_not_failed(workload, monkeypatch):
    workload.runpytest("--pagemap-save=base")
    monkeypatch.setenv("GROW_BYTES", str(8 * MiB))
    result = workload.runpytest("--pagemap-compare=base")  # no -v needed: without thresholds, changes are news
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "thresholds: none, so nothing can fail; noise floor 64.0 KiB",
            "* changes beyond the noise floor, no threshold set:",
            "  worse * test_workload.py::test_growing * anon_growth * 1.* MiB * 8.* MiB * +*.* MiB (+*%) * -",
            "gate: nothing to fail without thresholds, exit code 0",
        ]
    )
    listed = result.stdout.str().split("no threshold set:")[1]
    assert not re.search(r"test_steady +anon", listed)  # unchanged beyond the noise floor: not listed


def test_new_and_removed_measurements_are_reported_not_failed(workload):
    workload.runpytest("--pagemap-save=base")
    workload.makepyfile(
        test_workload=WORKLOAD.replace("def test_steady(", "def test_renamed(")
    )  # one test gone, one new
    result = workload.runpytest("--pagemap-compare=base", "--pagemap-fail=uss:5%")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "new, not in the baseline (not gated): test_workload.py::test_renamed",
            "removed, in the baseline but not measured now: test_workload.py::test_steady",
        ]
    )


def test_an_improvement_is_listed(workload, monkeypatch):
    monkeypatch.setenv("GROW_BYTES", str(8 * MiB))
    workload.runpytest("--pagemap-save=base")
    monkeypatch.setenv("GROW_BYTES", str(MiB))
    result = workload.runpytest("--pagemap-compare=base", "--pagemap-fail=anon_growth:10%")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "* improvement*:",
            "  improved  test_workload.py::test_growing * anon_growth * 8.* MiB * 1.* MiB * -*.* MiB (-8*%) *",
            "* compared: * improved, *",
        ]
    )


def test_another_machine_is_warned_about(workload):
    workload.runpytest("--pagemap-save=base")
    (path,) = saved_records(workload)
    data = json.loads(path.read_text())
    data["context"]["kernel"] = "5.4.0-old"
    path.write_text(json.dumps(data))
    result = workload.runpytest("--pagemap-compare=base")
    result.stdout.fnmatch_lines(
        [
            "pagemap WARNING: the baseline was measured on another machine: kernel: 5.4.0-old (baseline) vs * (now)",
            "*= pagemap gate =*",
            "WARNING: the baseline was measured on another machine, so may not compare: kernel: 5.4.0-old *",
        ]
    )


def test_saving_never_overwrites_unless_asked(workload):
    workload.runpytest("--pagemap-save=base").assert_outcomes(passed=3)
    again = workload.runpytest("--pagemap-save=base")
    assert again.ret == pytest.ExitCode.USAGE_ERROR  # refused before running anything
    again.stderr.fnmatch_lines(["ERROR: a baseline named 'base' exists (.pagemap/0001_base.json)*--pagemap-overwrite*"])
    no_traceback(again)
    replaced = workload.runpytest("--pagemap-save=base", "--pagemap-overwrite")
    replaced.assert_outcomes(passed=3)
    assert [path.name for path in saved_records(workload)] == ["0001_base.json"]
    workload.runpytest("--pagemap-save=next")
    assert [path.name for path in saved_records(workload)] == ["0001_base.json", "0002_next.json"]


def test_storage_option_and_ini(workload, tmp_path):
    storage = tmp_path / "baselines"
    workload.runpytest(f"--pagemap-storage={storage}", "--pagemap-save=base")
    assert [path.name for path in storage.glob("*.json")] == ["0001_base.json"]
    workload.makeini(f"[pytest]\npagemap_storage = {storage}\n")
    result = workload.runpytest("--pagemap-compare=base")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines([f"compared with {storage}/0001_base.json *"])


def test_compare_against_a_file_path(workload, tmp_path):
    workload.runpytest("--pagemap-save=base")
    (path,) = saved_records(workload)
    copy = tmp_path / "elsewhere.json"
    copy.write_text(path.read_text())
    result = workload.runpytest(f"--pagemap-compare={copy}")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines([f"compared with {copy} *"])


# --- bad baselines and bad options: usage errors, no tracebacks --------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"schema": "pytest-pagemap/session", "version": 1, "measurements": [{"key"', "is not valid JSON*truncated*"),
        ("not json at all", "is not valid JSON*"),
        ('{"schema": "pytest-benchmark", "version": 1}', 'is not a pytest-pagemap record (expected "schema"*'),
        ('{"schema": "pytest-pagemap/session", "version": 7}', "at version: 7 is not a version*upgrade*"),
        (
            '{"schema": "pytest-pagemap/session", "version": 1, "context": {}}',
            "misses the key 'measurements'*",
        ),
        (
            '{"schema": "pytest-pagemap/session", "version": 1, "context": {}, "measurements": '
            '[{"key": "a", "test": "a", "metrics": {}}, {"key": "a", "test": "a", "metrics": {}}]}',
            "at measurements[[]1].key: 'a' is also the key of measurements[[]0]*",
        ),
    ],
    ids=["truncated", "corrupt", "other-schema", "future-version", "missing-key", "duplicate-keys"],
)
def test_a_bad_baseline_names_the_file_and_the_fault(workload, content, message):
    storage = workload.path / ".pagemap"
    storage.mkdir()
    (storage / "0001_base.json").write_text(content)
    result = workload.runpytest("--pagemap-compare=base")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: baseline .pagemap/0001_base.json: {message}"])
    no_traceback(result)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pagemap-compare"], "ERROR: no baseline to compare against: .pagemap/ holds no saved record; run once *"),
        (["--pagemap-compare=main"], "ERROR: no baseline named 'main' in .pagemap/ (saved: none)"),
        (["--pagemap-compare=gone.json"], "ERROR: baseline gone.json: no such file"),
        (["--pagemap-compare", "."], "ERROR: '.' is a test path, not a baseline: write --pagemap-compare=NAME*"),
    ],
)
def test_a_missing_baseline_is_a_usage_error(workload, args, message):
    result = workload.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    no_traceback(result)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--pagemap-fail=heap:5%"],
            "*argument --pagemap-fail: unknown metric 'heap' in 'heap:5%'; choose from uss, *",
        ),
        (["--pagemap-fail=uss"], "*argument --pagemap-fail: cannot read 'uss' as a threshold; expected METRIC:N%*"),
        (["--pagemap-fail=uss:5"], "*argument --pagemap-fail: threshold 'uss:5' has no unit: write uss:5% or uss:+5 B"),
        (["--pagemap-fail=uss:-5%"], "*argument --pagemap-fail: threshold 'uss:-5%' is negative*"),
        (["--pagemap-repeat=0"], "*argument --pagemap-repeat: '0': a test runs at least once"),
        (["--pagemap-save=../up"], "*argument --pagemap-save: baseline name '../up' may hold only *"),
        (["--pagemap-fail=uss:5%"], "ERROR: --pagemap-fail needs --pagemap-compare*"),
        (["--pagemap-overwrite"], "ERROR: --pagemap-overwrite needs --pagemap-save=NAME"),
    ],
)
def test_bad_options_are_usage_errors_at_start_up(workload, args, message):
    result = workload.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert "collected" not in result.stdout.str()  # refused before collecting: nothing ran
    no_traceback(result)


def test_a_test_directory_is_not_taken_for_a_baseline_name(workload):
    (workload.path / "suite").mkdir()
    result = workload.runpytest("--pagemap-save", "suite")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*'suite' is a directory here, so probably a test path: write --pagemap-save=NAME*"])


def test_a_test_file_is_not_taken_for_a_baseline_name(workload):
    result = workload.runpytest("--pagemap-save", "test_workload.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*'test_workload.py' is a file here, so probably a test path*"])
    assert not (workload.path / ".pagemap").exists()


def test_a_bad_ini_threshold_is_a_usage_error(workload):
    workload.makeini("[pytest]\npagemap_fail =\n    uss:5%\n    rss:lots\n")
    result = workload.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: invalid pytest-pagemap ini value: pagemap_fail: cannot read the amount *"])


def test_ini_thresholds_apply_when_comparing(workload, monkeypatch):
    workload.makeini("[pytest]\npagemap_fail =\n    anon_growth:+1MiB\n")
    workload.runpytest("--pagemap-save=base").assert_outcomes(passed=3)  # not comparing: the ini is ignored
    monkeypatch.setenv("GROW_BYTES", str(4 * MiB))
    result = workload.runpytest("--pagemap-compare=base")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["thresholds: anon_growth:+1.0 MiB; *", "1 regression beyond its threshold:"])


# --- per-test tolerance ---------------------------------------------------------------------------------

TOLERANT = (
    GROW
    + """
import os


@pytest.mark.pagemap(tolerance=TOLERANCE)
def test_growing(pagemap):
    pagemap.run(grow, int(os.environ.get("GROW_BYTES", 1 << 20)))


def test_other(pagemap):
    pagemap.run(grow, int(os.environ.get("GROW_BYTES", 1 << 20)))
"""
)


def test_marker_tolerance_gates_a_test_on_its_own(pytester, monkeypatch):
    monkeypatch.setenv("GROW_BYTES", str(MiB))
    pytester.makepyfile(TOLERANT.replace("TOLERANCE", '"anon_growth:+1MiB"'))
    pytester.runpytest("--pagemap-save=base").assert_outcomes(passed=2)
    monkeypatch.setenv("GROW_BYTES", str(4 * MiB))
    result = pytester.runpytest("--pagemap-compare=base")  # no --pagemap-fail: only the marked test is gated
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "thresholds: none for every test (per test: *::test_growing: anon_growth:+1.0 MiB); *",
            "1 regression beyond its threshold:",
            "  REGRESSED  *::test_growing * anon_growth * 1.* MiB * 4.* MiB * +*.* MiB (+*%) * anon_growth:+1.0 MiB",
        ]
    )


def test_marker_tolerance_overrides_the_session_threshold(pytester, monkeypatch):
    monkeypatch.setenv("GROW_BYTES", str(MiB))
    pytester.makepyfile(TOLERANT.replace("TOLERANCE", '["anon_growth:500%", "uss:100%"]'))
    pytester.runpytest("--pagemap-save=base").assert_outcomes(passed=2)
    monkeypatch.setenv("GROW_BYTES", str(4 * MiB))
    result = pytester.runpytest("--pagemap-compare=base", "--pagemap-fail=anon_growth:10%")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    output = result.stdout.str()
    regressions = output[output.index("beyond its threshold") : output.index("worse, within")]
    assert re.search(r"::test_other +anon_growth", regressions)  # the session's 10%
    assert "::test_growing" not in regressions  # its own 500% lets +300% pass


def test_a_bad_tolerance_is_a_usage_error(pytester):
    pytester.makepyfile(TOLERANT.replace("TOLERANCE", '"uss:lots"'))
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: invalid pagemap marker arguments:", "*::test_growing: @pytest.mark.pagemap: tolerance='uss:lots': *"]
    )


# --- keys and repeats -----------------------------------------------------------------------------------


def test_several_measurements_of_a_test_get_unique_stable_keys(pytester):
    pytester.makepyfile(
        GROW
        + """
def test_several(pagemap):
    pagemap.runner(label="warm")(grow, 1 << 20)
    pagemap.runner(label="hot")(grow, 1 << 20)
    pagemap.runner(label="hot")(grow, 1 << 20)
"""
    )
    pytester.runpytest("--pagemap-save=base").assert_outcomes(passed=1)
    (path,) = saved_records(pytester)
    keys = [record.key for record in load_record(path).measurements]
    test = "test_several_measurements_of_a_test_get_unique_stable_keys.py::test_several"
    assert keys == [f"{test} > warm", f"{test} > hot", f"{test} > hot #2"]
    again = pytester.runpytest("--pagemap-compare=base")
    assert "new, not in the baseline" not in again.stdout.str() and "removed" not in again.stdout.str()


REPEATED = """
import pytest
from pathlib import Path

kept = []
SIZES = [1, 8, 2, 3, 5]  # MiB, one per run: the median of the first three is 2


def grow(nbytes):
    block = bytearray(nbytes)
    block[::4096] = b"x" * len(block[::4096])
    kept.append(block)


@pytest.fixture
def run_number(tmp_path_factory):
    counter = tmp_path_factory.getbasetemp() / "runs"
    runs = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(runs + 1))
    return runs


def test_varies(pagemap, run_number):
    print(f"run {run_number}")
    pagemap.run(grow, SIZES[run_number] << 20)


def test_measures_nothing(tmp_path_factory):
    counter = tmp_path_factory.getbasetemp() / "plain"
    counter.write_text(counter.read_text() + "x" if counter.exists() else "x")
"""


def test_repeat_records_the_median_of_the_runs(pytester):
    pytester.makepyfile(REPEATED)
    result = pytester.runpytest("--pagemap-repeat=3", "--pagemap-save=base", "-rP", "--basetemp=tmp")
    result.assert_outcomes(passed=2)  # each test reported once
    result.stdout.fnmatch_lines(["*= pagemap records =*", "each metric is the median of up to 3 runs"])
    result.stdout.fnmatch_lines(["*- Captured stdout call -*", "run 2"])  # the reported run is the last
    assert "run 0" not in result.stdout.str() and "run 1" not in result.stdout.str()
    (path,) = saved_records(pytester)
    (record,) = load_record(path).measurements
    assert record.repeat == 3
    growth = record.metrics["anon_growth"]
    assert growth is not None and 2 * MiB <= growth < 3 * MiB  # the median of 1, 8 and 2 MiB
    assert (pytester.path / "tmp" / "runs").read_text() == "3"  # function fixtures ran once per run
    assert (pytester.path / "tmp" / "plain").read_text() == "x"  # a test that measures nothing runs once


def test_repeat_reports_the_first_failing_run(pytester):
    pytester.makepyfile(
        REPEATED
        + """

def test_fails_second_time(pagemap, run_number):
    pagemap.run(grow, 1 << 20)
    assert run_number != 1, "failed on its second run"
"""
    )
    result = pytester.runpytest("--pagemap-repeat=3", "--pagemap-json=report.json", "-k", "second")
    result.assert_outcomes(failed=1, deselected=2)
    result.stdout.fnmatch_lines(["*AssertionError: failed on its second run"])
    (measurement,) = json.loads((pytester.path / "report.json").read_text())["measurements"]
    assert measurement["repeat"] == 2  # the runs made before it stopped


def test_repeat_ini_and_bad_ini(pytester):
    pytester.makepyfile(REPEATED)
    pytester.makeini("[pytest]\npagemap_repeat = 2\n")
    result = pytester.runpytest("--pagemap-json=report.json", "-k", "varies")
    result.assert_outcomes(passed=1, deselected=1)
    (measurement,) = json.loads((pytester.path / "report.json").read_text())["measurements"]
    assert measurement["repeat"] == 2
    pytester.makeini("[pytest]\npagemap_repeat = often\n")
    bad = pytester.runpytest()
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(
        ["ERROR: invalid pytest-pagemap ini value: pagemap_repeat: 'often' is not a whole number*"]
    )


# --- xdist ----------------------------------------------------------------------------------------------

MANY = (
    GROW
    + """
import os

@pytest.mark.parametrize("n", range(6))
def test_param(pagemap, n):
    pagemap.run(grow, (n + 1) << 20)


def test_twice(pagemap):
    pagemap.runner(label="first")(grow, 1 << 20)
    pagemap.runner(label="second")(grow, int(os.environ.get("GROW_BYTES", 1 << 20)))


def test_none():
    pass
"""
)


def test_xdist_save_and_compare(pytester, monkeypatch):
    monkeypatch.setenv("GROW_BYTES", str(MiB))
    pytester.makepyfile(test_a=MANY, test_b=MANY)
    saved = pytester.runpytest_subprocess("-p", "xdist", "-n", "2", "--pagemap-save=base", "--pagemap-repeat=2")
    saved.assert_outcomes(passed=16)
    saved.stdout.fnmatch_lines(["*2 workers*", "saved 16 measurements as baseline .pagemap/0001_base.json"])
    (path,) = saved_records(pytester)
    records = load_record(path).measurements  # loads: valid JSON, unique keys
    assert len(records) == 16 and len({r.key for r in records}) == 16
    assert all(r.repeat == 2 for r in records)
    assert [r.key for r in records][:7] == [f"test_a.py::test_param[{n}]" for n in range(6)] + [
        "test_a.py::test_twice > first"
    ]  # in collection order, whatever the order the workers finished in
    assert not list((pytester.path / ".pagemap").glob("*.tmp"))  # no temporary file left behind

    monkeypatch.setenv("GROW_BYTES", str(4 * MiB))
    compared = pytester.runpytest_subprocess(
        "-p", "xdist", "-n", "2", "--pagemap-compare=base", "--pagemap-fail=anon_growth:+1MiB", "--pagemap-json=r.json"
    )
    compared.assert_outcomes(passed=16)
    assert compared.ret == pytest.ExitCode.TESTS_FAILED
    compared.stdout.fnmatch_lines(["2 regressions beyond their threshold:"])
    report = json.loads((pytester.path / "r.json").read_text())
    assert len(report["measurements"]) == 16
    regressed = sorted(row["key"] for row in report["comparison"]["rows"] if row["status"] == "regression")
    assert regressed == ["test_a.py::test_twice > second", "test_b.py::test_twice > second"]


# --- reports for machines -------------------------------------------------------------------------------


def test_json_report_schema(workload, monkeypatch):
    workload.runpytest("--pagemap-save=base")
    monkeypatch.setenv("GROW_BYTES", str(4 * MiB))
    result = workload.runpytest("--pagemap-compare=base", "--pagemap-fail=anon_growth:10%", "--pagemap-json=out/r.json")
    result.stdout.fnmatch_lines(["wrote the JSON report (2 measurements) to out/r.json"])
    report = json.loads((workload.path / "out" / "r.json").read_text())
    assert set(report) == {"schema", "version", "created", "context", "measurements", "saved", "comparison"}
    assert (report["schema"], report["version"], report["saved"]) == (REPORT_SCHEMA, 1, None)
    assert {"kernel", "machine", "page_size", "python", "capabilities", "git"} <= set(report["context"])
    measurement = report["measurements"][1]
    assert set(measurement) == {"key", "test", "label", "metrics", "repeat", "map"}
    assert measurement["metrics"]["pss"] is None or isinstance(measurement["metrics"]["pss"], int)
    comparison = report["comparison"]
    assert set(comparison) == {
        "baseline", "baseline_created", "baseline_context", "thresholds", "overrides", "noise", "passed",
        "exit_code", "regressions", "improvements", "new", "removed", "unmatched", "unmeasured", "problems",
        "matched_by_position", "warnings", "hints", "rows",
    }  # fmt: skip
    assert comparison["baseline"] == ".pagemap/0001_base.json" and comparison["thresholds"] == ["anon_growth:10%"]
    assert comparison["passed"] is False and comparison["regressions"] == 1
    (row,) = [row for row in comparison["rows"] if row["status"] == "regression"]
    assert row == {
        "key": "test_workload.py::test_growing",
        "test": "test_workload.py::test_growing",
        "label": row["label"],
        "metric": "anon_growth",
        "baseline": row["baseline"],
        "current": row["current"],
        "change": row["current"] - row["baseline"],
        "change_percent": pytest.approx(100 * (row["current"] - row["baseline"]) / row["baseline"]),
        "file_change": None,
        "threshold": "anon_growth:10%",
        "status": "regression",
    }
    statuses = {"regression", "file-only", "worse", "unchanged", "better", "improvement"}
    assert {r["status"] for r in comparison["rows"]} <= statuses


def test_json_report_names_the_saved_baseline(workload):
    workload.runpytest("--pagemap-save=base", "--pagemap-json=r.json")
    report = json.loads((workload.path / "r.json").read_text())
    assert report["saved"] == ".pagemap/0001_base.json" and report["comparison"] is None


def test_step_summary_is_appended(workload, monkeypatch, tmp_path):
    summary = tmp_path / "summary.md"
    summary.write_text("# Earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    workload.runpytest("--pagemap-save=base")
    monkeypatch.setenv("GROW_BYTES", str(4 * MiB))
    workload.runpytest("--pagemap-compare=base", "--pagemap-fail=anon_growth:10%")
    text = summary.read_text()
    assert text.startswith("# Earlier step\n## pytest-pagemap\n")  # appended, not overwritten
    first, second = text.split("## pytest-pagemap")[1:]
    assert "Saved 2 measurements as baseline `.pagemap/0001_base.json`." in first
    assert "| measurement | USS | anon | RSS | written |" in first and "| `test_workload.py::test_steady` |" in first
    assert "**gate: FAILED, 1 regression, exit code 1.** Compared with `.pagemap/0001_base.json (saved " in second
    assert "Thresholds: anon_growth:10%; noise floor 64.0 KiB." in second
    row = (
        r"\| ❌ REGRESSED \| `test_workload.py::test_growing` \| anon_growth \| 1\.\d MiB \| 4\.\d MiB \| "
        r"\+\d\.\d MiB \(\+[\d.]+%\) \| - \| anon_growth:10% \|"
    )
    assert re.search(row, second), second


def test_step_summary_can_be_turned_off_and_needs_recording(workload, monkeypatch, tmp_path):
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    workload.runpytest()  # nothing recorded: a plugin that is merely installed writes nothing
    workload.runpytest("--pagemap", "-o", "pagemap_step_summary=false")
    assert not summary.exists()
    workload.runpytest("--pagemap")
    assert "## pytest-pagemap" in summary.read_text()


def test_benchmark_action_export(workload):
    workload.runpytest("--pagemap-benchmark-json=bench.json")
    entries = json.loads((workload.path / "bench.json").read_text())
    assert all(set(entry) == {"name", "unit", "value", "extra"} for entry in entries)
    assert all(entry["unit"] == "bytes" and isinstance(entry["value"], int) for entry in entries)
    names = {entry["name"]: entry for entry in entries}
    anon = names["test_workload.py::test_growing anon"]
    assert anon["value"] >= MiB and anon["extra"].endswith(".grow()")
    assert "test_workload.py::test_steady uss" in names and "test_workload.py::test_steady pss" not in names
    # The tool alerts on current / previous: levels only, never a change, a zero or a negative value.
    assert all(entry["value"] > 0 for entry in entries)
    assert not any(name.endswith("_growth") for name in names)
    assert not any(name.endswith(" swap") for name in names)  # no swap on this run: zero, so left out


def junit(pytester: pytest.Pytester, *args: str) -> ET.Element:
    result = pytester.runpytest("--junitxml=junit.xml", *args)
    result.assert_outcomes(passed=3)
    return ET.parse(pytester.path / "junit.xml").getroot()


def properties(element: ET.Element) -> dict[str, int]:
    return {p.get("name", ""): int(p.get("value", "")) for p in element.findall("properties/property")}


def test_junit_xunit1_has_per_test_properties(workload):
    root = junit(workload, "--pagemap", "-o", "junit_family=xunit1")
    cases = {case.get("name"): case for case in root.iter("testcase")}
    growing = properties(cases["test_growing"])
    assert {"pagemap.uss", "pagemap.rss", "pagemap.anon_growth"} <= set(growing)
    assert MiB <= growing["pagemap.anon_growth"] < 2 * MiB
    assert properties(cases["test_without_measurement"]) == {}


def test_junit_xunit2_stays_valid_with_suite_properties(workload):
    root = junit(workload, "--pagemap", "-o", "junit_family=xunit2")
    assert all(case.find("properties") is None for case in root.iter("testcase"))  # xunit2 has none there
    (suite,) = root.iter("testsuite")
    suite_properties = properties(suite)
    assert MiB <= suite_properties["pagemap.anon_growth[test_workload.py::test_growing]"] < 2 * MiB
    assert "pagemap.uss[test_workload.py::test_steady]" in suite_properties


def test_junit_under_xdist(workload):
    result = workload.runpytest_subprocess(
        "-p", "xdist", "-n", "2", "--pagemap", "--junitxml=junit.xml", "-o", "junit_family=xunit1"
    )
    result.assert_outcomes(passed=3)
    cases = {case.get("name"): case for case in ET.parse(workload.path / "junit.xml").getroot().iter("testcase")}
    assert "pagemap.anon_growth" in properties(cases["test_growing"])  # user_properties travelled with the report


def test_junit_without_recording_is_untouched(workload):
    root = junit(workload, "-o", "junit_family=xunit1")
    assert all(case.find("properties") is None for case in root.iter("testcase"))


def test_help_lists_the_gate_options(pytester):
    result = pytester.runpytest("--help")
    for text in ["--pagemap-save=[NAME]", "--pagemap-compare=[NAME|PATH]", "--pagemap-overwrite",
                 "--pagemap-storage=DIR", "--pagemap-fail=EXPR", "--pagemap-repeat=N", "--pagemap-json=PATH",
                 "--pagemap-benchmark-json=PATH"]:  # fmt: skip
        result.stdout.fnmatch_lines([f"*{text}*"])
    for key in ["pagemap_storage", "pagemap_fail (linelist)", "pagemap_repeat", "pagemap_json",
                "pagemap_benchmark_json", "pagemap_step_summary (bool)"]:  # fmt: skip
        result.stdout.fnmatch_lines([f"  {key}*"])


def test_records_hold_every_metric_kind(workload: Any) -> None:
    workload.runpytest("--pagemap-save=base")
    (path,) = saved_records(workload)
    (steady, _) = load_record(path).measurements
    assert steady.metrics["written"] is None and steady.metrics["accessed"] is None  # not asked for
    assert steady.metrics["swap"] is not None and steady.metrics["uss"] and steady.metrics["rss"]


def test_an_empty_or_interrupted_session_saves_nothing(workload):
    result = workload.runpytest("--pagemap-save=base", "-k", "no_such_test")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    result.stdout.fnmatch_lines(["no baseline saved and nothing compared: the session ended with NO_TESTS_COLLECTED"])
    assert saved_records(workload) == []


def test_recording_works_without_the_junitxml_plugin(workload):
    result = workload.runpytest("-p", "no:junitxml", "--pagemap-json=r.json")
    result.assert_outcomes(passed=3)
    assert len(json.loads((workload.path / "r.json").read_text())["measurements"]) == 2
