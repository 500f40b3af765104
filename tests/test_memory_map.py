"""Memory maps of real processes (pagewalk.memory_map) and the HTML page made of them (pagewalk.html_report).

A puppet child maps and writes pages in known places; each map row must carry the snapshot's own numbers for
that mapping, and its cells must say which part of it is resident. The page is checked as a file here (one
self-contained document, its data readable back); tests/test_html_browser.py opens it in Chromium.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from puppet import Puppet

import pagewalk
from pagewalk.html_report import DATA_ELEMENT_ID, render_html, report_document, write_html
from pagewalk.memory_map import MAX_CELLS, REGION_COLUMNS, json_text, measurement_map, snapshot_map

PAGE = pagewalk.capabilities().page_size


@pytest.fixture
def child() -> Iterator[Puppet]:
    with Puppet() as puppet:
        yield puppet


def rows_of(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows as dicts, with their addresses as numbers."""
    rows = [dict(zip(data["columns"], row, strict=True)) for row in data["regions"]]
    for row in rows:
        for key in ("start", "end", "before_start", "before_end"):
            row[key] = None if row[key] is None else int(row[key], 16)
    return rows


def row_at(data: dict[str, Any], address: int) -> dict[str, Any]:
    (row,) = [row for row in rows_of(data) if row["start"] <= address < row["end"]]
    return row


def test_rows_carry_each_mappings_own_numbers(child: Puppet) -> None:
    area = child.map(64)
    child.write(area, range(32))  # the first half resident, the second never touched
    snap = pagewalk.snapshot(child.pid)
    data = snapshot_map(snap)
    assert data["columns"] == list(REGION_COLUMNS)
    assert len(data["regions"]) == len(snap.regions)
    for row, region in zip(rows_of(data), snap.regions, strict=True):
        assert (row["start"], row["end"], row["name"], row["kind"], row["perms"]) == (
            region.start,
            region.end,
            region.name,
            region.kind,
            region.perms,
        )
        assert (row["rss"], row["uss"], row["swap"], row["anon"], row["thp"]) == (
            region.rss,
            region.uss,
            region.swap,
            region.anon,
            region.thp,
        )
        assert row["status"] == "kept" and row["uss_growth"] is None
    row = row_at(data, area.address)
    assert row["rss"] == 32 * PAGE
    # 64 pages make 8 cells of 8 pages: four full, four empty.
    assert row["resident_cells"] == "ffff0000"
    assert data["totals"]["after"]["uss"] == snap.uss and data["totals"]["before"] is None


def test_a_measurement_tells_added_grown_and_removed_regions_apart(child: Puppet) -> None:
    kept = child.map(16)
    child.write(kept, range(16))
    doomed = child.map(8)
    child.write(doomed)
    with pagewalk.measure(child.pid, label="puppet") as m:
        added = child.map(100)
        child.write(added, range(0, 100, 2))  # every other page: each cell holds half its pages
        child.write(kept, range(16))  # rewritten: nothing changes
        child.munmap(doomed)
    data = measurement_map(m)
    assert data["label"] == "puppet" and data["metrics"]["uss_growth"] == m.delta.uss_growth
    assert data["totals"]["before"]["uss"] == m.before.uss and data["totals"]["after"]["uss"] == m.after.uss
    new = row_at(data, added.address)
    assert (new["status"], new["rss"], new["uss_growth"]) == ("added", 50 * PAGE, 50 * PAGE)
    assert new["before_cells"] == "0"  # nothing there before
    assert len(new["resident_cells"]) == 1 and new["resident_cells"] in "89"  # half of each cell: 7.5 of 15
    gone = row_at(data, doomed.address)
    assert (gone["status"], gone["rss"], gone["uss_growth"]) == ("removed", 0, -8 * PAGE)
    same = row_at(data, kept.address)
    assert (same["status"], same["uss_growth"], same["before_cells"]) == ("kept", 0, "")
    # Every change of the delta is in the map, with the same numbers.
    changes = {(r.start, r.name, r.status): r for r in m.delta.regions}
    for row in rows_of(data):
        change = changes[(row["start"], row["name"], row["status"])]
        assert (row["uss_growth"], row["rss_growth"], row["anon_growth"]) == (
            change.uss_growth,
            change.rss_growth,
            change.anon_growth,
        )


def test_large_mappings_are_bucketed_into_a_bounded_number_of_cells(child: Puppet) -> None:
    pages = 256 * 1024  # 1 GiB reserved, one page in 64 written
    area = child.map(pages, noreserve=True)
    child.write(area, range(0, pages, 64))
    data = snapshot_map(pagewalk.snapshot(child.pid))
    row = row_at(data, area.address)
    assert row["rss"] == pages // 64 * PAGE
    assert row["resident_cells"] == "1"  # every cell 1/64 resident: the lowest level that still shows
    assert MAX_CELLS == data["cells"] == 256


def test_json_text_keeps_one_mapping_a_line_and_reads_back(child: Puppet) -> None:
    child.write(child.map(4))
    data = {"measurements": [{"key": "k", "map": snapshot_map(pagewalk.snapshot(child.pid))}], "other": [1, 2]}
    text = json_text(data)
    assert json.loads(text) == data
    lines = text.splitlines()
    assert len(lines) < len(data["measurements"][0]["map"]["regions"]) + 60  # not one line per value
    assert any(line.startswith("[") and line.endswith("],") for line in lines)  # a row on a line of its own


def test_the_page_is_self_contained_and_carries_the_report(child: Puppet, tmp_path: Path) -> None:
    child.write(child.map(4))
    data = snapshot_map(pagewalk.snapshot(child.pid), label="</script><b>puppet</b>")
    report = report_document([data])
    path = tmp_path / "map.html"
    write_html(path, report)
    page = path.read_text(encoding="utf-8")
    assert page == render_html(report)
    # Nothing is fetched: no external scripts, styles, images or fonts.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page and "url(" not in page
    embedded = re.search(rf'<script type="application/json" id="{DATA_ELEMENT_ID}">(.*?)</script>', page, re.S)
    assert embedded is not None
    assert json.loads(embedded.group(1)) == json.loads(json.dumps(report))  # the label cannot end the element
    assert "<b>puppet</b>" not in page


def test_cli_writes_the_page_for_a_snapshot_and_a_delta(tmp_path: Path) -> None:
    code = "import sys\nprint('ready', flush=True)\nsys.stdin.readline()\n"
    process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
        for command in (["snapshot"], ["delta", "--for", "0"]):
            path = tmp_path / f"{command[0]}.html"
            result = subprocess.run(
                [sys.executable, "-m", "pagewalk", *command, str(process.pid), "--html", str(path)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 0, result.stderr
            assert f"wrote the memory map to {path}" in result.stderr
            assert f"pid {process.pid}" in result.stdout  # the text report is still printed
            embedded = path.read_text().split(f'id="{DATA_ELEMENT_ID}">', 1)[1].split("</script>", 1)[0]
            (measurement,) = json.loads(embedded)["measurements"]
            assert measurement["map"]["pid"] == process.pid
            assert (measurement["map"]["totals"]["before"] is None) == (command[0] == "snapshot")
        unwritable = subprocess.run(
            [sys.executable, "-m", "pagewalk", "snapshot", str(process.pid), "--html", str(tmp_path / "no" / "x.html")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert unwritable.returncode == 1
        assert "cannot write the HTML page to" in unwritable.stderr and "No such file or directory" in unwritable.stderr
    finally:
        process.kill()
        process.wait()
