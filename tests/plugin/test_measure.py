"""The pytest-free core of measuring: `pagewalk.measure`, against real child processes."""

from __future__ import annotations

import mmap
import pickle
import subprocess
import sys

import pytest

from pagewalk import PagewalkError, Unsupported
from pagewalk.measure import (
    Limits,
    Measurement,
    MemoryLimitExceeded,
    NotMeasured,
    Verdict,
    limit_message,
    measure,
    missing_requirements,
)

from .support import privileged, without_soft_dirty

MiB = 1024 * 1024
PAGE = mmap.PAGESIZE


def test_message_has_the_documented_form():
    error = MemoryLimitExceeded("uss", 64 * MiB, int(71.2 * MiB), "python -m app", 4242)
    assert str(error) == "USS of 'python -m app' (pid 4242) limited to 64.0 MiB but measured 71.2 MiB, 7.2 MiB over"
    assert isinstance(error, AssertionError)


@pytest.mark.parametrize(
    ("metric", "start"),
    [
        ("uss_growth", "USS growth of 'app' (pid 7)"),
        ("rss", "RSS of 'app' (pid 7)"),
        ("written", "Memory written by 'app' (pid 7)"),
        ("accessed", "Memory accessed by 'app' (pid 7)"),
    ],
)
def test_message_names_the_metric(metric, start):
    assert limit_message(metric, MiB, 2 * MiB, "app", 7).startswith(f"{start} limited to 1.0 MiB but measured 2.0 MiB")


def test_message_without_label_names_the_pid():
    assert limit_message("swap", 0, 4096, None, 9) == "Swap of pid 9 limited to 0 B but measured 4.0 KiB, 4.0 KiB over"


def test_failure_pickles_with_its_fields_and_details():
    error = MemoryLimitExceeded("rss_growth", MiB, 3 * MiB, "app", 12, details="line one\nline two")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.metric, copy.limit, copy.measured, copy.label, copy.pid) == ("rss_growth", MiB, 3 * MiB, "app", 12)
    assert str(copy) == str(error)
    assert copy.details() == "line one\nline two"


def test_growth_is_measured_and_reported_with_regions(allocator):
    with measure(allocator.pid, label="allocator") as m:
        allocator.allocate(8 * MiB)
    assert m.finished and m.label == "allocator"
    assert m.delta.uss_growth > 7 * MiB  # 8 MiB, give or take shared-library pages changing hands meanwhile
    m.assert_uss_growth_below("16 MiB")
    with pytest.raises(MemoryLimitExceeded) as caught:
        m.assert_uss_growth_below("1 MiB")
    error = caught.value
    assert error.metric == "uss_growth" and error.limit == MiB and error.pid == allocator.pid
    assert str(error).startswith(f"USS growth of 'allocator' (pid {allocator.pid}) limited to 1.0 MiB but measured ")
    details = error.details().splitlines()
    assert details[0] == str(error)
    assert details[2] == "regions that contributed most to uss growth:"
    assert any("[anon]" in line or "[heap]" in line for line in details[4:])
    assert [(v.metric, v.limit, v.passed) for v in m.verdicts] == [
        ("uss_growth", 16 * MiB, True),
        ("uss_growth", MiB, False),
    ]


def test_anonymous_growth_is_the_allocation(allocator):
    with measure(allocator.pid, label="allocator") as m:
        allocator.allocate(8 * MiB)
    # Other processes cannot move anonymous memory; the interpreter's own bookkeeping adds a few pages.
    assert 8 * MiB <= m.delta.anon_growth < 8 * MiB + 64 * PAGE
    assert m.after.anon - m.before.anon == m.delta.anon_growth
    m.assert_anon_growth_below("9 MiB")
    m.assert_anon_below(m.after.anon)
    with pytest.raises(MemoryLimitExceeded) as caught:
        m.assert_anon_growth_below("1 MiB")
    assert str(caught.value).startswith(
        f"Anonymous memory growth of 'allocator' (pid {allocator.pid}) limited to 1.0 MiB but measured 8."
    )
    assert caught.value.details().splitlines()[2] == "regions that contributed most to anon growth:"
    assert m.to_dict()["delta"]["anon_growth"] == m.delta.anon_growth


def test_a_neighbour_leaving_moves_uss_growth_by_page_cache_and_the_failure_says_so(make_puppet, tmp_path):
    size = 16 * MiB
    path = tmp_path / "data"
    path.write_bytes(bytes(range(256)) * (size // 256))
    server, neighbour = make_puppet(), make_puppet()
    for each in (server, neighbour):
        each.read(each.map(size // PAGE, path=path))  # the same file's pages, mapped by both
    with measure(server.pid) as m:
        neighbour.close()  # another instance of the same program exits: the file's pages are the server's alone
    assert m.delta.uss_file_growth >= size and m.delta.anon_growth < MiB
    assert m.value("uss_file_growth") == m.delta.uss_file_growth
    with pytest.raises(MemoryLimitExceeded) as failed:
        m.assert_uss_growth_below("4 MiB")
    note = next(line for line in failed.value.details().splitlines() if "uss_file_growth" in line)
    assert note.startswith("note: 16.") or note.startswith("note: 17."), note  # the file, and maybe a library page
    assert note.endswith("Limit anon_growth for what the process itself allocates")
    m.assert_anon_growth_below("1 MiB")
    with pytest.raises(MemoryLimitExceeded) as level:
        m.assert_uss_below(m.after.uss - m.after.uss_file + MiB)  # within the limit but for the page cache
    assert "(uss_file) is page cache" in level.value.details() and "Limit anon for" in level.value.details()
    with pytest.raises(MemoryLimitExceeded) as own:
        m.assert_uss_below(m.after.uss - m.after.uss_file - MiB)  # over the limit without the page cache too
    assert "uss_file" not in own.value.details()


@privileged
def test_level_limits_use_the_after_snapshot(allocator):
    with measure(allocator.pid, counts=True) as m:
        allocator.allocate(4 * MiB)
    m.assert_uss_below(m.after.uss)
    m.assert_rss_below("1 GiB")
    m.assert_pss_below("1 GB")
    m.assert_swap_below("100 pages")
    with pytest.raises(MemoryLimitExceeded) as caught:
        m.assert_rss_below(4096)
    assert "regions holding the most RSS:" in caught.value.details()
    assert m.verdicts[0] == Verdict("uss", m.after.uss, m.after.uss, True)
    assert m.label and "python" in m.label  # the default label is the command line


def test_accessed_is_tracked(allocator):
    with measure(allocator.pid, accessed=True) as m:
        allocator.allocate(2 * MiB)
    assert m.value("accessed") >= 2 * MiB
    m.assert_accessed_below("1 GiB")
    with pytest.raises(MemoryLimitExceeded, match=r"^Memory accessed by"):
        m.assert_accessed_below("1 MiB")


@privileged
def test_flag_gain(allocator):
    with measure(allocator.pid, flags=True) as m:
        allocator.allocate(MiB)
    m.assert_no_flag_gain("KSM")
    with pytest.raises(MemoryLimitExceeded) as caught:
        m.assert_no_flag_gain("anon")
    assert caught.value.unit == "pages"
    assert str(caught.value).startswith(
        f"Pages that gained ANON in '{m.label}' (pid {allocator.pid}) limited to 0 pages"
    )
    with pytest.raises(ValueError, match=r"^unknown page flag 'shiny'; known flags: LOCKED"):
        m.assert_no_flag_gain("shiny")


def test_quantities_not_measured_say_which_option_to_pass(allocator):
    with measure(allocator.pid) as m:
        pass
    with pytest.raises(NotMeasured, match=r"PSS was not measured: pass counts=True"):
        m.assert_pss_below("1 GiB")
    with pytest.raises(NotMeasured, match=r"Memory written was not measured: pass writes=True"):
        m.assert_written_below("1 GiB")
    with pytest.raises(NotMeasured, match=r"page flags were not read: pass flags=True"):
        m.assert_no_flag_gain("THP")


@without_soft_dirty
def test_writes_without_soft_dirty_is_unsupported(allocator):
    with pytest.raises(Unsupported, match="CONFIG_MEM_SOFT_DIRTY"), measure(allocator.pid, writes=True):
        pass
    (reason,) = missing_requirements(writes=True)
    assert "CONFIG_MEM_SOFT_DIRTY" in reason


@pytest.mark.parametrize(
    ("limit", "expected"),
    [("64 MiB", 64 * MiB), ("1.5 GB", 1_500_000_000), ("100 pages", 100 * PAGE), (4096, 4096), ("4096", 4096)],
)
def test_limits_accept_sizes(allocator, limit, expected):
    with measure(allocator.pid) as m:
        pass
    verdict = m.check("rss", limit)
    assert verdict.limit == expected
    assert verdict.passed == (m.after.rss <= expected)
    # The assertion honours the same verdict; whole-process sizes move by a few pages on their own, so no exact value.
    if verdict.passed:
        assert m.assert_rss_below(limit).passed
    else:
        with pytest.raises(MemoryLimitExceeded):
            m.assert_rss_below(limit)


@pytest.mark.parametrize("limit", ["64 MeB", "lots", 1.5, True, None])
def test_bad_limits_list_the_accepted_forms(allocator, limit):
    with measure(allocator.pid) as m:
        pass
    with pytest.raises(ValueError, match=r"uss_below=.*(expected an int of bytes|an int of bytes or a size string)"):
        m.assert_uss_below(limit)


def test_a_running_measurement_has_no_after(allocator):
    with measure(allocator.pid) as m:
        with pytest.raises(PagewalkError, match="still running"):
            _ = m.after
        with pytest.raises(PagewalkError, match="still running"):
            m.assert_uss_below("1 GiB")


@privileged
def test_from_snapshots_reads_the_options_off_them(allocator):
    import pagewalk

    before = pagewalk.snapshot(allocator.pid, counts=True)
    allocator.allocate(MiB)
    after = pagewalk.snapshot(allocator.pid, counts=True)
    m = Measurement.from_snapshots(before, after, label="by hand")
    assert m.counts and not m.writes and m.label == "by hand"
    assert m.to_dict()["delta"]["uss_growth"] == m.delta.uss_growth >= MiB


def test_limits_parse_merge_and_needs():
    marker = Limits.parse({"uss_below": "64 MiB", "written_below": 0, "no_flag_gain": ["thp", "KSM"]})
    defaults = Limits.parse({"uss_below": "1 GiB", "uss_growth_below": "8 MiB", "pss_below": "1 GiB"})
    merged = marker.over(defaults)
    assert dict(merged.below) == {"uss": 64 * MiB, "written": 0, "uss_growth": 8 * MiB, "pss": 1 << 30}
    assert merged.no_flag_gain == ("THP", "KSM")
    assert merged.needs() == {"writes", "flags", "counts"}
    assert not Limits() and merged
    assert Limits.parse({"uss_growth_below": "-1 MiB"}).below["uss_growth"] == -MiB  # growth limits may be negative


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"uss_blow": 1}, "unknown limit 'uss_blow'; accepted: uss_below, rss_below"),
        ({"uss_below": "-1 MiB"}, "uss_below='-1 MiB': size '-1 MiB' is negative"),
        ({"rss_below": "64 MeB"}, "rss_below='64 MeB': cannot read '64 MeB' as a size; expected an int of bytes"),
        ({"no_flag_gain": "SHINY"}, "no_flag_gain: unknown page flag 'SHINY'"),
        ({"no_flag_gain": 3}, "no_flag_gain: expected a flag name or a sequence of flag names, not 3"),
    ],
)
def test_limits_reject_bad_values(values, message):
    with pytest.raises(ValueError) as caught:
        Limits.parse(values)
    assert message in str(caught.value)


def test_the_core_does_not_import_pytest():
    code = "import sys, pagewalk.measure; print('pytest' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
