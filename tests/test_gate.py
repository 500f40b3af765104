"""Baselines, thresholds and CI reports of the core (the pytest options on top are tested in tests/plugin)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from puppet import Puppet

import pagewalk
from pagewalk import baseline, ci_reports, gate
from pagewalk.baseline import BaselineError, MeasurementRecord, SessionRecord
from pagewalk.measure import METRICS
from pytest_pagemap.gates import junit_properties

MiB = 1 << 20
CONTEXT = {"kernel": "6.18.0", "machine": "x86_64", "page_size": 4096, "git": {"commit": "abc123def4567890"}}


def record(metrics: dict[str, dict[str, int | None]], context: dict[str, object] | None = None) -> SessionRecord:
    return SessionRecord(
        context=context or CONTEXT,
        measurements=tuple(
            MeasurementRecord(key=key, test=key.split("[")[0], label="app", metrics=values)
            for key, values in metrics.items()
        ),
    )


@pytest.mark.parametrize(
    ("text", "metric", "percent", "absolute"),
    [
        ("uss:5%", "uss", 5.0, None),
        ("written:10%", "written", 10.0, None),
        (" rss : +2MiB ", "rss", None, 2 * MiB),
        ("rss:2 MiB", "rss", None, 2 * MiB),
        ("uss_growth:0.5%", "uss_growth", 0.5, None),
        ("swap:100 pages", "swap", None, 100 * 4096),
    ],
)
def test_parse_threshold(text: str, metric: str, percent: float | None, absolute: int | None) -> None:
    threshold = gate.parse_threshold(text)
    assert (threshold.metric, threshold.percent, threshold.absolute) == (metric, percent, absolute)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("uss", "expected METRIC:N%"),
        ("heap:5%", "unknown metric 'heap'"),
        ("uss:-5%", "negative"),
        ("rss:-2MiB", "negative"),
        ("rss:lots", "cannot read the amount"),
        ("uss:5 %%", "cannot read the amount"),
        ("uss:5", r"has no unit: write uss:5% or uss:\+5 B"),
        ("uss:+2.5", "has no unit"),
    ],
)
def test_bad_thresholds_say_why(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        gate.parse_threshold(text)


def test_threshold_allowance() -> None:
    assert gate.parse_threshold("uss:5%").allowed(100 * MiB) == 105 * MiB
    assert gate.parse_threshold("rss:+2MiB").allowed(10 * MiB) == 12 * MiB
    assert gate.parse_threshold("uss_growth:50%").allowed(-4 * MiB) == -2 * MiB


def test_parse_thresholds_takes_one_or_a_list() -> None:
    assert gate.parse_thresholds("uss:10%") == (gate.parse_threshold("uss:10%"),)
    assert [t.text for t in gate.parse_thresholds(["uss:10%", "rss:+2MiB"])] == ["uss:10%", "rss:+2.0 MiB"]
    with pytest.raises(ValueError, match="expected a threshold such as 'anon:10%' or a list of them, not 5"):
        gate.parse_thresholds(5)
    with pytest.raises(ValueError, match="unknown metric 'heap'"):
        gate.parse_thresholds(["uss:1%", "heap:1%"])


def test_compare_lists_regressions_improvements_new_and_removed() -> None:
    old = record({"t::a": {"uss": 100 * MiB, "rss": 200 * MiB}, "t::gone": {"uss": MiB}})
    new = record({"t::a": {"uss": 110 * MiB, "rss": 150 * MiB}, "t::fresh": {"uss": MiB}})
    result = gate.compare(old, new, [gate.parse_threshold("uss:5%"), gate.parse_threshold("rss:5%")])
    (regression,) = result.regressions
    assert (regression.key, regression.metric, regression.change) == ("t::a", "uss", 10 * MiB)
    assert regression.describe_change() == "+10.0 MiB (+10.0%)"
    assert [row.metric for row in result.improvements] == ["rss"]
    assert result.new == ("t::fresh",) and result.removed == ("t::gone",)
    assert result.warnings == ()


def test_growth_within_threshold_is_not_a_regression() -> None:
    old, new = record({"t": {"uss": 100 * MiB}}), record({"t": {"uss": 104 * MiB}})
    (row,) = gate.compare(old, new, [gate.parse_threshold("uss:5%")]).rows
    assert row.status == "worse"
    (row,) = gate.compare(old, new).rows  # no threshold: reported, never failed
    assert row.status == "worse" and row.threshold is None


def test_only_a_shrink_beyond_the_allowance_is_an_improvement() -> None:
    old = record({"t": {"uss": 100 * MiB, "rss": 100 * MiB, "swap": 10 * MiB}})
    new = record({"t": {"uss": 99 * MiB, "rss": 90 * MiB, "swap": MiB}})
    result = gate.compare(old, new, [gate.parse_threshold("uss:5%"), gate.parse_threshold("rss:5%")])
    statuses = {row.metric: row.status for row in result.rows}
    assert statuses == {"uss": "better", "rss": "improvement", "swap": "better"}  # swap: no threshold
    assert [row.metric for row in result.improvements] == ["rss"] and result.passed


def test_comparison_keeps_what_it_was_compared_with(tmp_path: Path) -> None:
    path = baseline.save_record(record({"t": {"uss": MiB}}), tmp_path, "base")
    result = gate.compare(
        baseline.load_record(path),
        record({"t": {"uss": 2 * MiB}}),
        [gate.parse_threshold("uss:5%")],
        overrides={"t": gate.parse_thresholds("uss:200%")},
    )
    assert result.baseline_path == str(path) and result.baseline_created
    assert result.baseline_context["git"] == {"commit": "abc123def4567890"}
    assert [t.text for t in result.thresholds] == ["uss:5%"] and [t.text for t in result.overrides["t"]] == ["uss:200%"]
    assert result.passed  # the override allows +200%


def test_each_threshold_counts_and_overrides_replace_per_metric() -> None:
    old, new = record({"t": {"uss": 100 * MiB}}), record({"t": {"uss": 103 * MiB}})
    session = [gate.parse_threshold("uss:10%"), gate.parse_threshold("uss:+1MiB")]
    assert gate.compare(old, new, session).regressions[0].threshold == gate.parse_threshold("uss:+1MiB")
    relaxed = gate.compare(old, new, session, overrides={"t": [gate.parse_threshold("uss:5%")]})
    assert relaxed.regressions == ()


def test_different_machine_warns() -> None:
    other = {**CONTEXT, "kernel": "6.1.0"}
    result = gate.compare(record({"t": {"uss": 1}}, other), record({"t": {"uss": 1}}))
    assert result.warnings == ("kernel: 6.1.0 (baseline) vs 6.18.0 (now)",)


def test_another_thp_mode_warns_and_an_unrecorded_one_does_not() -> None:
    def thp(mode: object) -> dict[str, object]:
        return {**CONTEXT, "capabilities": {"thp_mode": mode}}

    def warnings(baseline: dict[str, object], current: dict[str, object]) -> tuple[str, ...]:
        return gate.compare(record({"t": {"uss": 1}}, baseline), record({"t": {"uss": 1}}, current)).warnings

    assert warnings(thp("madvise"), thp("always")) == ("transparent huge pages: madvise (baseline) vs always (now)",)
    assert warnings(thp(None), thp("never")) == ("transparent huge pages: not built in (baseline) vs never (now)",)
    assert warnings(thp("always"), thp("always")) == ()
    assert warnings(CONTEXT, thp("always")) == ()  # a record from before the mode was recorded


def test_save_is_numbered_atomic_and_never_overwrites(tmp_path: Path) -> None:
    first = baseline.save_record(record({"t": {"uss": 1}}), tmp_path)
    second = baseline.save_record(record({"t": {"uss": 2}}), tmp_path, "main")
    assert first.name.startswith("0001_abc123def456_") and second.name == "0002_main.json"
    assert baseline.latest_record(tmp_path) == second
    with pytest.raises(BaselineError, match=r"a baseline named .main. exists .*--pagemap-overwrite"):
        baseline.save_record(record({"t": {"uss": 3}}), tmp_path, "main")
    assert baseline.load_record(second).by_key()["t"].metrics["uss"] == 2
    baseline.save_record(record({"t": {"uss": 3}}), tmp_path, "main", overwrite=True)
    assert baseline.load_record(second).by_key()["t"].metrics["uss"] == 3
    # No temporary file left; the lock file that serialises saves stays, hidden.
    assert sorted(p.name for p in tmp_path.iterdir()) == [baseline.LOCK_NAME, first.name, second.name]


def test_resolve_by_latest_name_and_path(tmp_path: Path) -> None:
    with pytest.raises(BaselineError, match="holds no saved record; run once with --pagemap-save"):
        baseline.resolve_record(tmp_path, None)
    saved = baseline.save_record(record({"t": {"uss": 1}}), tmp_path, "nightly")
    assert baseline.resolve_record(tmp_path, None) == saved
    assert baseline.resolve_record(tmp_path, "nightly") == saved
    assert baseline.resolve_record(tmp_path, str(saved)) == saved
    with pytest.raises(BaselineError, match=r"no baseline named 'weekly' .*\(saved: nightly\)"):
        baseline.resolve_record(tmp_path, "weekly")
    with pytest.raises(BaselineError, match="no such file"):
        baseline.resolve_record(tmp_path, str(tmp_path / "missing.json"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"schema": "pytest-pagemap/session", "version": 1, "context": {}, "measu', "is not valid JSON"),
        ("", "is not valid JSON"),
        ('{"schema": "something-else"}', "is not a pytest-pagemap record"),
        ("[1, 2]", "is not a pytest-pagemap record"),
        (
            '{"schema": "pytest-pagemap/session", "version": 99}',
            "at version: 99 is not a version of pytest-pagemap/session this code reads .1.; it was written by a newer",
        ),
        ('{"schema": "pytest-pagemap/session", "version": 1, "context": {}}', "misses the key 'measurements'"),
        (
            '{"schema": "pytest-pagemap/session", "version": 1, "context": {}, '
            '"measurements": [{"key": "t", "test": "t", "metrics": {"uss": "big"}}]}',
            "at measurements\\[0\\]\\.metrics\\.uss: must be an integer, not a string",
        ),
    ],
)
def test_corrupt_baselines_name_the_file_and_the_fault(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "0001_bad.json"
    path.write_text(content)
    with pytest.raises(BaselineError, match=message) as info:
        baseline.load_record(path)
    assert str(path) in str(info.value)


def test_saved_files_are_readable_like_any_other(tmp_path: Path) -> None:
    saved = baseline.save_record(record({"t": {"uss": 1}}), tmp_path, "main")
    umask = os.umask(0o022)
    os.umask(umask)
    assert saved.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_check_can_save_fails_before_a_run(tmp_path: Path) -> None:
    assert baseline.check_can_save(tmp_path / "not-yet", "main") is None
    saved = baseline.save_record(record({}), tmp_path, "main")
    assert baseline.check_can_save(tmp_path, "main", overwrite=True) == saved
    with pytest.raises(BaselineError, match="a baseline named 'main' exists"):
        baseline.check_can_save(tmp_path, "main")
    (tmp_path / "file").write_text("")
    with pytest.raises(BaselineError, match="is not a directory"):
        baseline.check_can_save(tmp_path / "file", None)


def test_concurrent_saves_get_distinct_numbers(tmp_path: Path) -> None:
    import threading

    names = [f"run{n}" for n in range(8)]
    threads = [threading.Thread(target=baseline.save_record, args=(record({}), tmp_path, name)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    saved = sorted(path.name for path in tmp_path.glob("*.json"))
    assert [name[:4] for name in saved] == [f"{n:04d}" for n in range(1, 9)]
    assert sorted(name[5:-5] for name in saved) == names


def test_a_test_path_is_not_a_baseline(tmp_path: Path) -> None:
    with pytest.raises(BaselineError, match="is a test path, not a baseline: write --pagemap-compare=NAME"):
        baseline.resolve_record(tmp_path, str(tmp_path))
    with pytest.raises(BaselineError, match="is a test path"):
        baseline.resolve_record(tmp_path, "test_app.py")


def test_records_of_a_test_have_unique_stable_keys() -> None:
    (only,) = baseline.records_of_test("t.py::test_a", [(None, "app --port 4242", {"uss": 1})])
    assert (only.key, only.label) == ("t.py::test_a", "app --port 4242")  # a lone measurement: the test id
    several = baseline.records_of_test(
        "t.py::test_a",
        [("warm", "warm", {"uss": 1}), ("hot", "hot", {"uss": 2}), ("hot", "hot", {"uss": 3}), (None, "x 1", {})],
    )
    assert [r.key for r in several] == [
        "t.py::test_a > warm",
        "t.py::test_a > hot",
        "t.py::test_a > hot #2",
        "t.py::test_a > #4",  # unnamed: its position, never its command line
    ]
    assert several[3].label == "x 1"  # the command line stays as display text
    assert baseline.records_of_test("t.py::test_a", []) == []


def test_merge_repeats_takes_the_median_per_key() -> None:
    def run(uss_a: int, uss_b: int | None) -> list[MeasurementRecord]:
        return baseline.records_of_test(
            "t", [("a", "a", {"uss": uss_a, "pss": None}), ("b", "b", {"uss": uss_b, "pss": None})]
        )

    merged = baseline.merge_repeats([run(5, 1), run(1, 2), run(3, None)])
    assert [(r.key, dict(r.metrics), r.repeat) for r in merged] == [
        ("t > a", {"uss": 3, "pss": None}, 3),
        ("t > b", {"uss": None, "pss": None}, 3),  # a run without it: unknown, not a biased median
    ]
    partial = baseline.merge_repeats([run(5, 1), run(7, 1)[:1]])
    assert [(r.key, r.repeat) for r in partial] == [("t > a", 2), ("t > b", 1)]


def test_duplicate_and_bad_repeat_are_malformed(tmp_path: Path) -> None:
    path = tmp_path / "0001_x.json"
    entry = {"key": "t", "test": "t", "metrics": {}, "repeat": 0}
    path.write_text(json.dumps({"schema": baseline.SCHEMA, "version": 1, "context": {}, "measurements": [entry]}))
    with pytest.raises(BaselineError, match=r"at measurements\[0\]\.repeat: 0 is below the smallest allowed value, 1"):
        baseline.load_record(path)


def test_bad_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="may hold only"):
        baseline.save_record(record({}), tmp_path, "../escape")


def test_median_of_repeats() -> None:
    samples = [{"uss": 5, "pss": None}, {"uss": 1, "pss": None}, {"uss": 3, "pss": None}, {"uss": 9, "pss": None}]
    assert baseline.median_metrics(samples) == {"uss": 3, "pss": None}


def test_reports() -> None:
    old = record({"t::a": {"uss": 100 * MiB, "rss": 100 * MiB, "uss_file": MiB}})
    new = record({"t::a": {"uss": 120 * MiB, "rss": 100 * MiB, "uss_file": 2 * MiB}, "t::b": {"uss": MiB}})
    result = gate.compare(old, new, [gate.parse_threshold("uss:5%")])
    markdown = ci_reports.markdown_summary(new, result, title="pytest-pagemap")
    assert markdown.startswith("## pytest-pagemap\n")
    assert "**gate: FAILED, 1 regression, exit code 1.**" in markdown
    assert (
        "| ❌ REGRESSED | `t::a` | uss | 100.0 MiB | 120.0 MiB | +20.0 MiB (+20.0%) | anon +19.0 MiB, file +1.0 MiB "
        "| uss:5% |" in markdown
    )
    assert "New (no baseline): `t::b`" in markdown
    report = ci_reports.json_report(new, result)
    json.dumps(report)  # serialisable
    assert report["comparison"]["regressions"] == 1 and report["comparison"]["exit_code"] == 1
    assert report["comparison"]["rows"][0]["file_change"] == MiB
    entries = ci_reports.benchmark_action_entries(new)
    assert {"name": "t::a uss", "unit": "bytes", "value": 120 * MiB, "extra": "app"} in entries


def test_benchmark_entries_are_positive_levels() -> None:
    levels = {"uss": 3 * MiB, "rss": 5 * MiB, "swap": 0, "anon": MiB}
    changes = {"uss_growth": MiB, "rss_growth": -MiB, "anon_growth": 0}
    entries = ci_reports.benchmark_action_entries(record({"t::a": {**levels, **changes}}))
    assert {entry["name"]: entry["value"] for entry in entries} == {
        "t::a uss": 3 * MiB,
        "t::a rss": 5 * MiB,
        "t::a anon": MiB,
    }
    assert set(ci_reports.BENCHMARK_METRICS) == {name for name, spec in METRICS.items() if not spec.growth}


def test_markdown_counts_unchanged_metrics_and_names_the_saved_file() -> None:
    same = record({"t::a": {"uss": MiB, "rss": MiB}})
    markdown = ci_reports.markdown_summary(same, gate.compare(same, same), saved=".pagemap/0002_x.json")
    assert "Saved 1 measurement as baseline `.pagemap/0002_x.json`." in markdown
    assert "2 metrics of 1 measurement compared: 2 unchanged" in markdown and "| measurement | metric |" not in markdown
    assert "Thresholds: none, so nothing can fail; noise floor 64.0 KiB." in markdown


def test_json_report_of_a_session_without_comparison() -> None:
    report = ci_reports.json_report(record({"t": {"uss": 1}}), None, saved="s.json")
    assert report["schema"] == ci_reports.REPORT_SCHEMA and report["saved"] == "s.json"
    assert report["comparison"] is None and report["measurements"][0]["repeat"] == 1


def test_junit_properties() -> None:
    test = "t.py::test_a"
    several = baseline.records_of_test(
        test, [("warm", "warm", {"uss": 1, "pss": None}), ("hot", "hot", {"uss": 2, "rss": 3})]
    )
    assert junit_properties(several, per_test=True) == [
        ("pagemap.uss[warm]", 1),
        ("pagemap.uss[hot]", 2),
        ("pagemap.rss[hot]", 3),
    ]
    (only,) = baseline.records_of_test(test, [("app", "app", {"uss": 1, "swap": 0})])
    assert junit_properties([only], per_test=True) == [("pagemap.uss", 1)]  # swap is not a main metric
    assert junit_properties([only], per_test=False) == [(f"pagemap.uss[{test}]", 1)]


def test_terminal_lines_list_regressions_as_a_table() -> None:
    old = record({"t::a": {"uss": 100 * MiB, "rss": 100 * MiB}, "t::gone": {"uss": 1}})
    new = record({"t::a": {"uss": 120 * MiB, "rss": 101 * MiB}, "t::b": {"uss": MiB}}, {**CONTEXT, "machine": "arm"})
    result = gate.compare(old, new, [gate.parse_threshold("uss:5%")])
    lines = ci_reports.comparison_lines(result)
    texts = [text for text, _ in lines]
    assert texts[1:] == [
        "thresholds: uss:5%; noise floor 64.0 KiB",
        "WARNING: the baseline was measured on another machine, so may not compare: machine: x86_64 (baseline) vs "
        "arm (now)",
        "1 regression beyond its threshold:",
        "             measurement  metric   baseline    current              change  threshold",
        "  REGRESSED  t::a         uss     100.0 MiB  120.0 MiB  +20.0 MiB (+20.0%)  uss:5%",
        "worse, within the thresholds (1 metric):",
        "  t::a: rss +1.0 MiB (+1.0%)",
        "new, not in the baseline (not gated): t::b",
        "removed, in the baseline but not measured now: t::gone",
        "2 metrics of 1 measurement compared: 1 regressed, 1 worse (unchanged: within 64.0 KiB)",
        "gate: FAILED, 1 regression, exit code 1",
    ]
    assert [tone for _, tone in lines][2:4] == ["warning", "bad"] and lines[-1][1] == "bad"
    verbose = [text for text, _ in ci_reports.comparison_lines(result, verbose=True)]
    assert "1 change beyond the noise floor:" in verbose


def test_without_thresholds_every_change_beyond_the_noise_floor_is_listed() -> None:
    old = record({"t::a": {"uss": 100 * MiB, "rss": 100 * MiB, "anon": 50 * MiB, "swap": 0}})
    new = record({"t::a": {"uss": 124 * MiB, "rss": 100 * MiB + 4096, "anon": 40 * MiB, "swap": 0}})
    result = gate.compare(old, new)
    assert {row.metric: row.status for row in result.rows} == {
        "uss": "worse",
        "rss": "unchanged",  # one page: within the noise floor
        "anon": "better",
        "swap": "unchanged",
    }
    texts = [text for text, _ in ci_reports.comparison_lines(result)]
    assert "2 changes beyond the noise floor, no threshold set:" in texts
    assert any(line.startswith("  worse   t::a") and "+24.0 MiB (+24.0%)" in line for line in texts)
    assert texts[-1] == "gate: nothing to fail without thresholds, exit code 0" and result.exit_code == 0


def test_the_noise_floor_stops_relative_thresholds_failing_on_a_few_pages() -> None:
    old, new = record({"t": {"uss_growth": 60 * 1024}}), record({"t": {"uss_growth": 80 * 1024}})  # +33%
    assert gate.compare(old, new, [gate.parse_threshold("uss_growth:5%")]).passed
    assert not gate.compare(old, new, [gate.parse_threshold("uss_growth:5%")], noise=16 * 1024).passed
    own = gate.parse_threshold("uss_growth:5%,noise=8KiB")  # a threshold's own floor wins
    assert (own.percent, own.noise, own.text) == (5.0, 8192, "uss_growth:5%,noise=8.0 KiB")
    assert not gate.compare(old, new, [own]).passed
    big = record({"t": {"uss_growth": 60 * 1024 + MiB}})
    assert not gate.compare(old, big, [gate.parse_threshold("uss_growth:5%")]).passed
    absolute = gate.compare(old, new, [gate.parse_threshold("uss_growth:+4KiB")])  # absolute: exact
    assert [row.status for row in absolute.rows] == ["regression"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("uss:+1MiB,noise=4KiB", "noise= applies to relative thresholds"),
        ("uss:5%,noise=lots", "cannot read the noise floor"),
    ],
)
def test_bad_noise_floors_say_why(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        gate.parse_threshold(text)


def test_a_uss_regression_of_file_backed_pages_only_does_not_fail() -> None:
    old = record({"t": {"uss": 20 * MiB, "uss_file": 2 * MiB, "anon": 18 * MiB}})
    neighbour_gone = record({"t": {"uss": 23 * MiB, "uss_file": 5 * MiB, "anon": 18 * MiB}})
    result = gate.compare(old, neighbour_gone, [gate.parse_threshold("uss:5%")])
    (row,) = [row for row in result.rows if row.metric == "uss"]
    assert row.status == "file-only" and row.describe_split() == "anon +0 B, file +3.0 MiB" and result.passed
    explicit = gate.compare(old, neighbour_gone, [gate.parse_threshold("uss:5%"), gate.parse_threshold("uss_file:5%")])
    assert [row.metric for row in explicit.regressions] == ["uss_file"]
    allocated = record({"t": {"uss": 23 * MiB, "uss_file": 2 * MiB, "anon": 21 * MiB}})
    assert [row.metric for row in gate.compare(old, allocated, [gate.parse_threshold("uss:5%")]).regressions] == ["uss"]


def test_a_uss_growth_regression_of_file_backed_pages_only_does_not_fail() -> None:
    old = record({"t": {"uss_growth": MiB, "uss_file_growth": 0, "anon_growth": MiB}})
    neighbour_exited = record({"t": {"uss_growth": 7 * MiB, "uss_file_growth": 6 * MiB, "anon_growth": MiB}})
    result = gate.compare(old, neighbour_exited, [gate.parse_threshold("uss_growth:+512KiB")])
    (row,) = [row for row in result.rows if row.metric == "uss_growth"]
    assert row.status == "file-only" and row.describe_split() == "anon +0 B, file +6.0 MiB" and result.passed
    text = "\n".join(line for line, _ in ci_reports.comparison_lines(result))
    assert "(not failing; gate uss_file_growth to fail on them)" in text
    explicit = gate.compare(old, neighbour_exited, [gate.parse_threshold("uss_file_growth:+512KiB")])
    assert [row.metric for row in explicit.regressions] == ["uss_file_growth"]
    allocated = record({"t": {"uss_growth": 3 * MiB, "uss_file_growth": 0, "anon_growth": 3 * MiB}})
    regressed = gate.compare(old, allocated, [gate.parse_threshold("uss_growth:+512KiB")])
    assert [row.metric for row in regressed.regressions] == ["uss_growth"]
    before_the_split = record({"t": {"uss_growth": MiB}})  # a baseline from before uss_file_growth was recorded
    unsplit = gate.compare(before_the_split, neighbour_exited, [gate.parse_threshold("uss_growth:+512KiB")])
    assert [row.metric for row in unsplit.regressions] == ["uss_growth"]


def keyed(test: str, keys_and_uss: list[tuple[str, int]]) -> SessionRecord:
    return SessionRecord(
        context=CONTEXT,
        measurements=tuple(
            MeasurementRecord(key=key, test=test, label="cmd", metrics={"uss": uss}) for key, uss in keys_and_uss
        ),
    )


def test_a_baseline_keyed_by_command_lines_is_matched_by_position() -> None:
    old = keyed("t", [("t > server --port 41234", 10 * MiB), ("t > server --port 41235", 10 * MiB)])
    new = keyed("t", [("t > #1", 10 * MiB), ("t > #2", 20 * MiB)])
    result = gate.compare(old, new, [gate.parse_threshold("uss:5%")])
    assert [row.key for row in result.regressions] == ["t > #2"]
    assert result.matched_by_position == ("t > #1", "t > #2") and result.new == result.removed == ()
    texts = [text for text, _ in ci_reports.comparison_lines(result)]
    assert any(text.startswith("matched by position") for text in texts)


def test_a_baseline_measurement_without_counterpart_fails_the_gate() -> None:
    old = keyed("t", [("t > warm", MiB), ("t > hot", MiB)])
    new = keyed("t", [("t > warm", MiB), ("t > cold", MiB)])  # a label renamed: no match by position
    result = gate.compare(old, new, [gate.parse_threshold("uss:5%")])
    (reason,) = result.unmatched
    assert reason.startswith("'t > hot' of the baseline matches no measurement of t now")
    assert not result.passed and result.exit_code == gate.EXIT_REGRESSED and result.new == ("t > cold",)
    fewer = gate.compare(keyed("t", [("t > #1", MiB), ("t > #2", MiB)]), keyed("t", [("t", MiB)]))
    assert len(fewer.unmatched) == 1 and not fewer.passed


def test_a_threshold_on_a_metric_not_recorded_cannot_gate() -> None:
    old, new = record({"t": {"uss": MiB, "pss": None}}), record({"t": {"uss": 3 * MiB, "pss": None}})
    result = gate.compare(old, new, [gate.parse_threshold("pss:5%")])
    assert result.unmeasured == ("pss is not recorded in either record for 1 measurement: t",)
    assert result.exit_code == gate.EXIT_CANNOT_GATE and not result.passed
    texts = [text for text, _ in ci_reports.comparison_lines(result)]
    assert "CANNOT GATE: pss is not recorded in either record for 1 measurement: t" in texts
    nothing = gate.compare(record({"t": {"uss": MiB}}), record({"u": {"uss": MiB}}), [gate.parse_threshold("uss:5%")])
    assert nothing.exit_code == gate.EXIT_CANNOT_GATE and "no metric was compared" in nothing.problems[0]


def _with_thp(mode: str | None) -> dict[str, object]:
    context = baseline.collect_context()
    return {**context, "capabilities": {**context["capabilities"], "thp_mode": mode}}


def test_a_collapse_into_a_huge_page_regresses_anon_and_the_gate_says_why(puppet: Puppet) -> None:
    """What khugepaged does at random where THP is "always", done on demand with MADV_COLLAPSE: a range with a
    few pages written becomes a whole huge page, and the gate's regression carries the hint."""
    if pagewalk.capabilities().thp_mode in (None, "never"):
        pytest.skip("THP is off here: MADV_COLLAPSE cannot form huge pages")
    area = puppet.map(1024, align=2 * MiB)  # a whole aligned huge page inside it
    puppet.write(area, range(8))
    before = pagewalk.snapshot(puppet.pid)
    puppet.madvise(area, "COLLAPSE", range(512))
    after = pagewalk.snapshot(puppet.pid)
    (grown,) = [r for r in (after - before).regions if r.start == area.address]
    assert grown.anon_growth == 2 * MiB - 8 * 4096  # the pages never touched are filled in

    def session(snap: pagewalk.Snapshot, mode: str | None) -> SessionRecord:
        return record({"t::server": {"anon": snap.anon, "uss": snap.uss, "written": 0}}, _with_thp(mode))

    always = gate.compare(session(before, "always"), session(after, "always"), [gate.parse_threshold("anon:5%")])
    assert [row.metric for row in always.regressions] == ["anon"]
    (hint,) = always.hints
    assert hint.startswith("THP is 'always' on this machine") and "anon can grow by up to 2.0 MiB" in hint
    assert f"note: {hint}." in [text for text, _ in ci_reports.comparison_lines(always)]
    assert f"> ℹ️ {hint}." in ci_reports.markdown_summary(session(after, "always"), always)
    assert ci_reports.json_report(session(after, "always"), always)["comparison"]["hints"] == [hint]
    madvise = gate.compare(session(before, "madvise"), session(after, "madvise"), [gate.parse_threshold("anon:5%")])
    assert madvise.regressions and madvise.hints == ()


@pytest.mark.parametrize(
    ("metric", "growth", "hinted"),
    [("anon", 8 * MiB, True), ("anon", 8 * MiB + 1, False), ("rss_growth", MiB, True), ("written", MiB, False)],
)
def test_the_thp_hint_is_for_growth_collapses_can_explain(metric: str, growth: int, hinted: bool) -> None:
    old = record({"t::a": {metric: 10 * MiB}}, _with_thp("always"))
    new = record({"t::a": {metric: 10 * MiB + growth}}, _with_thp("always"))
    result = gate.compare(old, new, [gate.parse_threshold(f"{metric}:5%")])
    assert len(result.regressions) == 1 and bool(result.hints) == hinted
