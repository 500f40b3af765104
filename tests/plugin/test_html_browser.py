"""The HTML memory map in a real browser: headless Chromium, driven through the DevTools protocol.

The reports come from real sessions and real processes. Each test opens one, then reads the page back: no
uncaught exception or console error, the failing measurement on top, the gate's regression first, each
region's numbers as the JSON report has them, and a 65,000-mapping report drawn within a stated bound.
Skipped, with the reason, where Chromium is not installed (`.ci/run` installs Debian's).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pagewalk import format_size, snapshot
from pagewalk.html_report import report_document, write_html
from pagewalk.memory_map import snapshot_map

from .support import GROW, SMALL_AND_BIG

pytest.importorskip("websocket", reason="the browser tests need websocket-client (the 'test' extra)")
from browser import Browser, Page, chromium_path
from many_mappings import MANY_MAPPINGS

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed (apt-get install chromium)")

LOAD_BOUND_SECONDS = 30  # a 65,000-mapping report must be drawn within this, on a loaded machine too


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with Browser.start() as running:
        yield running


def open_report(browser: Browser, path: Path, tmp_path: Path) -> Page:
    page, _ = browser.open(path)
    page.screenshot(tmp_path / f"{path.stem}.png")
    assert (tmp_path / f"{path.stem}.png").stat().st_size > 10_000  # something was drawn
    assert page.errors == []
    return page


def read_top_regions(page: Page, key: str) -> list[dict[str, Any]]:
    """The rows of one measurement's table of top regions: region index, address text and byte values."""
    script = f"""
      [...document.querySelectorAll('details.measurement[data-key={json.dumps(key)}] table.top-regions tr[data-row]')]
        .map(tr => ({{row: Number(tr.dataset.row), address: tr.cells[0].textContent,
                      bytes: [...tr.querySelectorAll('td[data-bytes]')].map(td => [td.dataset.bytes, td.textContent]),
                      column: tr.closest('table').dataset.column}}))
    """
    rows: list[dict[str, Any]] = page.evaluate(script)
    return rows


def test_failing_measurement_on_top_and_numbers_match_the_json(
    pytester: pytest.Pytester, browser: Browser, tmp_path: Path
) -> None:
    pytester.makepyfile(test_grow=SMALL_AND_BIG)
    result = pytester.runpytest("--pagemap", "--pagemap-html=map.html", "--pagemap-json=report.json")
    result.assert_outcomes(passed=1, failed=1)
    report = json.loads((pytester.path / "report.json").read_text())
    page = open_report(browser, pytester.path / "map.html", tmp_path)

    keys = page.evaluate("[...document.querySelectorAll('details.measurement')].map(d => d.dataset.key)")
    assert keys == ["test_grow.py::test_big", "test_grow.py::test_small"]  # the failure first, not file order
    assert page.evaluate("document.querySelector('details.measurement').classList.contains('failed')")
    assert page.evaluate("document.querySelector('#overview tr[data-key]').dataset.failed") == "1"
    # Both maps drawn: before and after, for each (open) measurement.
    assert page.evaluate("document.querySelectorAll('canvas.map').length") == 4

    for measurement in report["measurements"]:
        data = measurement["map"]
        columns = data["columns"]
        rows = read_top_regions(page, measurement["key"])
        assert rows, f"no top regions for {measurement['key']}"
        for shown in rows:
            region = dict(zip(columns, data["regions"][shown["row"]], strict=True))
            assert shown["address"] == f"{int(region['start'], 16):012x}-{int(region['end'], 16):012x}"
            expected = [region[shown["column"]], region["rss"], region["uss"], region["swap"]]
            assert [int(value) for value, _ in shown["bytes"]] == expected
            signed = shown["column"].endswith("_growth")
            assert [text for _, text in shown["bytes"]] == [
                format_size(expected[0], signed=signed),
                *(format_size(value) for value in expected[1:]),
            ]
        totals = page.evaluate(
            f"""Object.fromEntries([...document.querySelectorAll(
                'details.measurement[data-key={json.dumps(measurement["key"])}] table.totals tr[data-metric]')]
                .map(tr => [tr.dataset.metric,
                            [...tr.querySelectorAll('td[data-bytes]')].map(td => td.dataset.bytes)]))"""
        )
        for name, values in totals.items():
            if len(values) == 1:  # measured once: the peak, pages written or accessed
                assert int(values[0]) == (data["peak_rss"] if name == "peak_rss" else data["metrics"][name])
                continue
            before, after, change = values
            assert (int(before), int(after)) == (data["totals"]["before"][name], data["totals"]["after"][name])
            assert int(change) == int(after) - int(before)

    # Hovering over the map shows the numbers of the mapping under the pointer.
    left, top, width = page.evaluate(
        """(() => { const c = document.querySelector('details.measurement canvas.map[data-which=after]');
                    c.scrollIntoView(); const r = c.getBoundingClientRect(); return [r.left, r.top, r.width]; })()"""
    )
    page.call("Input.dispatchMouseEvent", type="mouseMoved", x=left + width / 2, y=top + 12)
    tip = page.evaluate("document.getElementById('tip').hidden ? null : document.getElementById('tip').innerText")
    assert tip is not None, "no tooltip over the map"
    start = int(tip.split("range", 1)[1].split()[0].split("-")[0], 16)  # the map's addresses are hex strings
    big = next(m for m in report["measurements"] if m["key"] == "test_grow.py::test_big")["map"]
    (hovered,) = [dict(zip(big["columns"], row, strict=True)) for row in big["regions"] if int(row[0], 16) == start]
    flat = " ".join(tip.split())
    rss = f"rss {format_size(hovered['rss'])} ({format_size(hovered['rss_growth'], signed=True)})"
    assert hovered["name"] in flat and rss in flat

    # Clicking a region shows its numbers.
    page.evaluate("document.querySelector('details.measurement table.top-regions tr[data-row]').click()")
    detail = page.evaluate("document.querySelector('details.measurement .region-detail').innerText")
    shown = read_top_regions(page, "test_grow.py::test_big")[0]["row"]
    first = dict(zip(big["columns"], big["regions"][shown], strict=True))
    assert first["name"] in detail and format_size(first["rss"]) in detail
    assert page.errors == []


def test_the_gate_comes_first_with_its_regression_on_top(
    pytester: pytest.Pytester, browser: Browser, tmp_path: Path
) -> None:
    pytester.makepyfile(
        test_gate=GROW
        + "import os\n\ndef test_grows(pagemap):\n    pagemap.run(grow, int(os.environ.get('GROW_BYTES', 1 << 20)))\n"
    )
    pytester.runpytest("--pagemap-save=base").assert_outcomes(passed=1)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GROW_BYTES", str(12 << 20))
        result = pytester.runpytest("--pagemap-compare=base", "--pagemap-fail=uss:+4MiB", "--pagemap-html=gate.html")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    page = open_report(browser, pytester.path / "gate.html", tmp_path)
    assert page.evaluate("[...document.querySelectorAll('#app > :not(noscript)')][0].id") == "gate"
    assert page.evaluate("document.querySelector('#gate h2').innerText").endswith("FAILED")
    statuses = page.evaluate("[...document.querySelectorAll('#gate tr[data-status]')].map(tr => tr.dataset.status)")
    assert statuses[0] == "regression"
    first_row = page.evaluate("[...document.querySelector('#gate tr[data-status]').cells].map(td => td.innerText)")
    assert "uss" in first_row and "uss:+4.0 MiB" in first_row


def test_a_report_of_65000_mappings_loads_within_the_bound(browser: Browser, tmp_path: Path) -> None:
    mappings = 65_000
    target = subprocess.Popen(
        [sys.executable, "-c", MANY_MAPPINGS, str(mappings)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert target.stdout is not None and target.stdout.readline() == "ready\n"
        data = snapshot_map(snapshot(target.pid), label="many mappings")
    finally:
        target.kill()
        target.wait()
    assert len(data["regions"]) > mappings
    path = tmp_path / "many.html"
    write_html(path, report_document([data]))
    page, seconds = browser.open(path, ready_seconds=LOAD_BOUND_SECONDS)
    print(f"{len(data['regions'])} mappings: {path.stat().st_size / 2**20:.1f} MiB of HTML drawn in {seconds:.1f} s")
    assert page.errors == []
    assert page.evaluate("document.querySelector('details.all-regions summary').innerText") == (
        f"All {len(data['regions'])} mappings"
    )
    # The list of every mapping is virtual: opening it renders a screenful of rows, not 65,000.
    page.evaluate("document.querySelector('details.all-regions').open = true")
    page.wait_for("document.querySelectorAll('.vlist .vrow').length > 0", LOAD_BOUND_SECONDS)
    assert page.evaluate("document.querySelectorAll('.vlist .vrow').length") < 100
    assert page.errors == []


def test_sizes_read_as_in_the_terminal_ties_included(browser: Browser, tmp_path: Path) -> None:
    """A size halfway between two tenths (1.25 MiB is 320 pages) is rounded to even, as format_size does."""
    data = snapshot_map(snapshot(os.getpid()), label="ties")
    ties = [5 << 18, 25 << 18, 9 << 8, 13 << 28, 3 << 18, 7 << 18]  # 1.25, 6.25 MiB, 2.25 KiB, 3.25 GiB, ...
    after = data["totals"]["after"]
    for name, value in zip([name for name in after if after[name] is not None], ties, strict=False):
        after[name] = value
    path = tmp_path / "ties.html"
    write_html(path, report_document([data]))
    page = open_report(browser, path, tmp_path)
    cells = page.evaluate(
        "[...document.querySelectorAll('table.totals td[data-bytes]')].map(td => [td.dataset.bytes, td.textContent])"
    )
    shown = [(int(value), text) for value, text in cells if value]
    assert len({value for value, _ in shown} & set(ties)) >= 4  # the ties are on the page
    for value, text in shown:
        assert text in (format_size(value), format_size(value, signed=True)), value
