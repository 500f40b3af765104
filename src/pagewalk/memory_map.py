"""The memory map of a measurement or a snapshot as compact, JSON-ready data, for pictures of an address space.

Every mapping of the `before` and `after` snapshots becomes one row, in address order, with its numbers and,
per page, where it is resident, in a PMD-mapped huge page, swapped out or written. Per-page data is bucketed:
a mapping of `L` pages gets about `sqrt(L)` cells (at most `MAX_CELLS`, never more than its pages), and each
cell holds one hex digit per layer: how much of it is in the layer, from `0` (none) through `f` (all); any
page at all shows as at least `1`. A string of one digit means every cell has that digit. The same data
goes into the HTML report and into the JSON report's `measurements[].map`, whose keys the README documents.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from . import bits, reader
from .baseline import measurement_metrics
from .delta import Delta, RegionDelta
from .errors import PagewalkError
from .measure import Measurement
from .reader import exclusive_cumsum
from .snapshot import Region, Snapshot

__all__ = ["MAP_VERSION", "MAX_CELLS", "REGION_COLUMNS", "json_text", "measurement_map", "snapshot_map"]

MAP_VERSION = 1
MAX_CELLS = 256
LEVELS = 15  # the top hex digit: a cell all of whose pages are in the layer
# One row per mapping: these values, in this order (bytes, or None when not measured).
REGION_COLUMNS = (
    "start",  # addresses in hex, as /proc/PID/maps writes them: [vsyscall] lies beyond 64-bit JSON integers
    "end",
    "before_start",  # the mapping's range before, when it grew or shrank (None otherwise)
    "before_end",
    "perms",
    "kind",
    "name",
    "status",  # added, removed, grown, shrunk or kept (a snapshot's mappings: kept)
    "rss",  # after the workload (0 for a removed mapping)
    "uss",
    "swap",
    "anon",
    "thp",
    "rss_growth",  # None in a snapshot's map
    "uss_growth",
    "swap_growth",
    "anon_growth",
    "written",
    "accessed",
    "resident_cells",  # hex digits over [min(start, before_start), max(end, before_end)), after the workload
    "before_cells",  # the same before it; "" when equal to resident_cells
    "thp_cells",  # "" when no page is in a PMD-mapped huge page
    "swap_cells",  # "" when no page is swapped out
    "written_cells",  # pages written while tracking (soft-dirty); "" when none, or not tracked
)
_TOTALS = ("rss", "uss", "pss", "swap", "anon", "file", "shmem", "thp", "zero", "hugetlb")
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
I64 = npt.NDArray[np.int64]


@dataclasses.dataclass
class _Rows:
    """The rows' page spans and the cells they are cut into."""

    first: I64  # each row's first page number
    pages: I64  # pages in its span
    cells: I64  # cells it is cut into (0: nothing to draw)

    @property
    def offsets(self) -> I64:
        return exclusive_cumsum(self.cells)


def _cell_count(pages: I64) -> I64:
    counts: I64 = np.minimum(np.ceil(np.sqrt(pages)).astype(np.int64), MAX_CELLS)
    return np.minimum(counts, pages)


def _cell_bounds(rows: _Rows) -> tuple[I64, I64]:
    """The first page number of every cell and the one after its last: cell `c` of `n` over `L` pages starting
    at page `F` holds pages F+ceil(cL/n) to F+ceil((c+1)L/n)-1."""
    row = np.repeat(np.arange(len(rows.cells)), rows.cells)
    position = np.arange(int(rows.cells.sum()), dtype=np.int64) - rows.offsets[:-1][row]
    pages, cells, first = rows.pages[row], rows.cells[row], rows.first[row]
    return first - ((-position * pages) // cells), first - ((-(position + 1) * pages) // cells)


def _layers(snap: Snapshot, bounds: tuple[I64, I64], *, resident_only: bool = False) -> dict[str, I64]:
    """Pages per cell: resident (present, not the zero page), in huge pages, swapped out, written.

    Each layer's per-page mask is summed once, and a cell's count is the difference of the running sums
    where its pages begin and end (found from the page runs: no per-page array of page numbers is made).
    """
    first, end = bounds
    lo = snap.vpn_runs.index_of(first.astype(np.uint64))
    hi = snap.vpn_runs.index_of(end.astype(np.uint64))
    top = reader.top_byte_view(snap.entries)
    masks = {"resident": (top & np.uint8(0x88)) == np.uint8(0x80)}  # present, not the zero page (0x08)
    if not resident_only:
        masks["thp"] = (top & np.uint8(0x98)) == np.uint8(0x90)
        masks["swap"] = (top & np.uint8(0xC6)) == np.uint8(0x40)  # guard and userfaultfd markers are no memory
        if snap.written is not None:  # bit 55 of every entry read is its soft-dirty bit
            dirty = (snap.entries & np.uint64(bits.PM_SOFT_DIRTY)) != 0
            masks["written"] = dirty & (masks["resident"] | masks["swap"])
    counts = {}
    for name, mask in masks.items():
        running = exclusive_cumsum(mask.astype(np.int64))
        counts[name] = running[hi] - running[lo]
    return counts


def _digits(counts: I64, cell_pages: I64, rows: _Rows) -> list[str]:
    """Each row's cells as hex digits; one digit when they are all equal, "" when the row has no page in them."""
    levels = np.where(counts > 0, np.maximum(1, (counts * LEVELS + cell_pages - 1) // np.maximum(cell_pages, 1)), 0)
    levels = np.minimum(levels, LEVELS)
    result = [""] * len(rows.cells)
    filled = np.flatnonzero(rows.cells > 0)
    if not len(filled):
        return result
    starts = rows.offsets[:-1][filled]
    low, high = np.minimum.reduceat(levels, starts), np.maximum.reduceat(levels, starts)
    # Most rows are uniform (one digit) or empty: only the others are cut out of the text one by one.
    for row, level in zip(
        filled[(low == high) & (low > 0)].tolist(), low[(low == high) & (low > 0)].tolist(), strict=True
    ):
        result[row] = "0123456789abcdef"[level]
    mixed = filled[low != high]
    if len(mixed):
        text = _HEX[levels].tobytes().decode("ascii")
        for row, lo, hi in zip(
            mixed.tolist(), rows.offsets[mixed].tolist(), rows.offsets[mixed + 1].tolist(), strict=True
        ):
            result[row] = text[lo:hi]
    return result


def _cells(before: Snapshot | None, after: Snapshot, spans: Sequence[tuple[int, int]]) -> dict[str, list[str]]:
    page = after.page_size
    first = np.array([lo // page for lo, _ in spans], dtype=np.int64)
    pages = np.array([(hi - lo) // page for lo, hi in spans], dtype=np.int64)
    rows = _Rows(first, pages, _cell_count(pages))
    bounds = _cell_bounds(rows)
    cell_pages = bounds[1] - bounds[0]
    now = _layers(after, bounds)
    result = {
        f"{name}_cells": _digits(now[name], cell_pages, rows) if name in now else [""] * len(spans)
        for name in ("resident", "thp", "swap", "written")
    }
    if before is None:
        result["before_cells"] = [""] * len(spans)
    else:
        then = _digits(_layers(before, bounds, resident_only=True)["resident"], cell_pages, rows)
        result["before_cells"] = [
            "" if old == new else (old or "0") for old, new in zip(then, result["resident_cells"], strict=True)
        ]
    return result


def _pair_regions(delta: Delta) -> list[tuple[RegionDelta, Region | None, Region | None]]:
    """Each region's change with its mapping before and after, matched as the delta matched them."""
    before = {(r.start, r.name): r for r in delta.before.regions}
    after = {(r.start, r.name): r for r in delta.after.regions}
    paired = []
    for change in delta.regions:
        key = (change.start, change.name)
        new = None if change.status == "removed" else after.get(key)
        old = None if change.status == "added" else before.get(key)
        if old is None and change.status != "added" and new is not None:  # matched by overlap: a stack grew down
            old = next(
                (r for r in delta.before.regions if r.name == new.name and r.start < new.end and new.start < r.end),
                None,
            )
        paired.append((change, old, new))
    return paired


def _plain(value: Any) -> Any:
    """A JSON-ready form of what another part of the library attached (process trees, peaks)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return str(value)


def _attached(measurement: Measurement, name: str) -> Any:
    """What a measurement may carry besides its snapshots (a peak, a process tree), JSON-ready; None if absent."""
    try:
        return _plain(getattr(measurement, name, None))
    except PagewalkError:  # not known for this measurement
        return None


def _processes(snap: Snapshot) -> list[dict[str, Any]] | None:
    """The processes of a tree snapshot (pid, command, RSS, USS each); None for a single process."""
    processes = getattr(snap, "processes", None)
    if not isinstance(processes, Mapping) or len(processes) <= 1:
        return None
    return [
        {name: _plain(getattr(member, name, None)) for name in ("command", "rss", "uss")} | {"pid": pid}
        for pid, member in sorted(processes.items())
    ]


def _header(snap: Snapshot) -> dict[str, Any]:
    return {
        "version": MAP_VERSION,
        "pid": snap.pid,
        "command": snap.command,
        "page_size": snap.page_size,
        "taken_at": snap.taken_at,
        "cells": MAX_CELLS,
        "columns": list(REGION_COLUMNS),
    }


def _delta_rows(delta: Delta) -> list[list[Any]]:
    paired = _pair_regions(delta)
    spans = []
    for change, old, new in paired:
        if old is None or new is None:
            spans.append((change.start, change.end))
        else:
            spans.append((min(old.start, new.start), max(old.end, new.end)))
    cells = _cells(delta.before, delta.after, spans)
    drawn = zip(*(cells[column] for column in REGION_COLUMNS[-5:]), strict=True)
    rows = []
    for (change, old, new), layers in zip(paired, drawn, strict=True):
        moved = old is not None and new is not None and (old.start, old.end) != (new.start, new.end)
        levels = (0, 0, 0, 0, 0) if new is None else (new.rss, new.uss, new.swap, new.anon, new.thp)
        ref = new or old
        assert ref is not None
        rows.append(
            [
                f"{change.start:x}",
                f"{change.end:x}",
                f"{old.start:x}" if moved and old is not None else None,
                f"{old.end:x}" if moved and old is not None else None,
                ref.perms,
                change.kind,
                change.name,
                change.status,
                *levels,
                change.rss_growth,
                change.uss_growth,
                change.swap_growth,
                change.anon_growth,
                change.written,
                change.accessed,
                *layers,
            ]
        )
    return rows


def measurement_map(measurement: Measurement, *, label: str | None = None) -> dict[str, Any]:
    """The map of a finished measurement: its totals, verdicts, notes and one row per mapping (see module doc)."""
    delta = measurement.delta
    data = _header(delta.after)
    data.update(
        {
            "label": label if label is not None else measurement.label,
            "seconds": delta.seconds,
            "totals": {
                "before": {name: getattr(delta.before, name) for name in _TOTALS},
                "after": {name: getattr(delta.after, name) for name in _TOTALS},
            },
            "metrics": measurement_metrics(measurement),
            "peak_rss": _attached(measurement, "peak_rss"),
            "processes": _processes(delta.after),
            "verdicts": [verdict.to_dict() for verdict in measurement.verdicts],
            "flags_gained": None if delta.flags_gained is None else {k: v for k, v in delta.flags_gained.items() if v},
            "notes": sorted({*delta.before.notes, *delta.after.notes}),
            "regions": _delta_rows(delta),
        }
    )
    return data


def snapshot_map(snap: Snapshot, *, label: str | None = None) -> dict[str, Any]:
    """The map of one snapshot: its totals and one row per mapping, every one `kept`, with no changes."""
    cells = _cells(None, snap, [(r.start, r.end) for r in snap.regions])
    rows = []
    for index, region in enumerate(snap.regions):
        rows.append(
            [
                f"{region.start:x}",
                f"{region.end:x}",
                None,
                None,
                region.perms,
                region.kind,
                region.name,
                "kept",
                region.rss,
                region.uss,
                region.swap,
                region.anon,
                region.thp,
                None,
                None,
                None,
                None,
                region.written,
                region.accessed,
                *(cells[column][index] for column in REGION_COLUMNS[-5:]),
            ]
        )
    data = _header(snap)
    data.update(
        {
            "label": label if label is not None else snap.command,
            "seconds": None,
            "totals": {"before": None, "after": {name: getattr(snap, name) for name in _TOTALS}},
            "metrics": {name: getattr(snap, name) for name in ("uss", "rss", "pss", "swap", "anon")},
            "peak_rss": None,
            "processes": None,
            "verdicts": [],
            "flags_gained": None,
            "notes": list(snap.notes),
            "regions": rows,
        }
    )
    return data


def json_text(data: Any) -> str:
    """JSON indented by two, as reports are written, except that each map's region rows take one line each: a
    map of 65,000 mappings stays a few megabytes and still reads one mapping a line."""
    rows: list[list[list[Any]]] = []

    def placeholders(value: Any) -> Any:
        if isinstance(value, Mapping):
            if "columns" in value and isinstance(value.get("regions"), list):
                rows.append([value["columns"]])
                rows.append(value["regions"])
                return {**value, "columns": f"\0rows:{len(rows) - 2}\0", "regions": f"\0rows:{len(rows) - 1}\0"}
            return {key: placeholders(item) for key, item in value.items()}
        if isinstance(value, list):
            return [placeholders(item) for item in value]
        return value

    text = json.dumps(placeholders(data), indent=2)
    for index, lines in enumerate(rows):
        if index % 2 == 0:  # the column names, on one line
            packed = json.dumps(lines[0], separators=(",", ":"))
        else:
            packed = (
                "[\n" + ",\n".join(json.dumps(row, separators=(",", ":")) for row in lines) + "\n]" if lines else "[]"
            )
        text = text.replace(json.dumps(f"\0rows:{index}\0"), packed, 1)
    return text + "\n"
