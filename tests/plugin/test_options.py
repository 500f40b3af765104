"""Options, ini keys, activation and `-p no:pagemap`, through inner pytest sessions."""

from __future__ import annotations

import time

import pytest

from pagewalk.measure import LIMIT_KEYS

from .support import GROW, privileged

pytest_plugins = ["pytester"]  # here, not in conftest.py: see conftest.py


@pytest.fixture
def grows_8_mib(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(
        GROW
        + """
def test_grow(pagemap):
    pagemap.run(grow, 8 << 20)
"""
    )
    return pytester


def test_help_lists_every_option_and_ini_key(pytester):
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["pytest-pagemap: memory assertions from Linux page tables:"])
    for name in ["--pagemap ", "--pagemap-strict", "--pagemap-grace=SECONDS", "--pagemap-limit=METRIC:SIZE",
                 "--pagemap-no-flag-gain=FLAGS"]:  # fmt: skip
        result.stdout.fnmatch_lines([f"*{name}*"])
    for key in ["pagemap (bool)", "pagemap_strict (bool)", "pagemap_grace", "pagemap_limits (linelist)",
                "pagemap_no_flag_gain"]:  # fmt: skip
        result.stdout.fnmatch_lines([f"  {key}*"])
    # One option for every metric, not one per metric; the help names every metric the limits know.
    assert "-below" not in result.stdout.str()
    help_text = " ".join(result.stdout.str().split())
    assert all(metric in help_text for metric in LIMIT_KEYS.values())


def test_marker_is_registered(pytester):
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(
        ["@pytest.mark.pagemap(uss_below=None, rss_below=None, *no_flag_gain=(), tolerance=()): limits*"]
    )


def test_fixture_is_documented(pytester):
    pytester.makepyfile("def test_a(pagemap): pass")
    result = pytester.runpytest("--fixtures")
    result.stdout.fnmatch_lines(
        [
            "pagemap -- *pytest_pagemap/fixtures.py:*",
            "    Measure the memory of other processes from their page tables*",
        ]
    )


def test_without_pagemap_there_is_no_summary(grows_8_mib):
    result = grows_8_mib.runpytest()
    result.assert_outcomes(passed=1)
    assert "= pagemap =" not in result.stdout.str()


def test_option_turns_reporting_on(grows_8_mib):
    result = grows_8_mib.runpytest("--pagemap")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*= pagemap =*", "test_option_turns_reporting_on.py::test_grow  *"])
    result.stdout.fnmatch_lines(["pagemap: kernel *; soft-dirty *, page flags *, PSS *; strict off"])


def test_ini_turns_reporting_on(grows_8_mib):
    grows_8_mib.makeini("[pytest]\npagemap = true\n")
    result = grows_8_mib.runpytest()
    result.stdout.fnmatch_lines(["*= pagemap =*", "1 measurement in 1 test, 0 limits checked, 0 exceeded"])


def test_command_line_default_limit(grows_8_mib):
    result = grows_8_mib.runpytest("--pagemap", "--pagemap-limit=uss_growth:1 MiB", "--pagemap-summary=full")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["    FAIL  uss_growth 8.0 MiB > 1.0 MiB (default)"])


def test_ini_default_limit(grows_8_mib):
    grows_8_mib.makeini("[pytest]\npagemap_limits =\n    uss_growth:64 MiB\n    rss_growth: 1MiB\n")
    result = grows_8_mib.runpytest("--pagemap", "--pagemap-summary=full")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "    FAIL  rss_growth 8.0 MiB > 1.0 MiB (default)",  # a measurement's failures come first
            "    pass  uss_growth 8.0 MiB <= 64.0 MiB (default)",
        ]
    )


def test_command_line_overrides_ini(grows_8_mib):
    grows_8_mib.makeini("[pytest]\npagemap_limits = uss_growth:1MiB\n")
    result = grows_8_mib.runpytest("--pagemap", "--pagemap-limit", "uss_growth:9MiB")
    result.assert_outcomes(passed=1)


def test_defaults_are_not_enforced_without_pagemap(grows_8_mib):
    grows_8_mib.makeini("[pytest]\npagemap_limits = uss_growth:1MiB\n")
    result = grows_8_mib.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["pagemap: memory limits set by defaults were not checked: run with --pagemap (or ini: pagemap = true)*"]
    )


def test_marker_limits_without_pagemap_are_reported_once_under_xdist(pytester):
    pytester.makepyfile(
        GROW
        + """
import pytest

@pytest.mark.pagemap(uss_growth_below="1 MiB")
def test_one(pagemap):
    pagemap.run(grow, 2 << 20)

@pytest.mark.pagemap(uss_growth_below="1 MiB")
def test_two():
    pass

def test_unlimited():
    pass
"""
    )
    result = pytester.runpytest_subprocess("-p", "xdist", "-n", "2")
    result.assert_outcomes(passed=3)
    assert result.stdout.str().count("were not checked") == 1
    result.stdout.fnmatch_lines(["pagemap: memory limits set by markers were not checked: *"])
    # With --pagemap they are checked, and nothing is said about them.
    checked = pytester.runpytest("--pagemap")
    checked.assert_outcomes(passed=2, failed=1)
    assert "were not checked" not in checked.stdout.str()


def test_no_note_without_limits(grows_8_mib):
    result = grows_8_mib.runpytest()
    assert "were not checked" not in result.stdout.str()


@privileged
def test_default_flag_limit_applies_to_measurements_reading_flags(pytester):
    pytester.makepyfile(
        GROW
        + """
def test_with_flags(pagemap):
    pagemap.runner(flags=True)(grow, 1 << 20)

def test_without_flags(pagemap):
    pagemap.run(grow, 1 << 20)
"""
    )
    result = pytester.runpytest("--pagemap", "--pagemap-no-flag-gain=KSM,anon", "--pagemap-summary=full", "-v")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*::test_with_flags MEMORY*", "*::test_without_flags PASSED*"])
    result.stdout.fnmatch_lines(
        ["    FAIL  flags_gained:ANON *", "    pass  flags_gained:KSM 0 pages <= 0 pages (default)"]
    )


ALL_LIMITS = (
    GROW
    + """
def test_everything(pagemap):
    result = pagemap.runner(accessed=True, counts=True, flags=True)(grow, 1 << 20)
    print("VERDICTS", sorted((v.metric, v.limit, v.source) for v in result.measurement.verdicts))
"""
)
EXPECTED_VERDICTS = [
    ("accessed", 1 << 30, "default"),
    ("accessed_anon", 1 << 30, "default"),
    ("anon", 1 << 30, "default"),
    ("anon_growth", 1 << 30, "default"),
    ("flags_gained:KSM", 0, "default"),
    ("peak_rss", 1 << 30, "default"),
    ("peak_rss_growth", 1 << 30, "default"),
    ("pss", 1 << 30, "default"),
    ("rss", 1 << 30, "default"),
    ("rss_growth", 1 << 30, "default"),
    ("swap", 1 << 30, "default"),
    ("uss", 1 << 30, "default"),
    ("uss_file", 1 << 30, "default"),
    ("uss_file_growth", 1 << 30, "default"),
    ("uss_growth", 1 << 30, "default"),
    # written_below too is set, and checked only by measurements that track writes (writes=True)
]


@privileged
def test_every_limit_option_is_wired(pytester):
    pytester.makepyfile(ALL_LIMITS)
    args = [f"--pagemap-limit={metric}:1 GiB" for metric in LIMIT_KEYS.values()] + ["--pagemap-no-flag-gain=KSM"]
    result = pytester.runpytest("--pagemap", "-s", *args)
    result.assert_outcomes(passed=1)
    assert f"VERDICTS {EXPECTED_VERDICTS}" in result.stdout.str()


@privileged
def test_every_limit_ini_key_is_wired(pytester):
    pytester.makepyfile(ALL_LIMITS)
    lines = ["pagemap_limits =", *(f"    {metric}:1 GiB" for metric in LIMIT_KEYS.values())]
    lines.append("pagemap_no_flag_gain = KSM")
    pytester.makeini("[pytest]\n" + "\n".join(lines) + "\n")
    result = pytester.runpytest("--pagemap", "-s")
    result.assert_outcomes(passed=1)
    assert f"VERDICTS {EXPECTED_VERDICTS}" in result.stdout.str()


@pytest.mark.parametrize(
    ("ini", "message"),
    [
        ("pagemap_limits = uss_growth:8 MeB", "invalid pytest-pagemap ini value: pagemap_limits: cannot read the "
         "size in 'uss_growth:8 MeB': cannot read '8 MeB' as a size; expected an int of bytes, or a string such as*"),
        ("pagemap_limits = rss:-1", "*pagemap_limits: cannot read the size in 'rss:-1': size '-1' is negative*"),
        ("pagemap_limits = uss_below:1MiB", "*pagemap_limits: cannot read 'uss_below:1MiB' as a limit; expected "
         "METRIC:SIZE, e.g. uss:64MiB or uss_growth:8MiB*; metrics: uss, rss, *"),
        ("pagemap_no_flag_gain = THP SHINY", "*pagemap_no_flag_gain: unknown page flag 'SHINY'; known flags: *"),
        ("pagemap_grace = soon", "invalid pytest-pagemap ini value: pagemap_grace: 'soon' is not a number of seconds"),
    ],
)  # fmt: skip
def test_bad_ini_values_are_usage_errors(pytester, ini, message):
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile("def test_a(): pass")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pagemap-limit=uss:lots"], "*--pagemap-limit: cannot read the size in 'uss:lots': cannot read 'lots' "
         "as a size*"),
        (["--pagemap-limit=64MiB"], "*--pagemap-limit: cannot read '64MiB' as a limit; expected METRIC:SIZE, e.g. "
         "uss:64MiB or uss_growth:8MiB*"),
        (["--pagemap-limit=uss"], "*--pagemap-limit: cannot read 'uss' as a limit; expected METRIC:SIZE*"),
        (["--pagemap-uss-below=1MiB"], "*unrecognized arguments: --pagemap-uss-below=1MiB*"),
        (["--pagemap-no-flag-gain=SHINY"], "*--pagemap-no-flag-gain: no_flag_gain: unknown page flag 'SHINY'*"),
        (["--pagemap-grace=-1"], "*argument --pagemap-grace: '-1': a grace period must be zero or more seconds*"),
    ],
)  # fmt: skip
def test_bad_options_are_usage_errors(pytester, args, message):
    pytester.makepyfile("def test_a(): pass")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_grace_bounds_the_wait_for_a_process_ignoring_sigterm(pytester):
    pytester.makepyfile(
        """
        import sys

        def test_stubborn(pagemap):
            code = (
                "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('set', flush=True); time.sleep(60)"
            )
            proc = pagemap.spawn([sys.executable, "-c", code], ready="set")
            assert proc.stop() == -9
        """
    )
    started = time.monotonic()
    pytester.runpytest("--pagemap-grace=0.3").assert_outcomes(passed=1)
    assert time.monotonic() - started < 3


def test_plugin_can_be_disabled(pytester, monkeypatch):
    # As users run it: the plugin comes from its entry point, and -p no:pagemap keeps it out.
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD")
    monkeypatch.delenv("PYTEST_ADDOPTS")
    pytester.makepyfile(
        """
        def test_plain():
            pass

        def test_uses_fixture(pagemap):
            pass
        """
    )
    result = pytester.runpytest("-p", "no:pagemap")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*fixture 'pagemap' not found*"])
    assert "pagemap: kernel" not in result.stdout.str()
    result = pytester.runpytest("-p", "no:pagemap", "--pagemap")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unrecognized arguments: --pagemap*"])
