"""The gate's options and ini keys (`--pagemap-save`, `--pagemap-compare`, `--pagemap-fail`, `--pagemap-repeat`,
the report files) and the settings they make.

Light on purpose: every pytest start registers these options, so the baselines, comparisons and reports
(`gates`, and the core's `baseline`, `gate` and `ci_reports`) load only when a session records.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from pagewalk.thresholds import DEFAULT_NOISE, FORMS, Threshold, parse_threshold
from pagewalk.units import format_size, parse_size

__all__ = [
    "DEFAULT_STORAGE",
    "STEP_SUMMARY_VARIABLE",
    "GateSettings",
    "add_gate_options",
    "path_option",
    "read_gate_settings",
]

DEFAULT_STORAGE = ".pagemap"  # the folder of saved baselines, in the rootdir
STEP_SUMMARY_VARIABLE = "GITHUB_STEP_SUMMARY"


def _save_name_type(text: str) -> str:
    if not text:
        return text  # the bare option: argparse passes its const, "", through the type too
    from pagewalk.baseline import check_name  # loaded when a session saves, not with the plugin

    try:
        name = check_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}; write --pagemap-save=NAME (with '=')") from None
    if os.path.exists(name) or name.endswith(".py"):
        # `--pagemap-save tests` or `--pagemap-save test_x.py` takes a test path as the name: refuse rather than
        # run the wrong tests.
        what = "a directory here" if os.path.isdir(name) else "a file here" if os.path.exists(name) else "a file name"
        raise argparse.ArgumentTypeError(
            f"{name!r} is {what}, so probably a test path: write --pagemap-save=NAME (with '='), "
            "or put --pagemap-save after the test paths"
        )
    return name


_save_name_type.__name__ = "baseline name"  # argparse names the type in its error messages


def _threshold_type(text: str) -> Threshold:
    try:
        return parse_threshold(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_threshold_type.__name__ = "threshold"


def _noise_type(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


_noise_type.__name__ = "size"


def _repeat_type(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of runs") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a test runs at least once")
    return count


_repeat_type.__name__ = "count"


def add_gate_options(group: pytest.OptionGroup, parser: pytest.Parser) -> None:
    """The baseline, threshold, repeat and report options, with their ini keys."""
    group.addoption(
        "--pagemap-save",
        nargs="?",
        const="",
        default=None,
        type=_save_name_type,
        metavar="NAME",
        help="record every measurement of the session and save it in the storage folder as NNNN_NAME.json "
        "(default NAME: commit and time); an existing NAME is an error without --pagemap-overwrite. "
        "Write --pagemap-save=NAME, with '='",
    )
    group.addoption(
        "--pagemap-compare",
        nargs="?",
        const="",
        default=None,
        metavar="NAME|PATH",
        help="compare this session's measurements with a saved baseline: the latest in the storage folder, "
        "one saved under NAME, or a .json file; regressions beyond --pagemap-fail thresholds fail the session "
        "(exit code 1). Write --pagemap-compare=NAME, with '='",
    )
    group.addoption(
        "--pagemap-overwrite",
        action="store_true",
        default=False,
        help="let --pagemap-save=NAME replace an existing baseline of that name",
    )
    group.addoption(
        "--pagemap-storage",
        default=None,
        metavar="DIR",
        help=f"folder of saved baselines (default {DEFAULT_STORAGE}/ in the rootdir; ini: pagemap_storage, "
        "relative to the rootdir)",
    )
    parser.addini("pagemap_storage", "as --pagemap-storage, relative to the rootdir", default=DEFAULT_STORAGE)
    group.addoption(
        "--pagemap-fail",
        action="append",
        type=_threshold_type,
        default=None,
        metavar="EXPR",
        help=f"with --pagemap-compare, fail the session when a metric grows beyond EXPR: {FORMS.replace('%', '%%')}; "
        "repeatable, "
        "each counts (ini: pagemap_fail, one per line; a test's @pytest.mark.pagemap(tolerance=...) replaces "
        "them for the metrics it names)",
    )
    parser.addini("pagemap_fail", "thresholds as --pagemap-fail, one per line", type="linelist", default=[])
    group.addoption(
        "--pagemap-noise",
        type=_noise_type,
        default=None,
        metavar="SIZE",
        help=f"the noise floor: a change of at most SIZE is unchanged and fails no relative threshold "
        f"(default {format_size(DEFAULT_NOISE).replace(' ', '')}; ini: pagemap_noise; per threshold: "
        "anon:5%%,noise=256KiB)",
    )
    parser.addini("pagemap_noise", "as --pagemap-noise", default="")
    group.addoption(
        "--pagemap-repeat",
        type=_repeat_type,
        default=None,
        metavar="N",
        help="run each test that measures N times, fixtures included, and record the median of each metric; "
        "the last run (or the first that fails) is the one reported (ini: pagemap_repeat)",
    )
    parser.addini("pagemap_repeat", "as --pagemap-repeat", default="1")
    group.addoption(
        "--pagemap-json",
        default=None,
        metavar="PATH",
        help="write the session's measurements, context and comparison as JSON (ini: pagemap_json)",
    )
    parser.addini("pagemap_json", "as --pagemap-json, relative to the rootdir", default="")
    group.addoption(
        "--pagemap-benchmark-json",
        default=None,
        metavar="PATH",
        help="write the measurements in github-action-benchmark's customSmallerIsBetter format "
        "(ini: pagemap_benchmark_json)",
    )
    parser.addini("pagemap_benchmark_json", "as --pagemap-benchmark-json, relative to the rootdir", default="")
    parser.addini(
        "pagemap_step_summary",
        f"append a Markdown summary to ${STEP_SUMMARY_VARIABLE} when it is set and measurements are recorded "
        "(default true)",
        type="bool",
        default=True,
    )


@dataclass(frozen=True)
class GateSettings:
    """What the gate options and ini keys chose for this session."""

    storage: Path
    save: str | None  # None: do not save; "": save under a name made of the commit and the time
    compare: str | None  # None: do not compare; "": with the latest baseline; else a name or a path
    overwrite: bool
    thresholds: tuple[Threshold, ...]
    noise: int
    repeat: int
    json_path: Path | None
    benchmark_json_path: Path | None
    step_summary: bool
    record: bool  # record every measurement: on with --pagemap and with any option that needs the records


def _shorter(path: Path, start: Path) -> Path:
    """`path` relative to `start` when it lies inside it, for messages and reports; else as it is.
    Relative paths stay valid: pytest is back in the invocation directory when the files are written."""
    return path.relative_to(start) if path.is_relative_to(start) else path


def path_option(config: pytest.Config, name: str) -> Path | None:
    """A path option: relative to the invocation directory on the command line, to the rootdir in the ini."""
    start = config.invocation_params.dir
    value: str | None = config.getoption(name)
    if value:
        return _shorter(start / os.path.expanduser(value), start)
    text = str(config.getini(name))
    return _shorter(config.rootpath / os.path.expanduser(text), start) if text else None


def read_gate_settings(config: pytest.Config, *, active: bool) -> GateSettings:
    """The gate settings from options and ini keys; a bad value or combination raises `pytest.UsageError`."""
    save, compare_with = config.getoption("pagemap_save"), config.getoption("pagemap_compare")
    thresholds: tuple[Threshold, ...] = tuple(config.getoption("pagemap_fail") or ())
    if thresholds and compare_with is None and save is None:
        raise pytest.UsageError(
            "--pagemap-fail needs --pagemap-compare (thresholds are checked against a baseline) or "
            "--pagemap-save (which then records what the thresholds need)"
        )
    if config.getoption("pagemap_overwrite") and save is None:
        raise pytest.UsageError("--pagemap-overwrite needs --pagemap-save=NAME")
    if not thresholds:
        try:
            thresholds = tuple(parse_threshold(text) for text in config.getini("pagemap_fail"))
        except ValueError as exc:
            raise pytest.UsageError(f"invalid pytest-pagemap ini value: pagemap_fail: {exc}") from None
    noise = config.getoption("pagemap_noise")
    if noise is None:
        text = str(config.getini("pagemap_noise")).strip()
        try:
            noise = _noise_type(text) if text else DEFAULT_NOISE
        except argparse.ArgumentTypeError as exc:
            raise pytest.UsageError(f"invalid pytest-pagemap ini value: pagemap_noise: {exc}") from None
    repeat = config.getoption("pagemap_repeat")
    if repeat is None:
        try:
            repeat = _repeat_type(str(config.getini("pagemap_repeat")))
        except argparse.ArgumentTypeError as exc:
            raise pytest.UsageError(f"invalid pytest-pagemap ini value: pagemap_repeat: {exc}") from None
    storage = path_option(config, "pagemap_storage")
    json_path, benchmark_json_path = path_option(config, "pagemap_json"), path_option(config, "pagemap_benchmark_json")
    return GateSettings(
        storage=storage
        if storage is not None
        else _shorter(config.rootpath / DEFAULT_STORAGE, config.invocation_params.dir),
        save=save,
        compare=compare_with,
        overwrite=bool(config.getoption("pagemap_overwrite")),
        thresholds=thresholds,
        noise=noise,
        repeat=repeat,
        json_path=json_path,
        benchmark_json_path=benchmark_json_path,
        step_summary=bool(config.getini("pagemap_step_summary")),
        record=active
        or save is not None
        or compare_with is not None
        or json_path is not None
        or benchmark_json_path is not None
        or repeat > 1,
    )
