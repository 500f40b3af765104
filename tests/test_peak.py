"""Peak RSS against the kernel: the high-water mark reset at the start of a measurement and read at its end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from family import Family

import pagewalk
from pagewalk.measure import Measurement, NotMeasured, measure
from pagewalk.units import PAGE_SIZE

MiB = 1 << 20
CPUS = os.cpu_count() or 1
# The kernel keeps RSS in per-CPU batched counters and updates the high-water mark from their approximate
# sum: each of the file, anon and shmem counters may be off by the batch (max(32, 2 * CPUs) pages) per CPU.
HIGH_WATER_ERROR = 3 * CPUS * max(32, 2 * CPUS) * PAGE_SIZE


def test_peak_catches_a_transient_allocation_that_before_and_after_miss(family: Family) -> None:
    with measure(family.pid) as m:
        family.do("hold 100")
        family.do("free")
    # Gone by the end: before/after cannot see it. The bound leaves room for a few huge pages that khugepaged
    # may collapse meanwhile where THP is `always` (Debian's kernels), filling in pages nobody touched.
    assert abs(m.delta.rss_growth) < 8 * MiB
    assert m.peak_rss_growth is not None and m.peak_rss is not None
    assert 100 * MiB - HIGH_WATER_ERROR <= m.peak_rss_growth <= 100 * MiB + HIGH_WATER_ERROR + 2 * MiB
    assert m.peak_rss == m.before.rss + m.peak_rss_growth  # type: ignore[union-attr]
    m.assert_peak_rss_growth_below("110 MiB")
    with pytest.raises(AssertionError, match=r"Peak RSS growth of .* limited to 50\.0 MiB but measured \d+\.\d MiB"):
        m.assert_peak_rss_growth_below("50 MiB")
    with pytest.raises(AssertionError, match="Peak RSS of"):
        m.assert_peak_rss_below(m.after.rss)
    assert m.to_dict()["delta"]["peak_rss_growth"] == m.peak_rss_growth


def test_each_measurement_resets_the_peak(family: Family) -> None:
    family.do("hold 64")
    family.do("free")  # a peak before the measurement is not the measurement's
    with measure(family.pid) as m:
        family.do("map 1")
    assert m.peak_rss_growth is not None and m.peak_rss_growth < 8 * MiB


def test_peak_is_never_below_the_rss_walked_at_either_end(family: Family) -> None:
    with measure(family.pid) as m:
        family.do("hold 32")  # held at the end: the walk sees it even where the batched counters lag
    assert m.peak_rss is not None and m.peak_rss >= m.after.rss
    assert m.peak_rss_growth is not None and m.peak_rss_growth >= m.delta.rss_growth


def test_snapshot_reads_the_high_water_mark(family: Family) -> None:
    snap = pagewalk.snapshot(family.pid, track=("peak",))
    assert snap.peak_reset and snap.peak_rss is not None and snap.peak_rss >= snap.rss - HIGH_WATER_ERROR
    later = pagewalk.snapshot(family.pid)
    assert not later.peak_reset and (later - snap).peak_rss is not None
    assert (pagewalk.snapshot(family.pid) - later).peak_rss is None  # `later` reset nothing: no peak to report


# A measurer as root without CAP_DAC_OVERRIDE: it reads another user's page tables (CAP_SYS_PTRACE,
# CAP_DAC_READ_SEARCH) but may not write their clear_refs (mode 0200, owned by the process's user).
MEASURER = """
import json, sys
from pagewalk.measure import Measurement, NotMeasured, measure
with measure(int(sys.argv[1])) as m:
    pass
try:
    m.value("peak_rss")
    why = None
except NotMeasured as exc:
    why = str(exc)
print(json.dumps({"peak_rss": m.peak_rss, "growth": m.peak_rss_growth, "uss": m.after.uss, "why": why,
                  "notes": list(m.before.notes)}))
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv to build the case"
)
def test_peak_is_none_when_clear_refs_cannot_be_written() -> None:
    target = subprocess.Popen(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "sleep", "600"])
    try:
        # Wait until the target runs as nobody: setpriv has exec'd sleep.
        while os.stat(f"/proc/{target.pid}").st_uid == 0 or Path(f"/proc/{target.pid}/comm").read_text() != "sleep\n":
            os.sched_yield()
        result = subprocess.run(
            ["setpriv", "--bounding-set=-dac_override", "--inh-caps=-dac_override", sys.executable, "-c", MEASURER,
             str(target.pid)],
            capture_output=True,
            text=True,
            timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        assert data["uss"] > 0  # the page tables were read...
        assert data["peak_rss"] is None and data["growth"] is None  # ...but no peak, never a wrong one
        assert "clear_refs is not writable by this user" in data["why"]
        assert any("peak RSS is unknown" in note for note in data["notes"])
    finally:
        target.kill()
        target.wait()


def test_unknown_peak_names_the_reason(family: Family) -> None:
    before = pagewalk.snapshot(family.pid)  # no reset
    after = pagewalk.snapshot(family.pid)
    measurement = Measurement.from_snapshots(before, after)
    with pytest.raises(NotMeasured, match=r"Peak RSS of .* is unknown: its high-water mark was not reset"):
        measurement.assert_peak_rss_below("1 GiB")
