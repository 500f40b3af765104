"""Threshold expressions of a regression gate: `anon:5%`, `uss:5%,noise=256KiB` or `rss:+2MiB`, parsed into
how much a metric may grow over its baseline.

Light on purpose (no numpy, no kernel interface): option and marker help quote its grammar.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .metrics import METRICS
from .units import format_size, parse_decimal, parse_size

__all__ = ["DEFAULT_NOISE", "FORMS", "GATED_METRICS", "MAX_PERCENT", "Threshold", "parse_threshold", "parse_thresholds"]

# Metrics a session record keeps and a gate can compare; smaller is better for every one of them.
GATED_METRICS: tuple[str, ...] = tuple(METRICS)
# A change this small never fails a relative threshold nor is listed as a change: 16 pages of 4 KiB, the
# size of a few allocator arenas' bookkeeping, which moves between identical runs.
DEFAULT_NOISE = 64 * 1024
_EXPRESSION = re.compile(
    r"^[ \t]*(?P<metric>[a-z_]+)[ \t]*:[ \t]*(?P<amount>[^,]+?)[ \t]*"
    r"(?:,[ \t]*noise[ \t]*=[ \t]*(?P<noise>.+?))?[ \t]*$",
    re.ASCII,
)
_PERCENT = re.compile(r"^\+?(?P<number>[0-9.]+)[ \t]*%$", re.ASCII)
_BARE_NUMBER = re.compile(r"^\+?[0-9.]+$", re.ASCII)
MAX_PERCENT = 10_000  # a threshold beyond 100 times the baseline is no threshold: refuse it as a typo
FORMS = (
    f"METRIC:N% (relative to the baseline; N in ASCII digits, at most {MAX_PERCENT:,}) "
    "or METRIC:+SIZE (absolute, e.g. rss:+2MiB); a relative one may add ,noise=SIZE (e.g. anon:5%,noise=256KiB)"
)


def _percentage(number: str, text: str) -> float:
    """The percentage of a threshold: a plain decimal, at most MAX_PERCENT."""
    value = parse_decimal(number)
    if value is None:
        raise ValueError(f"cannot read the percentage in {text!r}; expected {FORMS}")
    if value > MAX_PERCENT:
        raise ValueError(f"the percentage in {text!r} is more than {MAX_PERCENT:,}%; expected {FORMS}")
    return float(value)


@dataclass(frozen=True)
class Threshold:
    """How much a metric may grow over its baseline before it counts as a regression. `noise` replaces the
    session's noise floor for a relative threshold: a change no larger never fails it."""

    metric: str
    percent: float | None = None
    absolute: int | None = None
    noise: int | None = None

    @property
    def text(self) -> str:
        if self.percent is not None:
            noise = "" if self.noise is None else f",noise={format_size(self.noise)}"
            return f"{self.metric}:{self.percent:g}%{noise}"
        return f"{self.metric}:+{format_size(self.absolute or 0)}"

    def allowed(self, baseline: int) -> int:
        """The largest value that passes, given the baseline value."""
        if self.percent is not None:
            return baseline + math.floor(abs(baseline) * self.percent / 100)
        return baseline + (self.absolute or 0)

    def exceeded(self, baseline: int, current: int, noise: int) -> bool:
        """`current` is over the allowance; for a relative threshold, by a change larger than the noise floor."""
        if current <= self.allowed(baseline):
            return False
        return self.percent is None or current - baseline > (noise if self.noise is None else self.noise)


def parse_threshold(text: str) -> Threshold:
    """Parse `anon:5%`, `uss:5%,noise=256KiB` or `rss:+2MiB`; a bad expression raises `ValueError` saying why."""
    match = _EXPRESSION.match(text)
    if not match:
        raise ValueError(f"cannot read {text!r} as a threshold; expected {FORMS}")
    metric, amount, noise_text = match.group("metric"), match.group("amount"), match.group("noise")
    if metric not in GATED_METRICS:
        raise ValueError(f"unknown metric {metric!r} in {text!r}; choose from {', '.join(GATED_METRICS)}")
    noise = None
    if noise_text is not None:
        try:
            noise = parse_size(noise_text)
        except ValueError as exc:
            raise ValueError(f"cannot read the noise floor in {text!r}: {exc}") from None
    percent = _PERCENT.match(amount)
    if percent:
        return Threshold(metric, percent=_percentage(percent.group("number"), text), noise=noise)
    if noise is not None:
        raise ValueError(f"{text!r}: noise= applies to relative thresholds (N%); an absolute one is exact")
    if amount.startswith("-") or amount.startswith("+-"):
        raise ValueError(f"threshold {text!r} is negative; a threshold is how much growth is allowed")
    if _BARE_NUMBER.match(amount):
        # `uss:5` reads as 5 bytes to a parser and as 5% to most people: make the writer say which.
        raise ValueError(
            f"threshold {text!r} has no unit: write {metric}:{amount.lstrip('+')}% or {metric}:+{amount.lstrip('+')} B"
        )
    if amount.startswith("++"):
        raise ValueError(f"cannot read {text!r} as a threshold; expected {FORMS}")
    try:
        return Threshold(metric, absolute=parse_size(amount.removeprefix("+")))
    except ValueError as exc:
        raise ValueError(f"cannot read the amount in {text!r}: {exc}; expected {FORMS}") from None


def parse_thresholds(value: object) -> tuple[Threshold, ...]:
    """A threshold expression or a sequence of them (a per-test override); `ValueError` saying why not."""
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, (list, tuple)) or not all(isinstance(text, str) for text in texts):
        raise ValueError(f"expected a threshold such as 'anon:10%' or a list of them, not {value!r}")
    return tuple(parse_threshold(text) for text in texts)
