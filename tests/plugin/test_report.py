"""What a run with `--pagemap` reports: summary, MEMORY status, report sections, hooks, and xdist."""

from __future__ import annotations

import json

import pytest

from .support import GROW, SMALL_AND_BIG

pytest_plugins = ["pytester"]  # here, not in conftest.py: see conftest.py

LIMITED = (
    SMALL_AND_BIG
    + """
def test_no_measurement():
    pass
"""
)


def test_summary_is_one_row_per_measurement_failures_first(pytester):
    pytester.makepyfile(LIMITED)
    result = pytester.runpytest("--pagemap")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*= pagemap =*",
            "test *label *metric *change *peak  verdict",
            # 4 MiB, give or take library pages that other processes map or unmap meanwhile
            "*::test_big  * uss * +4.* MiB  * FAIL uss_growth 4.* MiB > 2.0 MiB (marker)",
            "*::test_small  * uss * +* pass (1 limit)",  # 1 MiB, give or take library pages others map
            "2 measurements in 2 tests, 2 limits checked, 1 exceeded",
            "*= short test summary info =*",
        ]
    )
    # Nothing here measured pages written (no writes=True; no soft-dirty on some kernels): no column says n/a.
    assert "n/a" not in result.stdout.str()


def test_full_summary_lists_totals_and_every_verdict(pytester):
    pytester.makepyfile(LIMITED)
    result = pytester.runpytest("--pagemap", "--pagemap-summary=full")
    result.stdout.fnmatch_lines(
        [
            "*= pagemap =*",
            "test_full_summary_lists_totals_and_every_verdict.py::test_big",
            "  '*.grow()' (pid *): USS * -> * (+4.* MiB), peak RSS *",
            "    FAIL  uss_growth 4.* MiB > 2.0 MiB (marker)",
            "test_full_summary_lists_totals_and_every_verdict.py::test_small",
            "  '*.grow()' (pid *): USS * -> * (+*), peak RSS *",
            "    pass  uss_growth * <= 2.0 MiB (marker)",
            "2 measurements in 2 tests, 2 limits checked, 1 exceeded",
        ]
    )
    assert "written" not in result.stdout.str()


def test_summary_can_be_turned_off_and_set_in_the_ini(pytester):
    pytester.makepyfile(LIMITED)
    off = pytester.runpytest("--pagemap", "--pagemap-summary=none")
    off.assert_outcomes(passed=2, failed=1)
    assert "= pagemap =" not in off.stdout.str()
    pytester.makeini("[pytest]\npagemap_summary = full\n")
    full = pytester.runpytest("--pagemap")
    full.stdout.fnmatch_lines(["    pass  uss_growth * <= 2.0 MiB (marker)"])
    pytester.makeini("[pytest]\npagemap_summary = long\n")
    bad = pytester.runpytest("--pagemap")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*pagemap_summary: 'long'; choose from short, full, none*"])


def test_summary_says_when_there_was_nothing_to_measure(pytester):
    pytester.makepyfile("def test_a(): pass")
    result = pytester.runpytest("--pagemap")
    result.stdout.fnmatch_lines(["*= pagemap =*", "no measurements"])


def test_memory_failures_get_their_own_status(pytester):
    pytester.makepyfile(LIMITED)
    result = pytester.runpytest("--pagemap")
    result.stdout.fnmatch_lines(["test_memory_failures_get_their_own_status.py .M. *"])
    result.stdout.fnmatch_lines(["MEMORY test_memory_failures_get_their_own_status.py::test_big - *"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    verbose = pytester.runpytest("--pagemap", "-v")
    verbose.stdout.fnmatch_lines(["*::test_small PASSED*", "*::test_big MEMORY*", "*::test_no_measurement PASSED*"])


def test_other_failures_keep_their_status(pytester):
    pytester.makepyfile(
        GROW
        + """
def test_plain_failure(pagemap):
    pagemap.run(grow, 1 << 20)
    assert False
"""
    )
    result = pytester.runpytest("--pagemap")
    result.stdout.fnmatch_lines(["*.py F *", "FAILED *::test_plain_failure - assert*"])


def test_failure_has_a_section_with_the_regions(pytester):
    pytester.makepyfile(LIMITED)
    result = pytester.runpytest("--pagemap", "-k", "big")
    result.stdout.fnmatch_lines(
        [
            "E   *MemoryLimitExceeded: USS growth of '*grow()' (pid *) limited to 2.0 MiB but measured 4.0 MiB*",
            "*- pagemap -*",
            "USS growth of '*grow()' (pid *) limited to 2.0 MiB but measured 4.0 MiB, 2.0 MiB over",
            "USS * -> * (+4.0 MiB); RSS * (+4.0 MiB); peak RSS *",
            "regions that contributed most to uss growth:",
            "  uss growth  status  kind  address                    name",
            "    +4.0 MiB  *  anon  *-*  ?anon?",  # fnmatch: [...] is a character class
        ]
    )


def test_explicit_assertions_report_the_same_way(pytester):
    pytester.makepyfile(
        GROW
        + """
def test_explicit(pagemap):
    pagemap.run(grow, 4 << 20).measurement.assert_rss_growth_below("1 MiB")
"""
    )
    result = pytester.runpytest("--pagemap", "-rf")
    result.stdout.fnmatch_lines(["*.py M *", "*- pagemap -*", "regions that contributed most to rss growth:"])
    result.stdout.fnmatch_lines(["*::test_explicit *FAIL rss_growth 4.0 MiB > 1.0 MiB (assert)"])
    plain = pytester.runpytest("-rf")  # without --pagemap the assertion still fails, reported as usual
    plain.assert_outcomes(failed=1)
    plain.stdout.fnmatch_lines(["*.py F *", "FAILED *::test_explicit - *"])
    assert "- pagemap -" not in plain.stdout.str()


def test_expected_memory_failure_is_an_xfail(pytester):
    pytester.makepyfile(
        GROW
        + """
from pytest_pagemap import MemoryLimitExceeded


@pytest.mark.xfail(strict=True, raises=MemoryLimitExceeded, reason="leaks")
def test_leak(pagemap):
    pagemap.run(grow, 4 << 20).measurement.assert_uss_growth_below("1 MiB")
"""
    )
    result = pytester.runpytest("--pagemap", "-rx")
    result.assert_outcomes(xfailed=1)
    result.stdout.fnmatch_lines(
        ["*.py x *", "*::test_leak *FAIL uss_growth 4.0 MiB > 1.0 MiB (assert)", "XFAIL *::test_leak - leaks"]
    )
    assert result.ret == pytest.ExitCode.OK


def test_measurement_hook_sees_every_measurement(pytester):
    pytester.makeconftest(
        """
        import json

        def pytest_pagemap_measurement(item, measurement):
            with open("measurements.jsonl", "a") as out:
                out.write(json.dumps({"test": item.name, **measurement.to_dict()}) + "\\n")
        """
    )
    pytester.makepyfile(LIMITED)
    pytester.runpytest("--pagemap").assert_outcomes(passed=2, failed=1)
    lines = [json.loads(line) for line in (pytester.path / "measurements.jsonl").read_text().splitlines()]
    assert [(line["test"], [v["passed"] for v in line["verdicts"]]) for line in lines] == [
        ("test_small", [True]),
        ("test_big", [False]),
    ]
    (pytester.path / "measurements.jsonl").unlink()
    pytester.runpytest().assert_outcomes(passed=3)  # announced without --pagemap too, with no limits checked
    lines = [json.loads(line) for line in (pytester.path / "measurements.jsonl").read_text().splitlines()]
    assert [line["verdicts"] for line in lines] == [[], []]


def test_limits_hook_can_change_the_limits(pytester):
    pytester.makeconftest(
        """
        from types import MappingProxyType
        from pagewalk.measure import Limits

        def pytest_pagemap_limits(item, limits):
            if item.name == "test_big":
                return Limits(MappingProxyType({"uss_growth": 8 << 20}))
            return None
        """
    )
    pytester.makepyfile(LIMITED)
    result = pytester.runpytest("--pagemap")
    result.assert_outcomes(passed=3)
    # About 4 MiB: shared-library pages flip between shared and private as other processes come and go.
    result.stdout.fnmatch_lines(["*::test_big *pass (1 limit)"])


def test_hooks_are_declared_with_documentation(pytester):
    from pytest_pagemap import hookspecs

    for name in ("pytest_pagemap_measurement", "pytest_pagemap_limits"):
        doc = getattr(hookspecs, name).__doc__
        assert doc and "Example" in doc and "conftest.py" in doc
    pytester.makeconftest("def pytest_pagemap_measuremnt(item, measurement): pass")
    pytester.makepyfile("def test_a(): pass")
    result = pytester.runpytest()  # a misspelt hook is caught: the hook specifications are registered
    assert "unknown hook 'pytest_pagemap_measuremnt'" in result.stdout.str() + result.stderr.str()


def test_xdist_workers_report_to_the_controller(pytester):
    pytester.makepyfile(
        test_one=LIMITED, test_two=GROW + "\ndef test_other(pagemap):\n    pagemap.run(grow, 1 << 20)\n"
    )
    result = pytester.runpytest_subprocess("-p", "xdist", "-n", "2", "--pagemap", "-rf")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["MEMORY test_one.py::test_big - *"])
    output = result.stdout.str()
    summary = output[output.index("= pagemap =") :]
    rows = [line.split()[0] for line in summary.splitlines()[2:5]]
    assert rows[0] == "test_one.py::test_big"  # the failure first, then the others in the order they finished
    assert sorted(rows[1:]) == ["test_one.py::test_small", "test_two.py::test_other"]
    assert "3 measurements in 3 tests, 2 limits checked, 1 exceeded" in summary
    assert "[gw0]" in output or "2 workers" in output


def test_summary_shows_pages_written_when_tracked():
    from pagewalk.units import PAGE_SIZE, format_size
    from pytest_pagemap.report import summary_lines

    result = {
        "test": "t.py::test_w",
        "label": "app",
        "pid": 42,
        "before": {"uss": 1 << 20},
        "after": {"uss": 3 << 20},
        "delta": {"uss_growth": 2 << 20, "written": 10 * PAGE_SIZE},
        "verdicts": [
            {
                "metric": "written",
                "limit": 0,
                "measured": 10 * PAGE_SIZE,
                "passed": False,
                "unit": "bytes",
                "source": "marker",
            }
        ],
    }
    assert summary_lines([result], "full") == [
        "t.py::test_w",
        f"  'app' (pid 42): USS 1.0 MiB -> 3.0 MiB (+2.0 MiB), written {format_size(10 * PAGE_SIZE)} (10 pages)",
        f"    FAIL  written {format_size(10 * PAGE_SIZE)} > 0 B (marker)",
        "1 measurement in 1 test, 1 limit checked, 1 exceeded",
    ]
    written = format_size(10 * PAGE_SIZE)
    assert summary_lines([result]) == [
        "test          label  metric            change  verdict",
        f"t.py::test_w  app    written {written}          FAIL written {written} > 0 B (marker)",
        "1 measurement in 1 test, 1 limit checked, 1 exceeded",
    ]


def test_short_summary_shows_the_peak_only_when_measured():
    from pytest_pagemap.report import summary_lines

    def result(test: str, peak: int | None) -> dict[str, object]:
        return {
            "test": test,
            "label": "a label much longer than the column allows, so it is cut",
            "pid": 1,
            "peak_rss": peak,
            "before": {"uss": 1 << 20},
            "after": {"uss": 2 << 20},
            "delta": {"uss_growth": 1 << 20, "written": None},
            "verdicts": [],
        }

    without = summary_lines([result("t.py::a", None)])
    assert without[0].split() == ["test", "label", "metric", "change", "verdict"]
    assert "a label much longer than the column a..." in without[1]
    with_peak = summary_lines([result("t.py::a", None), result("t.py::b", 5 << 20)])
    assert with_peak[0].split() == ["test", "label", "metric", "change", "peak", "verdict"]
    assert with_peak[1].endswith("+1.0 MiB        -  no limits")  # unknown for this one, measured for the other
    assert "5.0 MiB  no limits" in with_peak[2]
