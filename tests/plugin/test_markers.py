"""`@pytest.mark.pagemap(...)` limits, the options they turn on, and skips on kernels that cannot measure."""

from __future__ import annotations

import pytest

from pagewalk import capabilities

from .support import GROW, privileged, without_soft_dirty

pytest_plugins = ["pytester"]  # here, not in conftest.py: see conftest.py


def inner(pytester: pytest.Pytester, body: str) -> None:
    pytester.makepyfile(GROW + body)


def test_marker_limit_fails_the_test_with_pagemap(pytester):
    inner(
        pytester,
        """
@pytest.mark.pagemap(uss_growth_below="1 MiB")
def test_grow(pagemap):
    pagemap.run(grow, 4 << 20)
""",
    )
    result = pytester.runpytest("--pagemap")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E   *MemoryLimitExceeded: USS growth of '*grow()' (pid *) limited to 1.0 MiB "
            "but measured 4.0 MiB, 3.0 MiB over"
        ]
    )


def test_marker_limit_is_not_enforced_without_pagemap(pytester):
    inner(
        pytester,
        """
@pytest.mark.pagemap(uss_growth_below="1 MiB")
def test_grow(pagemap):
    result = pagemap.run(grow, 4 << 20)
    assert result.measurement.verdicts == []
""",
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_marker_applies_to_every_measurement_and_checks_them_at_the_end_of_measure(pytester):
    inner(
        pytester,
        """
import sys


@pytest.mark.pagemap(uss_below="1 GiB", uss_growth_below="2 MiB")
def test_two(pagemap):
    small = pagemap.run(grow, 1 << 20)
    proc = pagemap.spawn([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"], ready="up")
    with pagemap.measure(proc) as m:
        pass
    assert [v.metric for v in small.measurement.verdicts] == ["uss", "uss_growth"]
    assert [v.source for v in m.verdicts] == ["marker", "marker"]
    pagemap.run(grow, 4 << 20)
    raise AssertionError("not reached: the third measurement exceeds the limit")
""",
    )
    result = pytester.runpytest("--pagemap")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["E   *USS growth of * limited to 2.0 MiB but measured 4.0 MiB*"])


def test_positional_size_is_uss_below(pytester):
    inner(
        pytester,
        """
@pytest.mark.pagemap("1 MiB")
def test_grow(pagemap):
    pagemap.run(grow, 1 << 20)
""",
    )
    result = pytester.runpytest("--pagemap")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["E   *MemoryLimitExceeded: USS of '*grow()' (pid *) limited to 1.0 MiB but measured *"]
    )


def test_closest_marker_wins_per_limit(pytester):
    inner(
        pytester,
        """
pytestmark = pytest.mark.pagemap(uss_growth_below="1 MiB", rss_growth_below="64 MiB")

class TestNested:
    pytestmark = pytest.mark.pagemap(rss_growth_below="32 MiB")

    @pytest.mark.pagemap(uss_growth_below="16 MiB")
    def test_grow(self, pagemap):
        result = pagemap.run(grow, 4 << 20)
        assert {v.metric: v.limit for v in result.measurement.verdicts} == {
            "uss_growth": 16 << 20,
            "rss_growth": 32 << 20,
        }
""",
    )
    pytester.runpytest("--pagemap").assert_outcomes(passed=1)


def test_marker_per_parametrization(pytester):
    inner(
        pytester,
        """
@pytest.mark.parametrize("size", [
    pytest.param(1 << 20, marks=pytest.mark.pagemap(uss_growth_below="2 MiB")),
    pytest.param(8 << 20, marks=pytest.mark.pagemap(uss_growth_below="2 MiB")),
    pytest.param(8 << 20, marks=pytest.mark.pagemap(uss_growth_below="16 MiB")),
])
def test_grow(pagemap, size):
    pagemap.run(grow, size)
""",
    )
    pytester.runpytest("--pagemap").assert_outcomes(passed=2, failed=1)


def test_marker_limits_override_session_defaults(pytester):
    inner(
        pytester,
        """
@pytest.mark.pagemap(uss_growth_below="16 MiB")
def test_marked(pagemap):
    pagemap.run(grow, 4 << 20)

def test_unmarked(pagemap):
    pagemap.run(grow, 4 << 20)
""",
    )
    result = pytester.runpytest("--pagemap", "--pagemap-limit=uss_growth:1MiB", "-rf")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["MEMORY *::test_unmarked - *"])


@privileged
def test_marker_turns_on_the_options_its_limits_need(pytester):
    inner(
        pytester,
        """
@pytest.mark.pagemap(pss_below="1 GiB", no_flag_gain="KSM", accessed_below="1 GiB")
def test_grow(pagemap):
    result = pagemap.run(grow, 1 << 20)
    m = result.measurement
    assert m.counts and m.flags and m.accessed and not m.writes
    assert sorted(v.metric for v in m.verdicts) == ["accessed", "flags_gained:KSM", "pss"]
""",
    )
    pytester.runpytest("--pagemap").assert_outcomes(passed=1)


def test_session_defaults_apply_only_to_what_was_measured(pytester):
    pytester.makeini("[pytest]\npagemap_limits =\n    written:1MiB\n    pss:1KiB\n")
    inner(
        pytester,
        """
def test_grow(pagemap):
    assert pagemap.run(grow, 1 << 20).measurement.verdicts == []
""",
    )
    pytester.runpytest("--pagemap").assert_outcomes(passed=1)


@without_soft_dirty
def test_written_limit_skips_without_soft_dirty(pytester):
    inner(
        pytester,
        """
@pytest.mark.pagemap(written_below="1 MiB")
def test_grow(pagemap):
    pagemap.run(grow, 1 << 20)
""",
    )
    result = pytester.runpytest("--pagemap", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        ["SKIPPED * test_written_limit_skips_without_soft_dirty.py:*: pagemap: pages written cannot be tracked: "
         "this kernel (*) does not track soft-dirty pages: it was built without CONFIG_MEM_SOFT_DIRTY*"]
    )  # fmt: skip


@without_soft_dirty
def test_explicit_writes_skip_without_soft_dirty_even_without_pagemap(pytester):
    pytester.makepyfile(
        """
        import sys

        def test_writes(pagemap):
            proc = pagemap.spawn([sys.executable, "-c", "import time; time.sleep(60)"])
            with pagemap.measure(proc, writes=True):
                raise AssertionError("not reached")
        """
    )
    result = pytester.runpytest("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED * *.py:5: pagemap: *CONFIG_MEM_SOFT_DIRTY*"])


@without_soft_dirty
@pytest.mark.parametrize("how", [["--pagemap-strict"], ["-o", "pagemap_strict=true"]])
def test_strict_turns_the_skip_into_a_failure(pytester, how):
    inner(
        pytester,
        """
def test_grow(pagemap):
    pagemap.runner(writes=True)(grow, 1 << 20)
""",
    )
    result = pytester.runpytest(*how)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*pagemap: pages written cannot be tracked: *CONFIG_MEM_SOFT_DIRTY* "
         "(a skip turned into a failure by --pagemap-strict)"]
    )  # fmt: skip


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ('uss_blow="1 MiB"', "unknown limit 'uss_blow'; accepted: uss_below, rss_below, *no_flag_gain"),
        ('uss_below="64 MeB"', "uss_below='64 MeB': cannot read '64 MeB' as a size; expected an int of bytes*"),
        ('"1 MiB", "2 MiB"', "takes at most one positional size (uss_below), got 2*"),
        ('"1 MiB", uss_below="2 MiB"', "uss_below given twice: as the positional size and as a keyword"),
        ('no_flag_gain="SHINY"', "no_flag_gain: unknown page flag 'SHINY'; known flags: *"),
        ("rss_growth_below=1.5", "rss_growth_below=1.5: a limit is an int of bytes or a size string, not float"),
    ],
)
def test_invalid_marker_arguments_are_usage_errors(pytester, marker, message):
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.pagemap({marker})
        def test_a():
            pass
        """
    )
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: invalid pagemap marker arguments:", f"*::test_a: @pytest.mark.pagemap: {message}"]
    )


@pytest.fixture
def unprivileged(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make this process look like one without CAP_SYS_ADMIN: no PFNs, no kpageflags, no kpagecount."""
    import dataclasses
    import importlib

    # Where `pagewalk.measure` finds it when it checks what a measurement needs. As an attribute,
    # `pagewalk.capabilities` is the function the package re-exports, not the module.
    capabilities_module = importlib.import_module("pagewalk.capabilities")
    real = capabilities()
    limited = dataclasses.replace(real, cap_sys_admin=False, pfn_visible=False, kpageflags=False, kpagecount=False)
    monkeypatch.setattr(capabilities_module, "capabilities", lambda: limited)


@pytest.mark.parametrize(
    ("marker", "reason"),
    [
        ('no_flag_gain="THP"', "page flags need /proc/kpageflags*CAP_SYS_ADMIN*"),
        ('pss_below="1 GiB"', "PSS* need* /proc/kpagecount*CAP_SYS_ADMIN*"),
    ],
)
def test_flags_and_pss_skip_without_privilege(pytester, unprivileged, marker, reason):
    inner(
        pytester,
        f"""
@pytest.mark.pagemap({marker})
def test_grow(pagemap):
    pagemap.run(grow, 1 << 20)
""",
    )
    result = pytester.runpytest("--pagemap", "-rs")  # in-process, so the inner session sees the patch
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines([f"SKIPPED * pagemap: {reason}"])
    strict = pytester.runpytest("--pagemap", "--pagemap-strict")
    strict.assert_outcomes(failed=1)
    strict.stdout.fnmatch_lines([f"*pagemap: {reason} (a skip turned into a failure by --pagemap-strict)"])
