"""The command line, run as users run it: `python -m pagewalk ...` in a subprocess, against real processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import pagewalk
from pagewalk.baseline import MeasurementRecord, SessionRecord, save_record
from pagewalk.ci_reports import json_report

TARGET = (
    "import ctypes, mmap, sys\n"
    "area = mmap.mmap(-1, 64 * mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)\n"
    "for page in range(16): area[page * mmap.PAGESIZE] = 1\n"
    "print('area', hex(ctypes.addressof(ctypes.c_char.from_buffer(area))), file=sys.stderr, flush=True)\n"
    "print('ready', flush=True)\n"
    "sys.stdin.readline()\n"
    "for page in range(16, 48): area[page * mmap.PAGESIZE] = 1\n"
    "print('grown', flush=True)\n"
    "sys.stdin.readline()\n"
)


@pytest.fixture
def target() -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-c", TARGET], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    yield process
    process.kill()
    process.wait()


def pagewalk_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pagewalk", *args], capture_output=True, text=True, timeout=60)


def test_snapshot_json_has_the_documented_keys(target: subprocess.Popen[str]) -> None:
    result = pagewalk_cli("snapshot", str(target.pid), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    for key in ("pid", "rss", "uss", "pss", "swap", "regions", "anon", "file", "shmem", "thp", "zero", "hugetlb"):
        assert key in data
    assert data["pid"] == target.pid
    assert "flags" not in data
    region = data["regions"][0]
    for key in ("start", "end", "perms", "name", "kind", "rss", "uss", "swap"):
        assert key in region
    assert sum(r["uss"] for r in data["regions"]) == data["uss"]
    caps = pagewalk.capabilities()
    assert (data["pss"] is None) == (caps.missing_for_pss() is not None)


@pytest.mark.skipif(pagewalk.capabilities().missing_for_flags() is not None, reason="page flags need CAP_SYS_ADMIN")
def test_snapshot_json_with_flags(target: subprocess.Popen[str]) -> None:
    data = json.loads(pagewalk_cli("snapshot", str(target.pid), "--json", "--flags").stdout)
    assert data["flags"]["ANON"] > 16
    assert all(isinstance(pages, int) for pages in data["flags"].values())


@pytest.mark.skipif(pagewalk.capabilities().missing_for_flags() is None, reason="needs an unprivileged user")
def test_flags_without_privilege_fail_naming_the_capability(target: subprocess.Popen[str]) -> None:
    result = pagewalk_cli("snapshot", str(target.pid), "--flags")
    assert result.returncode == 1
    assert "CAP_SYS_ADMIN" in result.stderr


def test_snapshot_table(target: subprocess.Popen[str]) -> None:
    result = pagewalk_cli("snapshot", str(target.pid))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"pid {target.pid}: ")
    assert "uss " in result.stdout
    assert "[anon]" in result.stdout  # the target's touched anonymous mapping is listed


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["snapshot", "0"], 1, "positive"),
        (["snapshot", "abc"], 2, "is not a pid"),
        (["snapshot", "2"], 1, "kernel thread"),
        (["delta", "1", "--for", "-1"], 2, "not a duration"),
        (["delta", "1"], 2, "--for"),
        ([], 2, "COMMAND"),
    ],
)
def test_bad_input_exits_with_a_clear_message(args: list[str], code: int, message: str) -> None:
    result = pagewalk_cli(*args)
    assert result.returncode == code
    assert message in result.stderr


def referenced_kb(pid: int, address: str) -> int:
    """The `Referenced:` of the mapping starting at `address` (hex) in /proc/PID/smaps."""
    with open(f"/proc/{pid}/smaps") as smaps:
        inside = False
        for line in smaps:
            if "-" in line.split(" ", 1)[0]:
                inside = line.split("-", 1)[0].lstrip("0") == address.lstrip("0")
            elif inside and line.startswith("Referenced:"):
                return int(line.split()[1])
    raise AssertionError(f"no mapping at 0x{address} in process {pid}")


def test_delta_json_reports_growth(target: subprocess.Popen[str]) -> None:
    assert target.stdin is not None and target.stdout is not None
    process = subprocess.Popen(
        [sys.executable, "-m", "pagewalk", "delta", str(target.pid), "--for", "2", "--json", "--accessed"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Once the first snapshot has started tracking accesses (the area's pages no longer show referenced),
    # make the target touch 32 more pages.
    assert target.stderr is not None
    area = target.stderr.readline().split()[1][2:]
    deadline = time.monotonic() + 60
    while referenced_kb(target.pid, area) != 0:
        assert time.monotonic() < deadline, "the first snapshot did not happen"
        time.sleep(0.01)
    target.stdin.write("\n")
    target.stdin.flush()
    assert target.stdout.readline() == "grown\n"
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    data = json.loads(stdout)
    for key in ("uss_growth", "rss_growth", "written", "accessed", "flags_gained", "flags_lost", "regions"):
        assert key in data
    # The mapping the target grew, exactly; the total also moves with shared-library pages other
    # processes map and unmap meanwhile.
    grown = [region for region in data["regions"] if region["uss_growth"] == 32 * pagewalk.units.PAGE_SIZE]
    assert [region["name"] for region in grown] == ["[anon]"]
    assert data["written"] is None  # not asked for
    assert data["accessed"] >= 32 * pagewalk.units.PAGE_SIZE


def test_delta_writes_on_a_kernel_without_soft_dirty(target: subprocess.Popen[str]) -> None:
    if pagewalk.capabilities().soft_dirty:
        pytest.skip("this kernel has soft-dirty")
    result = pagewalk_cli("delta", str(target.pid), "--for", "0", "--writes")
    assert result.returncode == 1
    assert "CONFIG_MEM_SOFT_DIRTY" in result.stderr


def test_capabilities_json() -> None:
    data = json.loads(pagewalk_cli("capabilities", "--json").stdout)
    assert set(data) >= {"pfn_visible", "kpageflags", "pagemap_scan", "soft_dirty", "thp_mode"}


# Exits once the first snapshot of `delta --accessed` has cleared the referenced bit of its one touched page.
EXITS_AFTER_FIRST_SNAPSHOT = (
    "import ctypes, mmap, time\n"
    "area = mmap.mmap(-1, mmap.PAGESIZE)\n"
    "area[0] = 1\n"
    "start = '%x' % ctypes.addressof(ctypes.c_char.from_buffer(area))\n"
    "print('ready', flush=True)\n"
    "def referenced():\n"
    "    inside = False\n"
    "    for line in open('/proc/self/smaps'):\n"
    "        if '-' in line.split(' ', 1)[0]:\n"
    "            inside = line.split('-', 1)[0].lstrip('0') == start\n"
    "        elif inside and line.startswith('Referenced:'):\n"
    "            return int(line.split()[1])\n"
    "while referenced():\n"
    "    time.sleep(0.01)\n"
)


def test_delta_of_a_process_that_exits_during_the_wait() -> None:
    short = subprocess.Popen([sys.executable, "-c", EXITS_AFTER_FIRST_SNAPSHOT], stdout=subprocess.PIPE, text=True)
    assert short.stdout is not None and short.stdout.readline() == "ready\n"
    try:
        result = pagewalk_cli("delta", str(short.pid), "--for", "30", "--accessed")
    finally:
        short.wait()
    assert result.returncode == 1
    assert f"process {short.pid} exited during the measurement" in result.stderr


# --- compare ------------------------------------------------------------------------------------------------


def _record(uss: int, anon: int) -> SessionRecord:
    context = {"kernel": "6.18.0", "machine": "x86_64", "page_size": 4096}
    metrics: dict[str, int | None] = {"uss": uss, "uss_file": 0, "anon": anon, "pss": None}
    return SessionRecord(context=context, measurements=(MeasurementRecord("t::a", "t::a", "app", metrics),))


def test_compare_two_files_as_the_gate_does(tmp_path: Path) -> None:
    MiB = 1 << 20
    baseline = save_record(_record(20 * MiB, 10 * MiB), tmp_path, "base")  # a saved baseline...
    report = tmp_path / "report.json"  # ...against a JSON report from another job
    report.write_text(json.dumps(json_report(_record(30 * MiB, 20 * MiB), None)))

    failed = pagewalk_cli("compare", str(baseline), str(report), "--fail", "anon:5%")
    assert failed.returncode == 1, failed.stderr
    assert "  REGRESSED  t::a         anon    10.0 MiB  20.0 MiB  +10.0 MiB (+100.0%)  anon:5%" in failed.stdout
    assert failed.stdout.rstrip().endswith("gate: FAILED, 1 regression, exit code 1")

    listed = pagewalk_cli("compare", str(baseline), str(report))  # no threshold: every change, exit 0
    assert listed.returncode == 0 and "2 changes beyond the noise floor, no threshold set:" in listed.stdout

    markdown = pagewalk_cli("compare", str(baseline), str(report), "--fail", "anon:5%", "--markdown")
    assert markdown.returncode == 1 and markdown.stdout.startswith("## pagewalk compare\n")
    assert "| ❌ REGRESSED | `t::a` | anon | 10.0 MiB | 20.0 MiB |" in markdown.stdout

    as_json = pagewalk_cli("compare", str(baseline), str(report), "--fail", "anon:500%", "--json")
    comparison = json.loads(as_json.stdout)["comparison"]
    assert as_json.returncode == 0 and comparison["passed"] and comparison["exit_code"] == 0


def test_compare_that_cannot_gate_exits_4(tmp_path: Path) -> None:
    baseline = save_record(_record(1, 1), tmp_path, "base")
    unmeasured = pagewalk_cli("compare", str(baseline), str(baseline), "--fail", "pss:5%")
    assert unmeasured.returncode == 4
    assert "CANNOT GATE: pss is not recorded in either record for 1 measurement: t::a" in unmeasured.stdout
    missing = pagewalk_cli("compare", str(baseline), str(tmp_path / "nope.json"))
    assert missing.returncode == 4 and "nope.json: no such file" in missing.stderr
    bad = pagewalk_cli("compare", str(baseline), str(baseline), "--fail", "uss:5")
    assert bad.returncode == 2 and "has no unit" in bad.stderr
