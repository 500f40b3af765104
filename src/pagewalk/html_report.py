"""The HTML memory map: one self-contained page (inline style, script and data; no network) per report.

The page draws each measurement's address space before and after the workload, lists the regions that
contributed most and every mapping, and puts a gate's comparison first when there is one. Its data is the
`--pagemap-json` report document (with each measurement's `map`, see `memory_map`), embedded as JSON in a
`<script type="application/json" id="pagemap-data">` element, so the file is also machine-readable.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from .baseline import write_report_file

__all__ = ["DATA_ELEMENT_ID", "render_html", "report_document", "write_html"]

DATA_ELEMENT_ID = "pagemap-data"
_ASSETS = resources.files(__package__)


def _asset(name: str) -> str:
    return _ASSETS.joinpath(name).read_text(encoding="utf-8")


def _script_json(data: Any) -> str:
    """Compact JSON that cannot end its `<script>` element early: `<`, `>` and `&` are escaped."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def report_document(
    maps: Iterable[Mapping[str, Any]], *, context: Mapping[str, Any] | None = None, created: str | None = None
) -> dict[str, Any]:
    """A report document for maps made outside a test session (the command line): one measurement per map."""
    measurements = []
    for index, item in enumerate(maps):
        key = str(item.get("label") or f"pid {item.get('pid')}")
        measurements.append(
            {"key": key if index == 0 else f"{key} #{index + 1}", "test": key, "label": "", "metrics": item["metrics"]}
            | {"map": item}
        )
    return {"created": created, "context": dict(context or {}), "measurements": measurements, "comparison": None}


def render_html(report: Mapping[str, Any], *, title: str = "pagewalk memory map") -> str:
    """The page for a report document (`ci_reports.json_report` with maps, or `report_document`)."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title>\n<style>\n{_asset('html_report.css')}</style></head>\n"
        f'<body><header class="page"><h1>{html.escape(title)}</h1><div class="context" id="context"></div></header>\n'
        '<main id="app"><noscript>This report draws its memory maps with JavaScript; the data is in the '
        f'element with id "{DATA_ELEMENT_ID}".</noscript></main>\n'
        '<div id="tip" role="tooltip" hidden></div>\n'
        f'<script type="application/json" id="{DATA_ELEMENT_ID}">{_script_json(report)}</script>\n'
        f"<script>\n{_asset('html_report.js')}</script>\n</body></html>\n"
    )


def write_html(path: Path, report: Mapping[str, Any], *, title: str = "pagewalk memory map") -> None:
    """Write the page for `report` to `path`: atomically (a reader never sees half a file), unless `path` is
    a link or a device, which is written through (see `write_report_file`)."""
    write_report_file(path, render_html(report, title=title))
