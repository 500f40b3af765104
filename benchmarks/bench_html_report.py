#!/usr/bin/env python3
"""The HTML memory map's size and load time on large targets.

Builds each target (a child process), measures it around a workload, writes the map's HTML page and JSON
report, and opens the page in headless Chromium (tests/browser.py), timing until it has drawn. Prints one
line per target: mappings, resident memory, time to make the map, HTML and JSON sizes, load time.

    python3 benchmarks/bench_html_report.py                    # 1 GiB and 65,000 mappings
    python3 benchmarks/bench_html_report.py --targets 16gib    # 16 GiB of address space, 1 GiB resident
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pagewalk
from pagewalk.html_report import report_document, write_html
from pagewalk.memory_map import json_text, measurement_map

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from browser import Browser  # the DevTools client the browser tests use
from many_mappings import MANY_MAPPINGS

# Each target prints "ready", then does its workload on a line of input and prints "ok".
TARGETS = {
    "1gib": (
        "1 GiB written",
        """
import mmap, sys
print("ready", flush=True)
sys.stdin.readline()
area = mmap.mmap(-1, 1 << 30, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for offset in range(0, 1 << 30, mmap.PAGESIZE):
    area[offset] = 1
print("ok", flush=True)
sys.stdin.readline()
""",
    ),
    "16gib": (
        "16 GiB mapped, every 16th page written",
        """
import mmap, sys
print("ready", flush=True)
sys.stdin.readline()
NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)  # the module has it from Python 3.13
area = mmap.mmap(-1, 16 << 30, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | NORESERVE)
for offset in range(0, 16 << 30, 16 * mmap.PAGESIZE):
    area[offset] = 1
print("ok", flush=True)
sys.stdin.readline()
""",
    ),
    "65k": ("65,000 mappings", MANY_MAPPINGS),
}


def run(name: str, browser: Browser, folder: Path) -> None:
    title, code = TARGETS[name]
    arguments = ["65000"] if code is MANY_MAPPINGS else []
    child = subprocess.Popen(
        [sys.executable, "-c", code, *arguments], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdin is not None and child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        with pagewalk.measure(child.pid, label=title) as m:
            child.stdin.write("go\n")
            child.stdin.flush()
            assert child.stdout.readline() == "ok\n"
    finally:
        child.kill()
        child.wait()
    started = time.perf_counter()
    data = measurement_map(m)
    map_seconds = time.perf_counter() - started
    report = report_document([data])
    page_path, json_path = folder / f"{name}.html", folder / f"{name}.json"
    write_html(page_path, report)
    json_path.write_text(json_text(report))
    _, load_seconds = browser.open(page_path)
    print(
        f"{title:<40} {len(data['regions']):>7} mappings  rss {pagewalk.format_size(m.after.rss):>10}  "
        f"map {map_seconds:5.2f} s  html {page_path.stat().st_size / 2**20:6.2f} MiB  "
        f"json {json_path.stat().st_size / 2**20:6.2f} MiB  loaded and drawn in {load_seconds:5.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="1gib,65k", help=f"comma-separated, from {', '.join(TARGETS)}")
    names = parser.parse_args().targets.split(",")
    unknown = [name for name in names if name not in TARGETS]
    if unknown:
        parser.error(f"unknown targets {unknown}; choose from {', '.join(TARGETS)}")
    with tempfile.TemporaryDirectory(prefix="pagemap-html-bench-") as folder, Browser.start() as browser:
        for name in names:
            run(name, browser, Path(folder))


if __name__ == "__main__":
    main()
