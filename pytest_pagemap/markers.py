"""The `@pytest.mark.pagemap(...)` marker: limits for every measurement a test makes, and its gate tolerance."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from pagewalk.metrics import LIMIT_KEYS, NO_FLAG_GAIN
from pagewalk.thresholds import Threshold, parse_thresholds

if TYPE_CHECKING:
    from pagewalk.measure import Limits

__all__ = ["MARKER", "MARKER_HELP", "TOLERANCE", "has_marker", "marker_limits", "marker_tolerance"]

MARKER = "pagemap"
TOLERANCE = "tolerance"
MARKER_HELP = (
    f"{MARKER}(uss_below=None, {', '.join(f'{key}=None' for key in list(LIMIT_KEYS)[1:])}, {NO_FLAG_GAIN}=(), "
    f"{TOLERANCE}=()): limits checked against every measurement the test makes with the pagemap fixture when "
    "--pagemap is active; sizes such as '64 MiB', '1.5 GB', '100 pages' or an int of bytes; a positional size "
    f"is uss_below. {TOLERANCE}: threshold expressions such as 'uss:10%' or ['uss:10%', 'rss:+2MiB'] that "
    "replace --pagemap-fail's, metric by metric, when this test is compared with a baseline"
)


def has_marker(item: pytest.Item) -> bool:
    """Whether `item` has a `pagemap` marker: what the functions below read, and load the measuring code for."""
    return item.get_closest_marker(MARKER) is not None


def marker_limits(item: pytest.Item) -> Limits:
    """The limits the `pagemap` markers of `item` set, the closest marker winning per limit.

    Raises `ValueError` describing a bad argument.
    """
    from pagewalk.measure import Limits  # the measuring code loads with the first test that needs it

    merged: dict[str, Any] = {}
    for mark in item.iter_markers(MARKER):
        values = {key: value for key, value in mark.kwargs.items() if key != TOLERANCE}
        if len(mark.args) > 1:
            raise ValueError(f"takes at most one positional size (uss_below), got {len(mark.args)}: {mark.args!r}")
        if mark.args:
            if "uss_below" in values:
                raise ValueError("uss_below given twice: as the positional size and as a keyword")
            values["uss_below"] = mark.args[0]
        for key, value in values.items():
            merged.setdefault(key, value)  # iter_markers yields the closest marker first
    return Limits.parse(merged)


def marker_tolerance(item: pytest.Item) -> tuple[Threshold, ...]:
    """The gate thresholds of the closest `pagemap` marker that sets `tolerance=`; none when no marker does.

    Raises `ValueError` describing a bad expression.
    """
    for mark in item.iter_markers(MARKER):
        if TOLERANCE in mark.kwargs:
            try:
                return parse_thresholds(mark.kwargs[TOLERANCE])
            except ValueError as exc:
                raise ValueError(f"{TOLERANCE}={mark.kwargs[TOLERANCE]!r}: {exc}") from None
    return ()
