"""A regression gate: save a baseline, change the code, compare. Page counts are exact, so a tight threshold holds.

    pytest --pagemap-save=base examples/test_gate_demo.py
    PAGEMAP_DEMO_ROWS=150000 pytest --pagemap-compare=base --pagemap-fail=anon:5% examples/test_gate_demo.py

The second run builds a bigger report (standing in for a change that makes the code hungrier): the gate lists
the regression (status, measurement, metric, baseline, current, change, threshold) and the session fails
with exit code 1.
`PAGEMAP_DEMO_ROWS` stands for the code change; nothing else differs between the runs.
"""

from __future__ import annotations

import os

import pytest

ROWS = int(os.environ.get("PAGEMAP_DEMO_ROWS", "100000"))


def build_report(rows: int) -> int:
    """Build an in-memory report of `rows` rows and keep it: its size is what the gate watches."""
    global _report
    _report = [(n, f"customer-{n}", n * 0.5) for n in range(rows)]
    return len(_report)


_report: list[tuple[int, str, float]] = []


def parse_headers(count: int) -> int:
    """A small, steady workload next to the growing one: it stays within its threshold."""
    headers = {f"x-header-{n}": "value" * 4 for n in range(count)}
    return len(headers)


def test_report_builder(pagemap):
    result = pagemap.run(build_report, ROWS)
    assert result.value == ROWS


@pytest.mark.pagemap(tolerance="uss:10%")  # this test's own threshold replaces --pagemap-fail's for USS
def test_header_parser(pagemap):
    with_labels = pagemap.runner(label="parse 1000 headers")
    assert with_labels(parse_headers, 1000).value == 1000
