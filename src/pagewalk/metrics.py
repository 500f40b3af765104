"""The metrics a measurement records and a limit or a gate names: their table, and how limits spell them.

A module of names and no work, so that option and marker help can list the metrics without loading the
measuring machinery.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

__all__ = ["FILE_PARTS", "LIMIT_KEYS", "METRICS", "NO_FLAG_GAIN", "Metric", "Option"]

Option = Literal["writes", "accessed", "flags", "counts"]


@dataclass(frozen=True)
class Metric:
    """A quantity a limit can be put on: its name, how messages call it, and what measuring it needs."""

    name: str
    title: str  # as it starts a message: "USS growth"
    preposition: str  # "USS of 'app'", "Memory written by 'app'"
    growth: bool  # a change (may be negative) rather than a level
    needs: Option | None = None  # the measure() option without which it is unknown
    region_column: str = "uss_growth"  # the RegionDelta column that explains it


METRICS: Mapping[str, Metric] = MappingProxyType(
    {
        metric.name: metric
        for metric in (
            Metric("uss", "USS", "of", growth=False, region_column="uss_growth"),
            Metric("rss", "RSS", "of", growth=False, region_column="rss_growth"),
            Metric("pss", "PSS", "of", growth=False, needs="counts", region_column="pss_growth"),
            Metric("swap", "Swap", "of", growth=False, region_column="swap_growth"),
            Metric("anon", "Anonymous memory", "of", growth=False, region_column="anon_growth"),
            Metric("uss_file", "File-backed USS", "of", growth=False, region_column="uss_growth"),
            Metric("uss_growth", "USS growth", "of", growth=True, region_column="uss_growth"),
            Metric("uss_file_growth", "File-backed USS growth", "of", growth=True, region_column="uss_growth"),
            Metric("rss_growth", "RSS growth", "of", growth=True, region_column="rss_growth"),
            Metric("anon_growth", "Anonymous memory growth", "of", growth=True, region_column="anon_growth"),
            Metric("written", "Memory written", "by", growth=False, needs="writes", region_column="written"),
            Metric("accessed", "Memory accessed", "by", growth=False, needs="accessed", region_column="accessed"),
            Metric(
                "accessed_anon",
                "Anonymous memory accessed",
                "by",
                growth=False,
                needs="accessed",
                region_column="accessed",
            ),
            Metric("peak_rss", "Peak RSS", "of", growth=False, region_column="rss_growth"),
            Metric("peak_rss_growth", "Peak RSS growth", "of", growth=True, region_column="rss_growth"),
        )
    }
)

# The file-backed part of USS, and of its growth: what other processes move by mapping or unmapping the same
# files (a second redis-server exiting during a measured block added 6.3 MiB to the first one's USS growth).
FILE_PARTS: Mapping[str, str] = MappingProxyType({"uss": "uss_file", "uss_growth": "uss_file_growth"})

# Keyword names of limits, as markers, ini keys and `Limits.parse` spell them.
LIMIT_KEYS: Mapping[str, str] = MappingProxyType({f"{name}_below": name for name in METRICS})
NO_FLAG_GAIN = "no_flag_gain"
