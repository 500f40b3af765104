"""Baselines, thresholds and CI reports of the core (the pytest options on top are tested in tests/plugin)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pagesnap import baseline, ci_reports, gate
from pagesnap.baseline import BaselineError, MeasurementRecord, SessionRecord

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
    ],
)
def test_bad_thresholds_say_why(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        gate.parse_threshold(text)


def test_threshold_allowance() -> None:
    assert gate.parse_threshold("uss:5%").allowed(100 * MiB) == 105 * MiB
    assert gate.parse_threshold("rss:+2MiB").allowed(10 * MiB) == 12 * MiB
    assert gate.parse_threshold("uss_growth:50%").allowed(-4 * MiB) == -2 * MiB


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
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name, second.name]  # no temporary left


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
        ('{"schema": "something-else"}', "is not a pytest-pagemap session record"),
        ("[1, 2]", "is not a pytest-pagemap session record"),
        ('{"schema": "pytest-pagemap/session", "version": 99}', "schema version 99"),
        ('{"schema": "pytest-pagemap/session", "version": 1, "context": {}}', "missing key 'measurements'"),
        (
            '{"schema": "pytest-pagemap/session", "version": 1, "context": {}, '
            '"measurements": [{"key": "t", "test": "t", "metrics": {"uss": "big"}}]}',
            "must map names to integers",
        ),
    ],
)
def test_corrupt_baselines_name_the_file_and_the_fault(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "0001_bad.json"
    path.write_text(content)
    with pytest.raises(BaselineError, match=message) as info:
        baseline.load_record(path)
    assert str(path) in str(info.value)


def test_bad_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="may hold only"):
        baseline.save_record(record({}), tmp_path, "../escape")


def test_median_of_repeats() -> None:
    samples = [{"uss": 5, "pss": None}, {"uss": 1, "pss": None}, {"uss": 3, "pss": None}, {"uss": 9, "pss": None}]
    assert baseline.median_metrics(samples) == {"uss": 3, "pss": None}


def test_reports() -> None:
    old = record({"t::a": {"uss": 100 * MiB, "rss": 100 * MiB}})
    new = record({"t::a": {"uss": 120 * MiB, "rss": 100 * MiB}, "t::b": {"uss": MiB}})
    result = gate.compare(old, new, [gate.parse_threshold("uss:5%")])
    markdown = ci_reports.markdown_summary(new, result)
    assert "**1 regression**" in markdown
    assert "| ❌ | `t::a` | uss | 100.0 MiB | 120.0 MiB | +20.0 MiB (+20.0%) | uss:5% |" in markdown
    assert "New (no baseline): `t::b`" in markdown
    report = ci_reports.json_report(new, result)
    json.dumps(report)  # serialisable
    assert report["comparison"]["regressions"] == 1
    entries = ci_reports.benchmark_action_entries(new)
    assert {"name": "t::a uss", "unit": "bytes", "value": 120 * MiB, "extra": "app"} in entries
