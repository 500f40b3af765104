"""The two JSON formats the gate writes and reads back, read strictly: a session record
(`pytest-pagemap/session`, the stored baselines) and a session report (`pytest-pagemap/report`).

`read_document` turns bytes into a validated document or raises a `FormatFault` that says where (a JSON path
such as `measurements[3].metrics.uss`) and what is wrong: not UTF-8, not JSON, nested too deeply, a number
beyond 64 bits, NaN or Infinity, a repeated key, a wrong type, a negative size, an unknown metric, a schema
or version this code does not read. Nothing in a file can make it raise anything else, and it runs in time
linear in the file's size. `json_schema` gives the same rules as JSON Schema (draft 2020-12); the package
ships them as `schemas/session.schema.json` and `schemas/report.schema.json`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from .measure import METRICS

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "MAX_DEPTH",
    "REPORT_SCHEMA",
    "REPORT_VERSION",
    "SESSION_SCHEMA",
    "SESSION_VERSION",
    "FormatFault",
    "json_schema",
    "read_document",
    "shipped_schema",
    "validate_measurement",
]

SESSION_SCHEMA = "pytest-pagemap/session"
SESSION_VERSION = 1
REPORT_SCHEMA = "pytest-pagemap/report"
REPORT_VERSION = 1
# Every version of each format this code reads (older files keep loading when a version is added).
_READABLE_VERSIONS: Mapping[str, tuple[int, ...]] = {
    SESSION_SCHEMA: tuple(range(1, SESSION_VERSION + 1)),
    REPORT_SCHEMA: tuple(range(1, REPORT_VERSION + 1)),
}
_SCHEMA_FILES = {SESSION_SCHEMA: "session.schema.json", REPORT_SCHEMA: "report.schema.json"}
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
MAX_DEPTH = 20  # levels of nesting: the formats use 4 (5 in a report); the margin is for what a context may carry
MAX_PERCENT_CHANGE = 1e30  # what a change in percent may be: 64-bit values give at most about 1e21
_MAX_INT_CHARS = 40  # longer digit strings are refused before Python converts them: no valid value is as long

# A JSON string, or the rest of the text when one is never closed: always matches, so never backtracks.
_FREE_FORM_DEPTH = MAX_DEPTH - 5  # free-form values start at most 5 levels down (comparison.rows[i].x)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# The smallest value of each metric: levels are sizes; a growth may be negative.
_METRIC_MINIMUM = {name: INT64_MIN if spec.growth else 0 for name, spec in METRICS.items()}
_REQUIRED_MEASUREMENT_KEYS = frozenset({"key", "test", "metrics"})
_MEASUREMENT_KEYS = _REQUIRED_MEASUREMENT_KEYS | {"label", "repeat"}


class FormatFault(ValueError):
    """What is wrong in a document, and where: `where` is a JSON path ("" for the whole document)."""

    def __init__(self, where: str, what: str) -> None:
        super().__init__(f"{where}: {what}" if where else what)
        self.where = where
        self.what = what


# --- decoding with limits ---------------------------------------------------------------------------------
# The decoder's hooks turn what must be refused into markers, found with their path when the tree is checked.


class _OversizedInt:
    def __init__(self, digits: int) -> None:
        self.digits = digits


class _NonStandardConstant:
    def __init__(self, name: str) -> None:
        self.name = name


class _RepeatedKeys(dict[str, Any]):
    """An object that named a key twice: kept so the fault can be reported with its path."""

    def __init__(self, pairs: list[tuple[str, Any]], repeated: str) -> None:
        super().__init__(pairs)
        self.repeated = repeated


def _parse_int(text: str) -> int | _OversizedInt:
    return _OversizedInt(len(text.lstrip("-"))) if len(text) > _MAX_INT_CHARS else int(text)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                return _RepeatedKeys(pairs, key)
            seen.add(key)
    return result


def _decode(data: bytes) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatFault(
            "", f"is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}): is it a JSON file?"
        ) from None
    try:
        return json.loads(
            text,
            parse_int=_parse_int,
            parse_constant=_NonStandardConstant,
            object_pairs_hook=_object,
        )
    except json.JSONDecodeError as exc:
        raise FormatFault(
            "", f"is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); was it truncated?"
        ) from None
    except RecursionError:  # the decoder's own guard, raised long before the C stack could run out
        raise FormatFault("", f"is nested too deeply to be a record (at most {MAX_DEPTH} levels)") from None
    except ValueError as exc:  # not expected past the hooks: still a refusal
        raise FormatFault("", f"cannot be decoded as JSON ({exc})") from None


# --- checking the tree --------------------------------------------------------------------------------------


def _join(where: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    if key.isascii() and key.isidentifier():
        return f"{where}.{key}" if where else key
    return f"{where}[{json.dumps(key)}]"


def _kind(value: Any) -> str:
    if isinstance(value, _OversizedInt):
        return "a number"
    if isinstance(value, _NonStandardConstant):
        return value.name
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        type(None): "null",
    }.get(type(value), "an object")


def _refuse_markers(value: Any, where: str) -> None:
    if isinstance(value, _OversizedInt):
        raise FormatFault(where, f"a number of {value.digits} digits is beyond the 64-bit range")
    if isinstance(value, _NonStandardConstant):
        raise FormatFault(where, f"{value.name} is not standard JSON; numbers must be finite")
    if isinstance(value, _RepeatedKeys):
        raise FormatFault(where, f"names the key {value.repeated!r} twice")


def _wrong(value: Any, where: str, expected: str) -> FormatFault:
    """The fault of a value of the wrong kind (checked only once a value failed: the common path stays short)."""
    _refuse_markers(value, where)
    return FormatFault(where, f"must be {expected}, not {_kind(value)}")


def _string(value: Any, where: str, *, printable: bool = False) -> str:
    if type(value) is not str:
        raise _wrong(value, where, "a string")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise FormatFault(where, "holds an unpaired surrogate (\\ud800-\\udfff), which is not text") from None
    if printable and _CONTROL.search(value):
        raise FormatFault(where, "holds a control character")
    return value


def _integer(value: Any, where: str, *, minimum: int = INT64_MIN, maximum: int = INT64_MAX) -> int:
    if type(value) is not int:
        raise _wrong(value, where, "an integer")
    if value < minimum:
        raise FormatFault(where, f"{value} is below the smallest allowed value, {minimum}")
    if value > maximum:
        raise FormatFault(where, f"{value} is beyond the 64-bit range")
    return value


def _optional(value: Any, where: str, check: Any, **options: Any) -> Any:
    return None if value is None else check(value, where, **options)


def _boolean(value: Any, where: str) -> bool:
    if type(value) is not bool:
        raise _wrong(value, where, "true or false")
    return value


def _number(value: Any, where: str) -> float | int:
    if type(value) is int:
        return _integer(value, where)
    if type(value) is not float:
        raise _wrong(value, where, "a number")
    if not math.isfinite(value):
        raise FormatFault(where, "is beyond the range of a double")
    if not INT64_MIN <= value <= INT64_MAX:
        raise FormatFault(where, f"{value} is beyond the 64-bit range")
    return value


def _percent_change(value: Any, where: str) -> float | int:
    if type(value) not in (int, float):
        raise _wrong(value, where, "a number")
    number: float | int = value
    if not -MAX_PERCENT_CHANGE <= number <= MAX_PERCENT_CHANGE:  # false for NaN too
        raise FormatFault(where, f"{number} is beyond the range of a change in percent (±{MAX_PERCENT_CHANGE:g})")
    return number


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise _wrong(value, where, "an object")
    return value


def _array(value: Any, where: str) -> list[Any]:
    if type(value) is not list:
        raise _wrong(value, where, "an array")
    return value


def _plain(value: Any, where: str, depth: int = 0) -> Any:
    """Any standard JSON value (free-form parts such as extra context), checked all the way down."""
    if isinstance(value, (dict, list)) and depth >= _FREE_FORM_DEPTH:
        raise FormatFault(where, f"is nested too deeply: the document may nest at most {MAX_DEPTH} levels")
    if isinstance(value, dict):
        _refuse_markers(value, where)
        return {key: _plain(item, _join(where, key), depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item, _join(where, index), depth + 1) for index, item in enumerate(value)]
    if isinstance(value, str):
        return _string(value, where)
    if type(value) in (int, float):
        return _number(value, where)
    if value is None or type(value) is bool:
        return value
    _refuse_markers(value, where)
    raise FormatFault(where, f"holds {_kind(value)}")  # pragma: no cover - the decoder makes nothing else


def _fields(
    value: Any,
    where: str,
    required: Mapping[str, Any],
    optional: Mapping[str, Any],
    *,
    open_ended: bool,
) -> dict[str, Any]:
    """Check an object's fields: `required` and `optional` map each name to its check; other names are refused
    unless `open_ended`, where they may hold any standard JSON."""
    data = _mapping(value, where)
    for name in required:
        if name not in data:
            raise FormatFault(where, f"misses the key {name!r}")
    result = {}
    for name, item in data.items():
        check = required.get(name) or optional.get(name)
        if check is not None:
            result[name] = check(item, _join(where, name))
        elif open_ended:
            result[name] = _plain(item, _join(where, name))
        else:
            known = ", ".join(sorted([*required, *optional]))
            raise FormatFault(_join(where, name), f"is not a key of this format (known: {known})")
    return result


def _metrics(value: Any, where: str) -> dict[str, int | None]:
    data = _mapping(value, where)
    for name, item in data.items():
        minimum = _METRIC_MINIMUM.get(name)
        if minimum is None:
            raise FormatFault(_join(where, name), f"is not a metric this version records (known: {', '.join(METRICS)})")
        if item is not None and not (type(item) is int and minimum <= item <= INT64_MAX):
            _integer(item, _join(where, name), minimum=minimum)  # raises, saying why
    return dict(data)


def _is_identifier_text(value: Any) -> bool:
    return type(value) is str and value.isascii() and _CONTROL.search(value) is None


def _is_plain_measurement(value: Any) -> bool:
    """Whether `value` is a valid measurement, answered quickly for the common case: when not (or not
    obviously), `validate_measurement` takes the long way, which says what is wrong."""
    if (
        type(value) is not dict
        or not value.keys() <= _MEASUREMENT_KEYS
        or not value.keys() >= _REQUIRED_MEASUREMENT_KEYS
    ):
        return False
    repeat = value.get("repeat", 1)
    metrics = value["metrics"]
    return (
        _is_identifier_text(value["key"])
        and _is_identifier_text(value["test"])
        and _is_identifier_text(value.get("label", ""))
        and type(repeat) is int
        and 1 <= repeat <= INT64_MAX
        and type(metrics) is dict
        and all(
            name in _METRIC_MINIMUM
            and (item is None or (type(item) is int and _METRIC_MINIMUM[name] <= item <= INT64_MAX))
            for name, item in metrics.items()
        )
    )


def _free_object(value: Any, where: str) -> dict[str, Any]:
    result: dict[str, Any] = _plain(_mapping(value, where), where)
    return result


def validate_measurement(value: Any, where: str, *, report: bool = False) -> dict[str, Any]:
    """One entry of `measurements`: key, test, label, metrics (bytes or null per metric) and repeat; in a
    report also its memory `map` (an object of standard JSON, or null)."""
    if report and type(value) is dict and "map" in value:
        entry = validate_measurement({key: item for key, item in value.items() if key != "map"}, where)
        entry["map"] = _optional(value["map"], _join(where, "map"), _free_object)
        return entry
    if _is_plain_measurement(value):
        return {"label": "", "repeat": 1, **value, "metrics": dict(value["metrics"])}
    entry = _fields(
        value,
        where,
        required={
            "key": lambda v, w: _string(v, w, printable=True),
            "test": lambda v, w: _string(v, w, printable=True),
            "metrics": _metrics,
        },
        optional={
            "label": lambda v, w: _string(v, w, printable=True),
            "repeat": lambda v, w: _integer(v, w, minimum=1),
        },
        open_ended=False,
    )
    entry.setdefault("label", "")
    entry.setdefault("repeat", 1)
    return entry


def _measurements(value: Any, where: str, *, report: bool = False) -> list[dict[str, Any]]:
    entries = [
        validate_measurement(item, _join(where, index), report=report)
        for index, item in enumerate(_array(value, where))
    ]
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        first = seen.setdefault(entry["key"], index)
        if first != index:
            raise FormatFault(
                _join(_join(where, index), "key"), f"{entry['key']!r} is also the key of {_join(where, first)}"
            )
    return entries


def _text(value: Any, where: str) -> str | None:
    return None if value is None else _string(value, where)


def _flag(value: Any, where: str) -> bool | None:
    return None if value is None else _boolean(value, where)


def _context(value: Any, where: str) -> dict[str, Any]:
    """The machine a session ran on. The keys the gate reads are typed; others are kept as they are."""

    return _fields(
        value,
        where,
        required={},
        optional={
            "kernel": _text,
            "machine": _text,
            "page_size": lambda v, w: _optional(v, w, _integer, minimum=1),
            "python": _text,
            "implementation": _text,
            "capabilities": lambda v, w: _optional(
                v,
                w,
                _fields,
                required={},
                optional={
                    "pfn_visible": _flag,
                    "kpageflags": _flag,
                    "pagemap_scan": _flag,
                    "soft_dirty": _flag,
                    "thp_mode": _text,
                },
                open_ended=True,
            ),
            "git": lambda v, w: _optional(
                v,
                w,
                _fields,
                required={},
                optional={"commit": _text, "branch": _text, "dirty": _flag},
                open_ended=True,
            ),
        },
        open_ended=True,
    )


def _strings(value: Any, where: str) -> list[str]:
    return [_string(item, _join(where, index)) for index, item in enumerate(_array(value, where))]


def _comparison(value: Any, where: str) -> dict[str, Any]:
    row = {
        "key": _string,
        "test": _string,
        "label": _string,
        "metric": _string,
        "baseline": _integer,
        "current": _integer,
        "change": lambda v, w: _integer(v, w, minimum=-(2**64), maximum=2**64),
        "change_percent": lambda v, w: _optional(v, w, _percent_change),
        "threshold": _text,
        "status": _string,
    }
    return _fields(
        value,
        where,
        required={},
        optional={
            "baseline": _text,
            "baseline_created": _text,
            "baseline_context": _context,
            "thresholds": _strings,
            "overrides": lambda v, w: {k: _strings(item, _join(w, k)) for k, item in _mapping(v, w).items()},
            "passed": _boolean,
            "regressions": lambda v, w: _integer(v, w, minimum=0),
            "improvements": lambda v, w: _integer(v, w, minimum=0),
            "new": _strings,
            "removed": _strings,
            "warnings": _strings,
            "hints": _strings,
            "rows": lambda v, w: [
                _fields(item, _join(w, i), required={}, optional=row, open_ended=True)
                for i, item in enumerate(_array(v, w))
            ],
        },
        open_ended=True,
    )


def _document(data: Any, formats: Iterable[str]) -> dict[str, Any]:
    accepted = tuple(formats)
    names = " or ".join(f'"{name}"' for name in accepted)
    if not isinstance(data, dict) or data.get("schema") not in accepted or not isinstance(data.get("schema"), str):
        raise FormatFault("", f'is not a pytest-pagemap record (expected "schema": {names})')
    _refuse_markers(data, "")
    schema: str = data["schema"]
    version = data.get("version")
    readable = _READABLE_VERSIONS[schema]
    if type(version) is not int or version not in readable:
        newer = type(version) is int and version > readable[-1]
        shown = repr(version) if type(version) is int else _kind(version)
        raise FormatFault(
            "version",
            f"{shown} is not a version of {schema} this code reads ({', '.join(map(str, readable))})"
            + ("; it was written by a newer pytest-pagemap: upgrade to read it" if newer else ""),
        )
    fields: dict[str, Any] = {
        "created": lambda v, w: _string(v, w, printable=True),
    }
    if schema == REPORT_SCHEMA:
        fields["saved"] = lambda v, w: _optional(v, w, _string)
        fields["comparison"] = lambda v, w: _optional(v, w, _comparison)
    document = _fields(
        data,
        "",
        required={
            "schema": lambda v, w: v,
            "version": lambda v, w: v,
            "context": _context,
            "measurements": lambda v, w: _measurements(v, w, report=schema == REPORT_SCHEMA),
        },
        optional=fields,
        open_ended=False,
    )
    document.setdefault("created", "")
    return document


def read_document(data: bytes, formats: Iterable[str] = (SESSION_SCHEMA, REPORT_SCHEMA)) -> dict[str, Any]:
    """The validated document `data` holds, in one of `formats`; a `FormatFault` saying where and what not."""
    return _document(_decode(data), formats)


# --- JSON Schema --------------------------------------------------------------------------------------------


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


_INT64 = {"type": "integer", "minimum": INT64_MIN, "maximum": INT64_MAX}
_TEXT = {"type": "string"}
_PRINTABLE = {"type": "string", "not": {"pattern": "[\\u0000-\\u001f\\u007f]"}}  # no control character
_PLAIN_REF = {"$ref": "#/$defs/plain"}
# Any standard JSON whose numbers lie in the 64-bit range: what free-form parts (extra context) may hold.
_PLAIN = {
    "anyOf": [
        {"type": ["string", "boolean", "null"]},
        {"type": "number", "minimum": INT64_MIN, "maximum": INT64_MAX},
        {"type": "array", "items": _PLAIN_REF},
        {"type": "object", "additionalProperties": _PLAIN_REF},
    ]
}


def _context_schema() -> dict[str, Any]:
    flag = _nullable({"type": "boolean"})
    return {
        "type": "object",
        "properties": {
            "kernel": _nullable(_TEXT),
            "machine": _nullable(_TEXT),
            "page_size": _nullable({**_INT64, "minimum": 1}),
            "python": _nullable(_TEXT),
            "implementation": _nullable(_TEXT),
            "capabilities": _nullable(
                {
                    "type": "object",
                    "properties": {
                        "pfn_visible": flag,
                        "kpageflags": flag,
                        "pagemap_scan": flag,
                        "soft_dirty": flag,
                        "thp_mode": _nullable(_TEXT),
                    },
                    "additionalProperties": _PLAIN_REF,
                }
            ),
            "git": _nullable(
                {
                    "type": "object",
                    "properties": {"commit": _nullable(_TEXT), "branch": _nullable(_TEXT), "dirty": flag},
                    "additionalProperties": _PLAIN_REF,
                }
            ),
        },
        "additionalProperties": _PLAIN_REF,
    }


def _measurement_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["key", "test", "metrics"],
        "additionalProperties": False,
        "properties": {
            "key": _PRINTABLE,
            "test": _PRINTABLE,
            "label": _PRINTABLE,
            "repeat": {**_INT64, "minimum": 1},
            "metrics": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    name: _nullable({**_INT64, "minimum": minimum}) for name, minimum in _METRIC_MINIMUM.items()
                },
            },
        },
    }


def _comparison_schema() -> dict[str, Any]:
    strings = {"type": "array", "items": _TEXT}
    return {
        "type": "object",
        "properties": {
            "baseline": _nullable(_TEXT),
            "baseline_created": _nullable(_TEXT),
            "baseline_context": {"$ref": "#/$defs/context"},
            "thresholds": strings,
            "overrides": {"type": "object", "additionalProperties": strings},
            "passed": {"type": "boolean"},
            "regressions": {**_INT64, "minimum": 0},
            "improvements": {**_INT64, "minimum": 0},
            "new": strings,
            "removed": strings,
            "warnings": strings,
            "hints": strings,
            "rows": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "key": _TEXT,
                        "test": _TEXT,
                        "label": _TEXT,
                        "metric": _TEXT,
                        "baseline": _INT64,
                        "current": _INT64,
                        "change": {"type": "integer", "minimum": -(2**64), "maximum": 2**64},
                        "change_percent": _nullable(
                            {"type": "number", "minimum": -MAX_PERCENT_CHANGE, "maximum": MAX_PERCENT_CHANGE}
                        ),
                        "threshold": _nullable(_TEXT),
                        "status": _TEXT,
                    },
                    "additionalProperties": _PLAIN_REF,
                },
            },
        },
        "additionalProperties": _PLAIN_REF,
    }


def json_schema(schema: str) -> dict[str, Any]:
    """The JSON Schema of a format (`SESSION_SCHEMA` or `REPORT_SCHEMA`), built from the metrics this code
    records. Measurement keys must also be unique, which JSON Schema cannot say."""
    version = {"type": "integer", "enum": list(_READABLE_VERSIONS[schema])}
    properties: dict[str, Any] = {
        "schema": {"const": schema},
        "version": version,
        "created": _PRINTABLE,
        "context": {"$ref": "#/$defs/context"},
        "measurements": {"type": "array", "items": {"$ref": "#/$defs/measurement"}},
    }
    defs: dict[str, Any] = {"context": _context_schema(), "measurement": _measurement_schema(), "plain": _PLAIN}
    if schema == REPORT_SCHEMA:
        # A report's measurement may carry its memory map (see pagewalk.memory_map): free-form JSON.
        measurement = defs["measurement"]
        measurement["properties"]["map"] = _nullable({"type": "object", "additionalProperties": _PLAIN_REF})
        properties["saved"] = _nullable(_TEXT)
        properties["comparison"] = _nullable({"$ref": "#/$defs/comparison"})
        defs["comparison"] = _comparison_schema()
    title = "session record (a stored baseline)" if schema == SESSION_SCHEMA else "session report (--pagemap-json)"
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"pytest-pagemap {title}",
        "type": "object",
        "required": ["schema", "version", "context", "measurements"],
        "additionalProperties": False,
        "properties": properties,
        "$defs": defs,
    }


def shipped_schema(schema: str) -> dict[str, Any]:
    """The JSON Schema file of a format as the package ships it."""
    text = (resources.files(__package__) / "schemas" / _SCHEMA_FILES[schema]).read_text(encoding="utf-8")
    result: dict[str, Any] = json.loads(text)
    return result


def write_schemas(directory: Path | None = None) -> list[Path]:
    """(Re)write the shipped schema files from `json_schema` (after a metric is added, for instance)."""
    directory = directory or Path(__file__).parent / "schemas"
    written = []
    for schema, name in _SCHEMA_FILES.items():
        path = directory / name
        path.write_text(json.dumps(json_schema(schema), indent=2, allow_nan=False) + "\n", encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_schemas():
        print(written_path)
