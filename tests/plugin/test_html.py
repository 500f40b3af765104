"""`--pagemap-html` and the maps in `--pagemap-json`: written by the controller, with every worker's maps."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from pagewalk.baseline import load_record
from pagewalk.html_report import DATA_ELEMENT_ID
from pagewalk.record_format import REPORT_SCHEMA, read_document, shipped_schema

from .support import GROW, SMALL_AND_BIG

pytest_plugins = ["pytester"]  # here, not in conftest.py: see conftest.py

TESTS = (
    SMALL_AND_BIG
    + """
def test_twice(pagemap):
    pagemap.run(grow, 1 << 20)
    pagemap.run(grow, 1 << 20)
"""
)


def embedded(path: Path) -> dict[str, Any]:
    match = re.search(rf'id="{DATA_ELEMENT_ID}">(.*?)</script>', path.read_text(encoding="utf-8"), re.S)
    assert match is not None
    data: dict[str, Any] = json.loads(match.group(1))
    return data


def test_html_and_json_carry_the_same_maps_from_every_worker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_maps=TESTS)
    result = pytester.runpytest_subprocess(
        "-p", "xdist", "-n", "2", "--pagemap", "--pagemap-html=out/map.html", "--pagemap-json=report.json"
    )
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["wrote the HTML memory map (4 measurements) to out/map.html"])
    page = embedded(pytester.path / "out" / "map.html")
    report = json.loads((pytester.path / "report.json").read_text())
    keys = [m["key"] for m in report["measurements"]]
    assert keys == [  # collection order, whichever worker ran the test
        "test_maps.py::test_small",
        "test_maps.py::test_big",
        "test_maps.py::test_twice > #1",
        "test_maps.py::test_twice > #2",
    ]
    assert [m["key"] for m in page["measurements"]] == keys
    for in_page, in_report in zip(page["measurements"], report["measurements"], strict=True):
        assert in_page["map"] == in_report["map"]
        assert in_report["map"]["metrics"]["uss_growth"] == in_report["metrics"]["uss_growth"]
        assert in_report["map"]["regions"], "every measurement has its mappings"
    big = next(m for m in report["measurements"] if m["key"] == "test_maps.py::test_big")
    assert [v["passed"] for v in big["map"]["verdicts"]] == [False]
    # The report stays a valid report, for the strict reader and for its JSON Schema, and serves as a baseline.
    path = pytester.path / "report.json"
    assert read_document(path.read_bytes())["measurements"][0]["map"] == report["measurements"][0]["map"]
    jsonschema.Draft202012Validator(shipped_schema(REPORT_SCHEMA)).validate(report)
    assert [m.key for m in load_record(path).measurements] == keys


def test_ini_key_and_no_maps_unless_asked(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_maps=GROW + "\ndef test_one(pagemap):\n    pagemap.run(grow, 1 << 20)\n")
    pytester.makeini("[pytest]\npagemap_html = reports/map.html\n")
    result = pytester.runpytest()  # without --pagemap: the page is still written when asked for
    result.assert_outcomes(passed=1)
    (measurement,) = embedded(pytester.path / "reports" / "map.html")["measurements"]
    assert measurement["key"] == "test_maps.py::test_one" and measurement["map"]["label"].endswith("grow()")
    pytester.makeini("[pytest]\n")
    pytester.runpytest("--pagemap-json=plain.json").assert_outcomes(passed=1)
    assert "map" in json.loads((pytester.path / "plain.json").read_text())["measurements"][0]
    pytester.runpytest("--pagemap").assert_outcomes(passed=1)
    assert not list(pytester.path.glob("*.html"))


def test_an_unwritable_path_is_reported_and_fails_the_session(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_maps=GROW + "\ndef test_one(pagemap):\n    pagemap.run(grow, 1 << 20)\n")
    (pytester.path / "taken").write_text("a file, not a folder")
    result = pytester.runpytest("--pagemap-html=taken/map.html")
    result.stdout.fnmatch_lines(["ERROR: the HTML memory map was not written to taken/map.html: *"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_reports_are_written_through_symbolic_links(pytester: pytest.Pytester) -> None:
    """A report path that is a link writes the file it names, or the device (as /dev/stdout is), and the link
    stays: replacing it would leave the linked file stale, or swap /dev/stdout for a file when run as root."""
    pytester.makepyfile(test_maps=GROW + "\ndef test_one(pagemap):\n    pagemap.run(grow, 1 << 20)\n")
    shared = pytester.path / "shared"
    shared.mkdir()
    (shared / "map.html").write_text("old")
    (pytester.path / "map.html").symlink_to(shared / "map.html")
    (pytester.path / "report.json").symlink_to("/dev/null")
    result = pytester.runpytest("--pagemap-html=map.html", "--pagemap-json=report.json")
    result.assert_outcomes(passed=1)
    assert (pytester.path / "map.html").is_symlink() and (pytester.path / "report.json").is_symlink()
    (measurement,) = embedded(shared / "map.html")["measurements"]
    assert measurement["key"] == "test_maps.py::test_one"
    assert not [p for p in shared.iterdir() if p.name != "map.html"]  # no temporary file left beside it


def test_a_report_can_go_to_standard_output_through_a_pipe(pytester: pytest.Pytester) -> None:
    """/dev/stdout links to /proc/self/fd/1, which names a pipe as 'pipe:[N]': written through, not resolved."""
    pytester.makepyfile(test_maps=GROW + "\ndef test_one(pagemap):\n    pagemap.run(grow, 1 << 20)\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--pagemap-json=/dev/stdout"],
        cwd=pytester.path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout[result.stdout.index("{") : result.stdout.rindex("}") + 1])
    assert [m["key"] for m in report["measurements"]] == ["test_maps.py::test_one"]
    assert "wrote the JSON report (1 measurement) to /dev/stdout" in result.stdout
