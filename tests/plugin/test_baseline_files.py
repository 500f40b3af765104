"""Baseline files and threshold expressions through real pytest sessions: every bad one is a usage error
(exit code 4) naming the file or the expression, never a traceback; concurrent sessions lose no record."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pagewalk.baseline import LOCK_NAME, load_record

pytest_plugins = ["pytester"]  # here, not in conftest.py: see conftest.py

VALID = {
    "schema": "pytest-pagemap/session",
    "version": 1,
    "created": "2026-11-29T23:00:00+00:00",
    "context": {"kernel": "6.18.0", "git": {"commit": None}},
    "measurements": [{"key": "t", "test": "t", "label": "", "metrics": {"uss": 1}, "repeat": 1}],
}
PASSING = "def test_nothing():\n    pass\n"


def text(document: object) -> bytes:
    return json.dumps(document).encode()


CORRUPT = {
    "invalid-utf8": (text(VALID)[:-2] + b"\xff]}", "is not UTF-8"),
    "deep": (b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
    "huge-int": (text(VALID).replace(b'"uss": 1', b'"uss": 1' + b"0" * 5000), "at measurements[0].metrics.uss"),
    "git-not-an-object": (text({**VALID, "context": {"git": "main"}}), "at context.git: must be an object"),
    "negative": (text(VALID).replace(b'"uss": 1', b'"uss": -1'), "at measurements[0].metrics.uss"),
    "nan": (text(VALID).replace(b'"uss": 1', b'"uss": NaN'), "NaN is not standard JSON"),
    "version-true": (text(VALID).replace(b'"version": 1', b'"version": true'), "at version"),
    "unknown-metric": (text(VALID).replace(b'"uss"', b'"usss"'), "at measurements[0].metrics.usss"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_a_corrupt_baseline_is_a_usage_error_naming_the_file(pytester: pytest.Pytester, case: str) -> None:
    content, fault = CORRUPT[case]
    (pytester.path / "bad.json").write_bytes(content)
    pytester.makepyfile(PASSING)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--pagemap-compare=bad.json")
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, output
    assert "baseline bad.json: " in output and fault in output
    assert "Traceback" not in output and "INTERNALERROR" not in output


def test_a_fifo_as_baseline_is_refused_without_hanging(pytester: pytest.Pytester) -> None:
    os.mkfifo(pytester.path / "bad.json")
    pytester.makepyfile(PASSING)
    result = pytester.runpytest("--pagemap-compare=bad.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*baseline bad.json: is a FIFO, not a regular file*"])


@pytest.mark.parametrize("expression", ["uss:1e306%", "uss:٥%", "uss:" + "9" * 400 + "%", "rss:+৫ MiB", "uss:20000%"])
def test_a_threshold_outside_the_grammar_is_refused_at_start_up(pytester: pytest.Pytester, expression: str) -> None:
    pytester.makepyfile(PASSING)
    from_option = pytester.runpytest("--pagemap-compare", f"--pagemap-fail={expression}")
    pytester.makeini(f"[pytest]\npagemap_fail = {expression}\n")
    from_ini = pytester.runpytest("--pagemap-compare")
    for result in (from_option, from_ini):
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        assert "METRIC:N% (relative to the baseline; N in ASCII digits, at most 10,000)" in result.stderr.str()


def test_a_planted_lock_symlink_is_refused_at_start_up(pytester: pytest.Pytester) -> None:
    storage, target = pytester.path / ".pagemap", pytester.path / "owned-by-root"
    storage.mkdir()
    (storage / LOCK_NAME).symlink_to(target)
    pytester.makepyfile(PASSING)
    result = pytester.runpytest("--pagemap-save")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*.pagemap/.lock is a symbolic link, not a regular file: remove it*"])
    assert not target.exists()


def test_a_report_serves_as_a_baseline(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_measured(pagemap):\n    pagemap.run(sum, [1, 2])\n")
    first = pytester.runpytest("--pagemap-json=report.json")
    assert first.ret == pytest.ExitCode.OK
    second = pytester.runpytest("--pagemap-compare=report.json", "--pagemap-fail=uss:10000%")
    assert second.ret == pytest.ExitCode.OK
    second.stdout.fnmatch_lines(["*compared with report.json*"])


def test_concurrent_sessions_saving_unnamed_keep_both_records(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(PASSING)
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--pagemap-save"]
    sessions = [
        subprocess.Popen(command, cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(3)
    ]
    outputs = [session.communicate()[0] for session in sessions]
    assert [session.returncode for session in sessions] == [0, 0, 0], outputs
    saved = sorted((pytester.path / ".pagemap").glob("*.json"))
    assert [path.name[:4] for path in saved] == ["0001", "0002", "0003"]
    assert len({path.name[5:] for path in saved}) == 3
    for path in saved:
        load_record(path)
    assert not [path for path in (pytester.path / ".pagemap").iterdir() if path.suffix == ".tmp"]


def test_saved_files_are_standard_json(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(PASSING)
    assert pytester.runpytest("--pagemap-save=base", "--pagemap-json=r.json").ret == pytest.ExitCode.OK
    for path in (pytester.path / ".pagemap" / "0001_base.json", pytester.path / "r.json"):
        constants: list[str] = []
        json.loads(path.read_text(), parse_constant=constants.append)
        assert constants == [], f"{path} holds {constants}"
