"""The command line: `python -m pagesnap snapshot PID`, `... capabilities`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from .capabilities import capabilities
from .errors import PagesnapError
from .snapshot import Region, Snapshot, snapshot
from .units import format_size

__all__ = ["main"]

# Exit codes: 0 success, 1 a pagesnap error (process gone, access denied, unsupported), 2 usage error.
EXIT_ERROR = 1

_METRICS = ("rss", "uss", "pss", "swap", "anon", "file", "shmem", "thp", "zero", "hugetlb")


def _size_cell(value: int | None) -> str:
    return "-" if value is None else format_size(value)


def _region_table(regions: Sequence[Region], limit: int) -> list[str]:
    ranked = sorted(regions, key=lambda r: r.rss + r.swap + r.hugetlb, reverse=True)[:limit]
    lines = [f"{'address':<27} {'perms':<5} {'rss':>10} {'uss':>10} {'swap':>10}  name"]
    for region in ranked:
        if not (region.rss or region.swap or region.hugetlb):
            break
        lines.append(
            f"{region.start:012x}-{region.end:012x}  {region.perms:<5} {_size_cell(region.rss):>10} "
            f"{_size_cell(region.uss):>10} {_size_cell(region.swap):>10}  {region.name}"
        )
    return lines


def render_snapshot(snap: Snapshot, *, top: int = 15) -> str:
    """A readable table of a snapshot: totals, then the regions holding the most memory."""
    lines = [f"pid {snap.pid}: {snap.command}"]
    lines.append("  ".join(f"{name} {_size_cell(getattr(snap, name))}" for name in _METRICS))
    if snap.flag_counts is not None:
        set_flags = {name: pages for name, pages in snap.flag_counts.items() if pages}
        lines.append("flags (pages): " + ", ".join(f"{name}={pages}" for name, pages in set_flags.items()))
    lines.append("")
    lines.extend(_region_table(snap.regions, top))
    lines.extend(f"note: {note}" for note in snap.notes)
    return "\n".join(lines)


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _cmd_snapshot(args: argparse.Namespace) -> int:
    counts = args.counts
    if counts is None:  # PSS when it can be had, without failing when it cannot
        caps = capabilities()
        counts = caps.missing_for_pss() is None
    snap = snapshot(args.pid, flags=args.flags, counts=counts, freeze=not args.no_freeze, method=args.method)
    if args.json:
        _print_json(snap.to_dict())
    else:
        print(render_snapshot(snap, top=args.top))
    return 0


def _cmd_capabilities(args: argparse.Namespace) -> int:
    caps = capabilities().as_dict()
    if args.json:
        _print_json(caps)
    else:
        for key, value in caps.items():
            print(f"{key:<20} {value}")
    return 0


def _pid(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a pid (a positive integer)") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pagesnap",
        description="Exact memory snapshots of a Linux process, read from /proc/PID/pagemap.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    snap = commands.add_parser("snapshot", help="snapshot one process and print its memory")
    snap.add_argument("pid", type=_pid, help="the process to read")
    snap.add_argument("--flags", action="store_true", help="count pages per kernel page flag (needs root)")
    pss = snap.add_mutually_exclusive_group()
    pss.add_argument("--pss", dest="counts", action="store_true", default=None, help="require PSS (needs root)")
    pss.add_argument("--no-pss", dest="counts", action="store_false", help="skip PSS (faster)")
    snap.add_argument("--json", action="store_true", help="print JSON (keys documented in the README)")
    snap.add_argument("--no-freeze", action="store_true", help="do not stop the process while reading")
    snap.add_argument("--method", choices=("auto", "read", "scan"), default="auto", help="pagemap front end")
    snap.add_argument("--top", type=int, default=15, help="regions to list in the table (default 15)")
    snap.set_defaults(handler=_cmd_snapshot)

    caps = commands.add_parser("capabilities", help="what this kernel and user allow")
    caps.add_argument("--json", action="store_true", help="print JSON")
    caps.set_defaults(handler=_cmd_capabilities)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except PagesnapError as exc:
        print(f"pagesnap: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return code
