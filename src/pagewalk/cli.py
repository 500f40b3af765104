"""The command line: `python -m pagewalk snapshot PID`, `... delta`, `... compare`, `... capabilities`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._present import size_cell, table
from .baseline import BaselineError, load_record
from .capabilities import capabilities
from .ci_reports import comparison_lines, json_report, markdown_summary
from .delta import Delta, RegionDelta
from .errors import PagewalkError
from .gate import (
    DEFAULT_NOISE,
    EXIT_CANNOT_GATE,
    EXIT_PASSED,
    EXIT_REGRESSED,
    FORMS,
    Threshold,
    compare,
    parse_threshold,
)
from .snapshot import Region, Snapshot, snapshot
from .tree import TreeSnapshot
from .units import format_size, parse_size
from .waiting import sleep_watching

__all__ = ["main"]

# Exit codes: 0 success, 1 a pagewalk error (process gone, access denied, unsupported), 2 usage error;
# `compare` exits as a gate does (gate.EXIT_*).
EXIT_ERROR = 1

_METRICS = ("rss", "uss", "pss", "swap", "anon", "file", "shmem", "thp", "zero", "hugetlb")


def _region_table(regions: Sequence[Region], limit: int) -> list[str]:
    ranked = sorted(regions, key=lambda r: r.rss + r.swap + r.hugetlb, reverse=True)[:limit]
    rows = [
        (f"{r.start:012x}-{r.end:012x}", r.perms, size_cell(r.rss), size_cell(r.uss), size_cell(r.swap), r.name)
        for r in ranked
        if r.rss or r.swap or r.hugetlb
    ]
    return table(("address", "perms", "rss", "uss", "swap", "name"), rows, right={2, 3, 4})


def _process_table(tree: TreeSnapshot) -> list[str]:
    shared_known = tree.shared_with_parent is not None
    rows: list[tuple[str, ...]] = []
    for pid, snap in tree.processes.items():
        shared = tree.shared_with_parent.get(pid) if tree.shared_with_parent is not None else None
        sizes = (size_cell(snap.rss), size_cell(snap.uss), size_cell(snap.peak_rss))
        shared_text = size_cell(shared) if shared_known else "unknown"
        rows.append((str(pid), str(tree.parents.get(pid, 0)), *sizes, shared_text, snap.command[:60]))
    header = ("pid", "ppid", "rss", "uss", "peak rss", "shared w/ parent", "command")
    return [tree.uss_note(), *table(header, rows, right={0, 1, 2, 3, 4, 5})]


def render_snapshot(snap: Snapshot, *, top: int = 15) -> str:
    """A readable table of a snapshot: totals, then the regions holding the most memory."""
    lines = [f"pid {snap.pid}: {snap.command}"]
    lines.append("  ".join(f"{name} {size_cell(getattr(snap, name))}" for name in _METRICS))
    if snap.flag_counts is not None:
        set_flags = {name: pages for name, pages in snap.flag_counts.items() if pages}
        lines.append("flags (pages): " + ", ".join(f"{name}={pages}" for name, pages in set_flags.items()))
    if isinstance(snap, TreeSnapshot):
        lines.append("")
        lines.extend(_process_table(snap))
    lines.append("")
    lines.extend(_region_table(snap.regions, top))
    lines.extend(f"note: {note}" for note in snap.notes)
    return "\n".join(lines)


def _change_row(region: RegionDelta) -> tuple[str, ...]:
    growth = (size_cell(region.uss_growth, signed=True), size_cell(region.rss_growth, signed=True))
    return (region.status, *growth, size_cell(region.written), region.name)


def render_delta(delta: Delta, *, top: int = 15) -> str:
    """A readable summary of a delta: growth, pages written and accessed, flag changes, regions changed."""
    after = delta.after
    lines = [f"pid {after.pid}: {after.command}", f"over {delta.seconds:.1f} s:"]
    for name in ("uss", "rss", "pss", "swap", "anon", "file", "shmem", "thp", "hugetlb"):
        growth = getattr(delta, f"{name}_growth")
        if growth is None:
            continue
        lines.append(
            f"  {name:<8} {size_cell(getattr(delta.before, name)):>10} -> {size_cell(getattr(after, name)):>10}"
            f"  ({format_size(growth, signed=True)})"
        )
    if delta.written is not None:
        lines.append(
            f"  written  {format_size(delta.written)} in existing regions, "
            f"{format_size(delta.written_new_regions or 0)} in new or grown ones"
        )
    if delta.accessed is not None:
        lines.append(f"  accessed {format_size(delta.accessed)}")
    if delta.peak_rss is not None and delta.peak_rss_growth is not None:
        growth = format_size(delta.peak_rss_growth, signed=True)
        lines.append(f"  peak rss {format_size(delta.peak_rss)} ({growth} over the start)")
    else:
        lines.extend(f"  {note}" for note in delta.before.notes if "peak" in note)
    for title, processes in (("started", delta.processes_started), ("exited", delta.processes_exited)):
        lines.extend(f"  process {pid} {title}: {command}" for pid, command in processes.items())
    lines.append(
        f"  pages appeared {delta.pages_appeared}, disappeared {delta.pages_disappeared}, frames changed "
        f"{'unknown (PFNs hidden)' if delta.frames_changed is None else delta.frames_changed}"
    )
    for title, counts in (("flags gained", delta.flags_gained), ("flags lost", delta.flags_lost)):
        if counts is not None:
            changed = ", ".join(f"{flag}={pages}" for flag, pages in counts.items() if pages) or "none"
            lines.append(f"  {title} (pages): {changed}")
    if isinstance(after, TreeSnapshot):
        lines.append("")
        lines.extend(_process_table(after))
    changed_regions = [r for r in delta.regions if r.status != "kept" or r.uss_growth or r.written or r.swap_growth]
    if changed_regions:
        lines.append("")
        ranked = sorted(changed_regions, key=lambda r: abs(r.uss_growth) + (r.written or 0), reverse=True)
        rows = [_change_row(region) for region in ranked[:top]]
        lines.extend(table(("status", "uss", "rss", "written", "name"), rows, right={1, 2, 3}))
    return "\n".join(lines)


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _emit(
    args: argparse.Namespace, data: Callable[[], Any], text: Callable[[], str], memory_map: Callable[[], Any]
) -> int:
    """Write the HTML page with --html; print JSON with --json, else the readable text."""
    if args.html:
        # Imported here: they cost the command's start-up a quarter of a second, and most runs need none of it.
        from .baseline import collect_context
        from .html_report import report_document, write_html

        path = Path(args.html)
        try:
            write_html(path, report_document([memory_map()], context=collect_context()))
        except (BaselineError, OSError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            print(f"pagewalk: error: cannot write the HTML page to {path}: {reason}", file=sys.stderr)
            return EXIT_ERROR
        print(f"wrote the memory map to {path}", file=sys.stderr)
    if args.json:
        _print_json(data())
    else:
        print(text())
    return 0


def _map(snap: Snapshot, after: Snapshot | None = None) -> dict[str, Any]:
    """The memory map of a snapshot, or of the measurement from `snap` to `after`."""
    from .measure import Measurement
    from .memory_map import measurement_map, snapshot_map

    return snapshot_map(snap) if after is None else measurement_map(Measurement.from_snapshots(snap, after))


def _cmd_snapshot(args: argparse.Namespace) -> int:
    counts = args.counts
    if counts is None:  # PSS when it can be had, without failing when it cannot
        caps = capabilities()
        counts = caps.missing_for_pss() is None
    snap = snapshot(
        args.pid, flags=args.flags, counts=counts, freeze=not args.no_freeze, method=args.method, tree=args.tree
    )
    return _emit(args, snap.to_dict, lambda: render_snapshot(snap, top=args.top), lambda: _map(snap))


def _cmd_delta(args: argparse.Namespace) -> int:
    track = tuple(name for name, wanted in (("writes", args.writes), ("accessed", args.accessed)) if wanted)
    options = {"flags": args.flags, "freeze": not args.no_freeze, "method": args.method, "tree": args.tree}
    before = snapshot(args.pid, track=(*track, "peak"), **options)
    sleep_watching(args.pid, args.seconds)
    after = snapshot(args.pid, writes=args.writes, accessed=args.accessed, **options)
    delta = after - before
    return _emit(
        args,
        delta.to_dict,
        lambda: render_delta(delta, top=args.top),
        lambda: _map(before, after),
    )


def _cmd_capabilities(args: argparse.Namespace) -> int:
    caps = capabilities().as_dict()
    if args.json:
        _print_json(caps)
    else:
        for key, value in caps.items():
            print(f"{key:<20} {value}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    """Compare two saved records or JSON reports: the verdict, table and exit codes of the pytest gate."""
    try:
        baseline, current = load_record(args.baseline), load_record(args.current)
    except BaselineError as exc:
        print(f"pagewalk compare: {exc}", file=sys.stderr)
        return EXIT_CANNOT_GATE
    comparison = compare(baseline, current, args.fail or (), noise=args.noise)
    if args.json:
        _print_json(json_report(current, comparison))
    elif args.markdown:
        sys.stdout.write(markdown_summary(current, comparison, title="pagewalk compare"))
    else:
        for line, _ in comparison_lines(comparison, verbose=args.verbose):
            print(line)
    return comparison.exit_code


def _threshold(text: str) -> Threshold:
    try:
        return parse_threshold(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration in seconds (a number, zero or more)")
    return value


def _pid(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a pid (a positive integer)") from None


def _add_output_options(command: argparse.ArgumentParser) -> None:
    """The reading and printing options `snapshot` and `delta` share."""
    command.add_argument("--json", action="store_true", help="print JSON (keys documented in the README)")
    command.add_argument("--no-freeze", action="store_true", help="do not stop the process while reading")
    command.add_argument("--method", choices=("auto", "read", "scan"), default="auto", help="pagemap front end")
    command.add_argument("--top", type=int, default=15, help="regions to list in the table (default 15)")
    command.add_argument("--html", metavar="PATH", help="also write a self-contained HTML page with the memory map")
    command.add_argument(
        "--tree", action="store_true", help="the process and all its descendants, stopped together (JSON: processes)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pagewalk",
        description="Exact memory snapshots of a Linux process, read from /proc/PID/pagemap.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    snap = commands.add_parser("snapshot", help="snapshot one process and print its memory")
    snap.add_argument("pid", type=_pid, help="the process to read")
    snap.add_argument("--flags", action="store_true", help="count pages per kernel page flag (needs root)")
    pss = snap.add_mutually_exclusive_group()
    pss.add_argument("--pss", dest="counts", action="store_true", default=None, help="require PSS (needs root)")
    pss.add_argument("--no-pss", dest="counts", action="store_false", help="skip PSS (faster)")
    _add_output_options(snap)
    snap.set_defaults(handler=_cmd_snapshot)

    delta = commands.add_parser("delta", help="snapshot, wait, snapshot again and print what changed")
    delta.add_argument("pid", type=_pid, help="the process to watch")
    delta.add_argument("--for", dest="seconds", type=_seconds, required=True, metavar="SECONDS", help="how long")
    delta.add_argument("--writes", action="store_true", help="count pages written (needs soft-dirty)")
    delta.add_argument("--accessed", action="store_true", help="count bytes accessed")
    delta.add_argument("--flags", action="store_true", help="page flags gained and lost (needs root)")
    _add_output_options(delta)
    delta.set_defaults(handler=_cmd_delta)

    comparing = commands.add_parser(
        "compare",
        help="compare two saved records or JSON reports, as the pytest gate does",
        description="Compare CURRENT with BASELINE (each a saved baseline or a JSON report) metric by metric. "
        f"Exit codes: {EXIT_PASSED} passed, {EXIT_REGRESSED} a regression or an unmatched measurement, "
        f"{EXIT_CANNOT_GATE} cannot gate (an unreadable file, or a threshold's metric not recorded), 2 bad arguments.",
    )
    comparing.add_argument("baseline", metavar="BASELINE.json")
    comparing.add_argument("current", metavar="CURRENT.json")
    comparing.add_argument(
        "--fail", action="append", type=_threshold, metavar="EXPR", help=f"a threshold, repeatable: {FORMS}"
    )
    comparing.add_argument(
        "--noise",
        type=_size,
        default=DEFAULT_NOISE,
        metavar="SIZE",
        help=f"changes of at most SIZE are unchanged (default {format_size(DEFAULT_NOISE)})",
    )
    output = comparing.add_mutually_exclusive_group()
    output.add_argument("--markdown", action="store_true", help="print Markdown (a step summary or PR comment)")
    output.add_argument("--json", action="store_true", help="print the JSON report")
    comparing.add_argument("-v", "--verbose", action="store_true", help="list every change, not only regressions")
    comparing.set_defaults(handler=_cmd_compare)

    caps = commands.add_parser("capabilities", help="what this kernel and user allow")
    caps.add_argument("--json", action="store_true", help="print JSON")
    caps.set_defaults(handler=_cmd_capabilities)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except PagewalkError as exc:
        print(f"pagewalk: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return code
