"""Seeded fuzzing of what the gate reads from others: baselines and reports, threshold and size expressions,
and the storage folder (planted links and FIFOs, concurrent savers).

Every mutated file must end in a `FormatFault` (a `BaselineError` through `load_record`) or in a valid record
that writes back as standard JSON and validates against the shipped JSON Schema; where the standard decoder
can read a file too, the schema and the reader must agree (save for the rules JSON Schema cannot state).
Every expression must parse to a bounded threshold or size, or raise a plain `ValueError`.

Reproduce a run with PAGEMAP_FUZZ_SEED=N (printed on failure); PAGEMAP_FUZZ_COUNT sets the cases per test.
"""

from __future__ import annotations

import collections
import json
import os
import random
import threading
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from pagewalk import baseline, ci_reports, gate, record_format, thresholds
from pagewalk.baseline import BaselineError, MeasurementRecord, SessionRecord
from pagewalk.measure import METRICS
from pagewalk.record_format import INT64_MAX, REPORT_SCHEMA, SESSION_SCHEMA, FormatFault, read_document
from pagewalk.units import MAX_SIZE, parse_size

SEED = int(os.environ.get("PAGEMAP_FUZZ_SEED", "14081"))
COUNT = int(os.environ.get("PAGEMAP_FUZZ_COUNT", "3000"))
# Faults only the reader can find: JSON Schema sees a parsed document, with keys already merged, 1.0 equal to 1,
# surrogates decoded, and no limit on nesting; and it cannot say that a property is unique across an array.
READER_ONLY = (
    "names the key",
    "also the key of",
    "unpaired surrogate",
    "nested too deeply",
    "not a number",
    "a number is not",
)

CONTEXT = {
    "kernel": "6.18.0",
    "machine": "x86_64",
    "page_size": 4096,
    "python": "3.13.1",
    "implementation": "cpython",
    "capabilities": {
        "pfn_visible": False,
        "kpageflags": False,
        "pagemap_scan": True,
        "soft_dirty": False,
        "thp_mode": "madvise",
    },
    "git": {"commit": "0123456789abcdef0123456789abcdef01234567", "branch": "main", "dirty": False},
}
ODD_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    10**30,
    1.0,
    1.5,
    -0.0,
    1e300,
    "",
    "x",
    "١٢٣",
    "\ud800",
    "a\x1bb",
    "t\n",
    [],
    [1],
    {},
    {"uss": 1},
    {"a": {"b": {"c": [None]}}},
]
ODD_TEXTS = [
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1e999",
    b"-1",
    b"1" + b"0" * 400,
    b"1" + b"0" * 5000,
    b"1.0",
    b"true",
    b"null",
    b'"x"',
    b"[" * 40 + b"]" * 40,
    b"[" * 3000,
    b"\xff",
    b"\xc3",
    b"\\ud800",
    b"\x00",
]


def seed_documents() -> list[dict[str, Any]]:
    metrics = {name: (-4096 if spec.growth else 8192) for name, spec in METRICS.items()}
    measurements = (
        MeasurementRecord(key="t.py::test_a", test="t.py::test_a", label="app", metrics=metrics),
        MeasurementRecord(
            key="t.py::test_b > warm", test="t.py::test_b", label="warm", metrics={"uss": 1, "pss": None}
        ),
        MeasurementRecord(key="t.py::test_c[ü]", test="t.py::test_c[ü]", label="", metrics={"rss": 3}, repeat=3),
    )
    context = CONTEXT  # fixed, not this machine's: a seed gives the same cases everywhere
    record = SessionRecord(context=context, measurements=measurements)
    current = SessionRecord(context=context, measurements=measurements[:2])
    comparison = gate.compare(record, current, [gate.parse_threshold("uss:5%"), gate.parse_threshold("rss:+1MiB")])
    report = ci_reports.json_report(current, comparison, saved=".pagemap/0001_base.json")
    return [record.to_dict(), report, ci_reports.json_report(record, None)]


def paths_of(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths_of(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths_of(item, (*path, index))
    return found


def structured_mutation(rng: random.Random, document: dict[str, Any]) -> bytes:
    """Change one part of a valid document: a value, a key, an entry's identity."""
    document = json.loads(json.dumps(document))
    path = rng.choice(paths_of(document)[1:])
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    action = rng.randrange(6)
    if action == 0 and isinstance(parent, dict):
        parent[rng.choice(["usss", "extra", "repeat", "label", "peak", "", "ü"])] = rng.choice(ODD_VALUES)
    elif action == 1 and isinstance(parent, dict):
        del parent[last]
    elif action == 2 and isinstance(parent, list):
        parent.append(parent[last])  # a repeated measurement key, or a plain repeat
    else:
        parent[last] = rng.choice(ODD_VALUES)
    return json.dumps(document, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")


def byte_mutation(rng: random.Random, data: bytes) -> bytes:
    """Damage the text: flips, cuts, splices, odd literals, truncation."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 2)):
        position = rng.randrange(len(data) + 1)
        action = rng.choice([0, 1, 2, 3, 4, 4, 4, 4, 5, 5, 6])  # mostly odd values: most other damage is a syntax error
        if action == 0 and data:
            data[min(position, len(data) - 1)] = rng.randrange(256)
        elif action == 1:
            del data[position : position + rng.randint(1, 40)]
        elif action == 2:
            start = rng.randrange(len(data) + 1)
            data[position:position] = data[start : start + rng.randint(1, 60)]
        elif action == 3:
            data[position:position] = rng.choice(ODD_TEXTS)
        elif action == 4:
            digits = [i for i, byte in enumerate(data) if 48 <= byte <= 57]
            if digits:
                at = rng.choice(digits)
                data[at : at + 1] = rng.choice(ODD_TEXTS)
        elif action == 5:
            braces = [i for i, byte in enumerate(data) if byte == ord("{")]
            if braces:  # a key named twice in one object
                at = rng.choice(braces) + 1
                data[at:at] = rng.choice([b'"uss": 1, "uss": 1, ', b'"key": "a", ', b'"schema": "x", '])
        else:
            del data[position:]
    return bytes(data)


FAULT_CLASSES = {
    "not UTF-8": "encoding",
    "not valid JSON": "syntax",
    "nested too deeply": "depth",
    "digits is beyond": "number size",
    "64-bit range": "64-bit range",
    "range of a": "number range",
    "not standard JSON": "NaN/Infinity",
    "below the smallest": "sign or minimum",
    "names the key": "repeated JSON key",
    "also the key of": "repeated measurement key",
    "is not a metric": "unknown metric",
    "is not a key of this format": "unknown key",
    "misses the key": "missing key",
    "is not a version": "schema version",
    "is not a pytest-pagemap record": "not a record",
    "surrogate": "text",
    "control character": "text",
    "must be": "type",
}


def fault_class(fault: FormatFault) -> str:
    return next((name for text, name in FAULT_CLASSES.items() if text in fault.what), fault.what)


def standard_parse(data: bytes) -> Any:
    """What a plain JSON reader makes of `data`, or None where it refuses or yields non-standard JSON."""
    flags: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({key for key, _ in items}) != len(items):
            flags.append("repeated")
        return dict(items)

    try:
        parsed = json.loads(data.decode("utf-8"), parse_constant=flags.append, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        return None
    return None if flags else parsed


def check_accepted(document: dict[str, Any], validators: dict[str, jsonschema.Draft202012Validator]) -> None:
    """An accepted document writes back as standard JSON, validates, and goes through the gate and reports."""
    text = json.dumps(document, allow_nan=False)
    validators[document["schema"]].validate(json.loads(text))
    record = baseline.record_from_bytes(text.encode(), "fuzzed.json")
    comparison = gate.compare(record, record, [gate.parse_threshold("uss:5%")])
    json.dumps(ci_reports.json_report(record, comparison), allow_nan=False)
    ci_reports.markdown_summary(record, comparison)
    ci_reports.comparison_lines(comparison, verbose=True)


@pytest.fixture(scope="module")
def validators() -> dict[str, jsonschema.Draft202012Validator]:
    return {
        name: jsonschema.Draft202012Validator(record_format.shipped_schema(name))
        for name in (SESSION_SCHEMA, REPORT_SCHEMA)
    }


def test_mutated_baselines_end_in_a_refusal_or_a_valid_record(
    validators: dict[str, jsonschema.Draft202012Validator], tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    seeds = seed_documents()
    outcomes: collections.Counter[str] = collections.Counter()
    for case in range(COUNT):
        document = rng.choice(seeds)
        data = (
            structured_mutation(rng, document)
            if case % 2
            else byte_mutation(rng, json.dumps(document, indent=rng.choice([None, 2])).encode())
        )
        context = f"seed {SEED}, case {case}: {data[:300]!r}"
        try:
            accepted = read_document(data)
        except FormatFault as fault:
            outcomes[f"refused ({fault_class(fault)})"] += 1
            parsed = standard_parse(data)
            name = parsed.get("schema") if isinstance(parsed, dict) else None
            schema = validators.get(name) if isinstance(name, str) else None
            if schema is not None and schema.is_valid(parsed):
                assert any(text in fault.what for text in READER_ONLY), (
                    f"the schema accepts what the reader refused ({fault}); {context}"
                )
            accepted = None
        except Exception as error:  # pragma: no cover - the failure this test exists to find
            pytest.fail(f"{type(error).__name__}: {error}; {context}")
        if accepted is not None:
            outcomes["accepted"] += 1
            try:
                check_accepted(accepted, validators)
            except Exception as error:  # pragma: no cover
                pytest.fail(f"accepted, then {type(error).__name__}: {error}; {context}")
        if case % 50 == 0:  # and through a file, as the plugin reads it
            path = tmp_path / "0001_fuzzed.json"
            path.write_bytes(data)
            try:
                baseline.load_record(path)
            except BaselineError as error:
                assert accepted is None and str(path) in str(error), context
            else:
                assert accepted is not None, context
    print(
        f"\nfuzzed baselines (seed {SEED}): {COUNT} cases: " + ", ".join(f"{n} {k}" for k, n in outcomes.most_common())
    )
    assert outcomes["accepted"] and sum(outcomes.values()) == COUNT


THRESHOLDS = ["uss:5%", "rss:+2MiB", "swap:100 pages", "anon_growth:0.5%", "written:+1.5 GB", "accessed:+4096 B"]
PIECES = [
    "٥",
    "５",
    "৫",
    "e306",
    "e",
    "%",
    "%%",
    "+",
    "-",
    "++",
    ".",
    " ",
    "\t",
    "\n",
    "9" * 400,
    "0" * 30,
    "inf",
    "nan",
    "MiB",
    "TiB",
    "pages",
    "_",
    "1_000",
    "0x10",
    ":",
    "uss",
    "\u2003",
    "10000",
    "10001",
    "9223372036854775807",
]


def mutate_expression(rng: random.Random) -> str:
    text = rng.choice(THRESHOLDS)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(text) + 1)
        if rng.random() < 0.7:
            text = text[:at] + rng.choice(PIECES) + text[at:]
        else:
            text = text[:at] + text[at + rng.randint(1, 4) :]
    return text


def test_mutated_expressions_parse_bounded_or_are_refused() -> None:
    rng = random.Random(SEED + 1)
    outcomes: collections.Counter[str] = collections.Counter()
    for case in range(COUNT):
        text = mutate_expression(rng)
        context = f"seed {SEED + 1}, case {case}: {text[:120]!r}"
        try:
            threshold = gate.parse_threshold(text)
        except ValueError as error:
            assert type(error) is ValueError and repr(text) in str(error), context
            outcomes["threshold refused"] += 1
        except Exception as error:  # pragma: no cover
            pytest.fail(f"{type(error).__name__}: {error}; {context}")
        else:
            outcomes["threshold accepted"] += 1
            assert text.isascii(), context
            if threshold.percent is not None:
                assert 0 <= threshold.percent <= thresholds.MAX_PERCENT, context
            else:
                assert threshold.absolute is not None and 0 <= threshold.absolute <= MAX_SIZE, context
            assert threshold.allowed(INT64_MAX) >= INT64_MAX and threshold.text
        size_text = text.split(":", 1)[-1]
        try:
            size = parse_size(size_text, allow_negative=rng.random() < 0.5)
        except ValueError as error:
            assert type(error) is ValueError, context
            outcomes["size refused"] += 1
        except Exception as error:  # pragma: no cover
            pytest.fail(f"{type(error).__name__}: {error}; {size_text!r}")
        else:
            outcomes["size accepted"] += 1
            assert size_text.isascii() and abs(size) <= MAX_SIZE, size_text
    print(
        f"\nfuzzed expressions (seed {SEED + 1}): {COUNT} cases: "
        + ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items()))
    )
    assert outcomes["threshold accepted"] and outcomes["threshold refused"]


HAZARDS = (
    "lock-symlink",
    "lock-fifo",
    "lock-dir",
    "record-fifo",
    "record-symlink",
    "record-dir",
    "stale-temporary",
    "none",
)


def plant(rng: random.Random, storage: Path, hazard: str, outside: Path) -> None:
    storage.mkdir(parents=True, exist_ok=True)
    lock = storage / baseline.LOCK_NAME
    record = storage / f"{rng.randint(1, 5):04d}_planted.json"
    if hazard == "lock-symlink":
        lock.symlink_to(outside)
    elif hazard == "lock-fifo":
        os.mkfifo(lock)
    elif hazard == "lock-dir":
        lock.mkdir()
    elif hazard == "record-fifo":
        os.mkfifo(record)
    elif hazard == "record-symlink":
        record.symlink_to(outside)
    elif hazard == "record-dir":
        record.mkdir()
    elif hazard == "stale-temporary":
        (storage / f".{record.name}.{2**22 + 7}.0123abcd.tmp").write_text("{")  # beyond pid_max: gone


def test_planted_storage_and_concurrent_savers(tmp_path: Path) -> None:
    rng = random.Random(SEED + 2)
    outcomes: collections.Counter[str] = collections.Counter()
    trials = max(COUNT // 100, 8)
    for trial in range(trials):
        hazard = HAZARDS[trial % len(HAZARDS)]
        storage, outside = tmp_path / f"s{trial}" / ".pagemap", tmp_path / f"s{trial}" / "outside"
        plant(rng, storage, hazard, outside)
        errors: list[BaseException] = []
        names = [rng.choice([None, None, f"n{number}"]) for number in range(4)]

        def save(
            number: int, storage: Path = storage, errors: list[BaseException] = errors, names: list[str | None] = names
        ) -> None:
            record = SessionRecord(context={}, measurements=(MeasurementRecord("t", "t", "", {"uss": number}),))
            try:
                baseline.save_record(record, storage, names[number])
            except BaseException as failure:
                errors.append(failure)

        savers = [threading.Thread(target=save, args=(n,)) for n in range(4)]
        for saver in savers:
            saver.start()
        for saver in savers:
            saver.join()
        context = f"seed {SEED + 2}, trial {trial} ({hazard})"
        assert not outside.exists(), context  # nothing written through a planted link
        assert all(isinstance(error, BaselineError) for error in errors), (context, errors)
        if hazard.startswith("lock"):
            assert len(errors) == 4 and "remove it" in str(errors[0]), context
            outcomes[f"{hazard}: refused"] += 1
        else:
            assert errors == [], context
            saved = [path for path in storage.glob("*.json") if path.is_file() and not path.is_symlink()]
            assert sorted(baseline.load_record(path).measurements[0].metrics["uss"] for path in saved) == [0, 1, 2, 3]
            assert not [path for path in storage.iterdir() if path.name.endswith(".tmp")], context
            outcomes[f"{hazard}: 4 saved"] += 1
        latest = baseline.latest_record(storage)
        if latest is not None:
            try:
                baseline.load_record(latest)
                outcomes["latest loads"] += 1
            except BaselineError:
                outcomes["latest refused"] += 1
    print(
        f"\nstorage trials (seed {SEED + 2}): {trials}: " + ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items()))
    )
