"""The strict reader of records and reports, their JSON Schema, and the storage that keeps records safe."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from pagewalk import baseline, ci_reports, gate, record_format
from pagewalk.baseline import BaselineError, MeasurementRecord, SessionRecord
from pagewalk.measure import METRICS
from pagewalk.record_format import REPORT_SCHEMA, SESSION_SCHEMA, FormatFault, read_document

CONTEXT = {
    "kernel": "6.18.0",
    "machine": "x86_64",
    "page_size": 4096,
    "python": "3.11.7",
    "implementation": "cpython",
    "capabilities": {
        "pfn_visible": True,
        "kpageflags": True,
        "pagemap_scan": True,
        "soft_dirty": False,
        "thp_mode": "madvise",
    },
    "git": {"commit": "abc123def4567890", "branch": "main", "dirty": False},
}
# A record as version 1 wrote it (before any metric was added): it must keep loading.
VERSION_1_RECORD = """{
  "schema": "pytest-pagemap/session",
  "version": 1,
  "created": "2026-11-27T08:31:25+00:00",
  "context": {"kernel": "6.12.0-amd64", "machine": "x86_64", "page_size": 4096, "python": "3.11.2",
              "implementation": "cpython",
              "capabilities": {"pfn_visible": false, "kpageflags": false, "pagemap_scan": true,
                               "soft_dirty": true, "thp_mode": "madvise"},
              "git": {"commit": null, "branch": null, "dirty": null}},
  "measurements": [
    {"key": "t.py::test_a", "test": "t.py::test_a", "label": "app",
     "metrics": {"uss": 39012352, "rss": 45056000, "pss": null, "swap": 0, "anon": 30000000,
                 "uss_growth": -8192, "rss_growth": 0, "anon_growth": -4096, "written": null, "accessed": null},
     "repeat": 1}
  ]
}
"""


def session(**metrics: int | None) -> dict[str, Any]:
    entry = {"key": "t", "test": "t", "label": "app", "metrics": metrics, "repeat": 1}
    return {"schema": SESSION_SCHEMA, "version": 1, "created": "now", "context": CONTEXT, "measurements": [entry]}


def encoded(document: object) -> bytes:
    return json.dumps(document).encode()


def validator(schema: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(record_format.shipped_schema(schema))


def test_the_shipped_schemas_are_current_and_valid() -> None:
    for schema in (SESSION_SCHEMA, REPORT_SCHEMA):
        shipped = record_format.shipped_schema(schema)
        assert shipped == record_format.json_schema(schema), "run: python -m pagewalk.record_format"
        jsonschema.Draft202012Validator.check_schema(shipped)
    metrics = record_format.shipped_schema(SESSION_SCHEMA)["$defs"]["measurement"]["properties"]["metrics"]
    assert set(metrics["properties"]) == set(METRICS)  # derived from the metrics measure() knows


def test_a_version_1_record_loads(tmp_path: Path) -> None:
    path = tmp_path / "0001_old.json"
    path.write_text(VERSION_1_RECORD)
    (entry,) = baseline.load_record(path).measurements
    assert entry.metrics["uss"] == 39012352 and entry.metrics["uss_growth"] == -8192 and entry.metrics["pss"] is None
    assert validator(SESSION_SCHEMA).is_valid(json.loads(VERSION_1_RECORD))


def test_every_metric_is_readable_and_growths_may_be_negative() -> None:
    values = {name: (-1 if spec.growth else 1) for name, spec in METRICS.items()}
    document = read_document(encoded(session(**values)))
    assert document["measurements"][0]["metrics"] == values
    assert validator(SESSION_SCHEMA).is_valid(session(**values))


def test_saved_records_and_reports_validate_and_load(tmp_path: Path) -> None:
    measurements = (
        MeasurementRecord(key="t.py::test_a", test="t.py::test_a", label="app", metrics={"uss": 100, "rss": None}),
        MeasurementRecord(key="t.py::test_b[ü]", test="t.py::test_b[ü]", label="", metrics={"uss_growth": -5}),
    )
    record = SessionRecord(context=baseline.collect_context(), measurements=measurements)
    saved = baseline.save_record(record, tmp_path / "store", "base")
    assert validator(SESSION_SCHEMA).is_valid(json.loads(saved.read_bytes()))
    current = SessionRecord(context=record.context, measurements=measurements[:1])
    comparison = gate.compare(baseline.load_record(saved), current, [gate.parse_threshold("uss:5%")])
    report_path = tmp_path / "report.json"
    baseline.write_json_atomic(report_path, ci_reports.json_report(current, comparison, saved=str(saved)))
    report = json.loads(report_path.read_bytes())
    validator(REPORT_SCHEMA).validate(report)
    assert read_document(report_path.read_bytes())["comparison"]["rows"][0]["metric"] == "uss"
    # A report holds a whole session record: it serves as a baseline too (a CI artifact, say).
    assert baseline.load_record(report_path).measurements == current.measurements


@pytest.mark.parametrize(
    ("content", "where", "what"),
    [
        (b'{"schema": "pytest-pagemap/session", "version": 1, "context": {}, "measurements": [\xff]}', "", "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "", "nested too deeply"),
        (
            encoded(session(uss=1)).replace(b'"uss": 1', b'"uss": 1' + b"0" * 5000),
            "measurements[0].metrics.uss",
            "5001 digits",
        ),
        (encoded(session(uss=2**63)), "measurements[0].metrics.uss", "beyond the 64-bit range"),
        (encoded(session(uss=-1)), "measurements[0].metrics.uss", "below the smallest allowed value, 0"),
        (encoded(session(uss_growth=-(2**63) - 1)), "measurements[0].metrics.uss_growth", "below the smallest"),
        (encoded(session(bogus=1)), "measurements[0].metrics.bogus", "is not a metric this version records"),
        (
            encoded(session(uss=1)).replace(b'"uss": 1', b'"uss": 1.5'),
            "measurements[0].metrics.uss",
            "an integer, not a number",
        ),
        (
            encoded(session(uss=1)).replace(b'"uss": 1', b'"uss": NaN'),
            "measurements[0].metrics.uss",
            "NaN is not standard JSON",
        ),
        (
            encoded(session(uss=1)).replace(b'"uss": 1', b'"uss": 1, "uss": 2'),
            "measurements[0].metrics",
            "names the key 'uss' twice",
        ),
        (
            encoded(session(uss=1)).replace(b'"key": "t"', b'"key": 5'),
            "measurements[0].key",
            "must be a string, not an integer",
        ),
        (
            encoded(session(uss=1)).replace(b'"key": "t"', b'"key": "\\ud800"'),
            "measurements[0].key",
            "unpaired surrogate",
        ),
        (
            encoded(session(uss=1)).replace(b'"key": "t"', b'"key": "\\u001b[31m"'),
            "measurements[0].key",
            "control character",
        ),
        (
            encoded(session(uss=1)).replace(b'"repeat": 1', b'"repeat": 0'),
            "measurements[0].repeat",
            "below the smallest",
        ),
        (
            encoded(session(uss=1)).replace(b'"repeat": 1', b'"repeat": true'),
            "measurements[0].repeat",
            "an integer, not a boolean",
        ),
        (encoded(session(uss=1)).replace(b'"version": 1', b'"version": true'), "version", "a boolean is not a version"),
        (encoded(session(uss=1)).replace(b'"version": 1', b'"version": 2'), "version", "newer pytest-pagemap: upgrade"),
        (encoded({**session(), "extra": 1}), "extra", "is not a key of this format"),
        (encoded({**session(), "context": {"git": "main"}}), "context.git", "must be an object, not a string"),
        (
            encoded({**session(), "context": {"page_size": 0}}),
            "context.page_size",
            "below the smallest allowed value, 1",
        ),
        (encoded({**session(), "context": {"odd key": 1e300}}), 'context["odd key"]', "beyond the 64-bit range"),
        (
            encoded({**session(), "context": {"x": 1}}).replace(b'"x": 1', b'"x": 1e999'),
            "context.x",
            "beyond the range of a double",
        ),
        (encoded({**session(), "measurements": {}}), "measurements", "must be an array, not an object"),
        (
            encoded({**session(), "measurements": [session()["measurements"][0]] * 2}),
            "measurements[1].key",
            "also the key of measurements[0]",
        ),
        (
            encoded({"schema": "pytest-pagemap/session", "version": 1, "context": {}}),
            "",
            "misses the key 'measurements'",
        ),
        (encoded({"schema": "other"}), "", "is not a pytest-pagemap record"),
        (b'{"schema": "pytest-pagemap/session", "version": 1, "context": {}, "measu', "", "is not valid JSON"),
    ],
    ids=lambda value: value.replace(" ", "-")[:40] if isinstance(value, str) else "",
)
def test_every_fault_names_the_file_the_path_and_the_fault(
    tmp_path: Path, content: bytes, where: str, what: str
) -> None:
    path = tmp_path / "0001_bad.json"
    path.write_bytes(content)
    with pytest.raises(BaselineError) as info:
        baseline.load_record(path)
    message = str(info.value)
    assert message.startswith(f"baseline {path}: ") and what in message
    if where:
        assert f": at {where}: " in message
    with pytest.raises(FormatFault) as fault:
        read_document(content)
    assert fault.value.where == where


def test_measurements_from_workers_are_checked_the_same_way() -> None:
    entry = MeasurementRecord(key="t", test="t", label="", metrics={"uss": 1}).to_dict()
    assert MeasurementRecord.from_dict(entry).metrics == {"uss": 1}
    with pytest.raises(ValueError, match=r"measurement\.metrics\.uss: -1 is below"):
        MeasurementRecord.from_dict({**entry, "metrics": {"uss": -1}})


def test_a_fifo_or_directory_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "0001_fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(BaselineError, match="is a FIFO, not a regular file"):
        baseline.load_record(fifo)
    with pytest.raises(BaselineError, match="is a directory"):
        baseline.load_record(tmp_path)


# --- storage ------------------------------------------------------------------------------------------------


def record(**metrics: int | None) -> SessionRecord:
    return SessionRecord(
        context=CONTEXT, measurements=(MeasurementRecord(key="t", test="t", label="", metrics=metrics),)
    )


def test_a_symlinked_lock_is_refused_and_its_target_never_created(tmp_path: Path) -> None:
    storage, target = tmp_path / "store", tmp_path / "elsewhere"
    storage.mkdir()
    (storage / baseline.LOCK_NAME).symlink_to(target)
    with pytest.raises(BaselineError, match=r"\.lock is a symbolic link, not a regular file: remove it"):
        baseline.check_can_save(storage, None)  # at start-up, before any test runs
    with pytest.raises(BaselineError, match="symbolic link"):
        baseline.save_record(record(uss=1), storage, "base")
    assert not target.exists() and not list(storage.glob("*.json"))


def test_a_fifo_as_lock_is_refused_without_hanging(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / baseline.LOCK_NAME)
    with pytest.raises(BaselineError, match=r"\.lock is a FIFO, not a regular file: remove it"):
        baseline.check_can_save(tmp_path, None)
    with pytest.raises(BaselineError, match="is a FIFO, not a regular file"):
        baseline.save_record(record(uss=1), tmp_path, "base")


def test_written_json_is_standard(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not JSON compliant"):
        baseline.write_json_atomic(tmp_path / "report.json", {"change_percent": float("nan")})
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one


# A writer killed while its temporary file is open: the temporary file stays behind.
KILLED_WRITER = """
import os, sys
from pathlib import Path
from pagewalk import baseline
handle, temporary = baseline._create_temporary(Path(sys.argv[1]) / sys.argv[2])
print(temporary, flush=True)
os.kill(os.getpid(), 9)
"""


def killed_writer(directory: Path, target: str) -> Path:
    child = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(directory), target], capture_output=True, text=True, check=False
    )
    assert child.returncode == -signal.SIGKILL
    temporary = Path(child.stdout.strip())
    assert temporary.exists() and str(os.getpid()) not in temporary.name
    return temporary


def test_temporary_files_of_killed_writers_are_removed(tmp_path: Path) -> None:
    left = [killed_writer(tmp_path, "0001_a.json"), killed_writer(tmp_path, "0007_b.json")]
    live = tmp_path / f".0002_c.json.{os.getpid()}.0123abcd.tmp"  # this process is alive: maybe mid-save
    legacy_old, legacy_new = tmp_path / ".0003_d.json.ab_cd123.tmp", tmp_path / ".0004_e.json.xy_zw789.tmp"
    other = tmp_path / ".notes.txt.1.0123abcd.tmp"  # not a record's: left alone
    for path in (live, legacy_old, legacy_new, other):
        path.write_text("{")
    os.utime(legacy_old, (0, 0))
    saved = baseline.save_record(record(uss=1), tmp_path, "base")
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == sorted([baseline.LOCK_NAME, saved.name, live.name, legacy_new.name, other.name])
    assert all(not path.exists() for path in left)
    report = killed_writer(tmp_path, "report.json")
    baseline.write_json_atomic(tmp_path / "report.json", {"a": 1})  # a report's own leftovers too
    assert not report.exists() and other.exists()


def test_sessions_saving_in_one_second_keep_both_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(baseline, "default_name", lambda context: "abc123def456_20261129T230000")
    first = baseline.save_record(record(uss=1), tmp_path)
    second = baseline.save_record(record(uss=2), tmp_path)
    assert (first.name, second.name) == (
        "0001_abc123def456_20261129T230000.json",
        "0002_abc123def456_20261129T230000-2.json",
    )
    assert baseline.load_record(second).measurements[0].metrics == {"uss": 2}


# Each saver waits for the parent's word on standard input, so all save at once.
SAVER = """
import sys
from pagewalk import baseline
from pagewalk.baseline import MeasurementRecord, SessionRecord
sys.stdin.readline()
context = {"git": {"commit": "abc123def4567890"}}
value = int(sys.argv[2])
record = SessionRecord(context=context, measurements=(MeasurementRecord("t", "t", "", {"uss": value}),))
print(baseline.save_record(record, sys.argv[1]), flush=True)
"""


def test_concurrent_processes_saving_unnamed_keep_every_record(tmp_path: Path) -> None:
    savers = [
        subprocess.Popen(
            [sys.executable, "-c", SAVER, str(tmp_path), str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(6)
    ]
    for saver in savers:
        assert saver.stdin is not None
        saver.stdin.write("go\n")
        saver.stdin.flush()
    outputs = [saver.communicate()[0].strip() for saver in savers]
    assert [saver.returncode for saver in savers] == [0] * 6
    assert len(set(outputs)) == 6
    values = sorted(baseline.load_record(path).measurements[0].metrics["uss"] for path in map(Path, outputs))
    assert values == list(range(6))
    numbers = sorted(Path(path).name[:4] for path in outputs)
    assert numbers == [f"{n:04d}" for n in range(1, 7)]


def test_concurrent_threads_saving_unnamed_keep_every_record(tmp_path: Path) -> None:
    threads = [threading.Thread(target=baseline.save_record, args=(record(uss=n), tmp_path)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(list(tmp_path.glob("*.json"))) == 8


# --- parsers -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "uss:٥%",
        "uss:５%",
        "uss:1e306%",
        "uss:" + "9" * 400 + "%",
        "uss:10001%",
        "uss:inf%",
        "uss:nan%",
        "rss:+৫ MiB",
        "rss:++1MiB",
        "rss:+9223372036854775808 B",
        "rss:+8 EiB",
        "uss:5 %%",
    ],
)
def test_thresholds_outside_the_grammar_are_refused_with_it(text: str) -> None:
    with pytest.raises(ValueError, match="METRIC:N%") as info:
        gate.parse_threshold(text)
    assert type(info.value) is ValueError


def test_thresholds_at_the_bounds_are_accepted() -> None:
    assert gate.parse_threshold("uss:10000%").percent == 10_000
    assert gate.parse_threshold("rss:+9223372036854775807 B").absolute == 2**63 - 1
    assert gate.parse_threshold("uss:0.001%").percent == 0.001
    assert gate.parse_threshold("uss:5.%").percent == 5


@pytest.mark.parametrize("text", ["৫５٨ kB", "１ MiB", "1e3", "9" * 40, "0x10", "1_000", "inf", "nan", "- 1", "+-1"])
def test_sizes_take_ascii_decimals_only(text: str) -> None:
    from pagewalk.units import parse_size

    with pytest.raises(ValueError, match="expected an int of bytes"):
        parse_size(text)


def test_sizes_are_bounded_and_exact() -> None:
    from pagewalk.units import MAX_SIZE, parse_size

    assert parse_size("9223372036854775807") == MAX_SIZE  # exact: not rounded through a float
    assert parse_size("8 TiB") == 8 << 40
    for too_big in ("9223372036854775808", "8388608 TiB", 2**63):
        with pytest.raises(ValueError, match=r"more than 9223372036854775807 bytes"):
            parse_size(too_big)
    assert parse_size(-(2**63) + 1, allow_negative=True) == -MAX_SIZE
    with pytest.raises(ValueError, match="negative"):
        parse_size("-0.4")
