"""pagewalk's totals against the kernel's own accounting, one kind of memory at a time.

Each test builds memory of one kind in a puppet process (tests/puppet.py), stops the puppet and its forked
children with SIGSTOP, takes snapshots with both front ends (method="read" and method="scan"; `freeze=True`
leaves an already-stopped process stopped), reads `/proc/PID/smaps_rollup` and `/proc/PID/smaps` while
everything is still stopped, and resumes. Then, for the whole process and for every mapping:

    rss == Rss    uss == Private_Clean + Private_Dirty + Private_Hugetlb    swap == Swap
    anon == Anonymous    pss // 1024 == Pss (kB)    thp == AnonHugePages + ShmemPmdMapped + FilePmdMapped
    hugetlb == Private_Hugetlb + Shared_Hugetlb    file + shmem == Rss - Anonymous

and the two front ends must agree page by page. Finally each test checks what it built, in pages.

Other processes map the same libraries as the puppet (the test runners first of all) and change the map
counts of shared pages at any time, so a comparison counts only when smaps_rollup read the same before and
after the snapshots (PSS aside, where PSS is not compared), and a failed one is tried again; a real
difference shows the same way every time and fails the test after a few tries, with the details.

Unprivileged (CI also runs the suite as `nobody`) there are no page flags, no map counts (so no PSS) and
no PFNs; zero pages and huge mappings are then told by PAGEMAP_SCAN. Checks of flags and PSS run only where
they are readable; tests that must change the system (swap file, huge page pool, KSM) skip without root
unless the system already provides what they need.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pytest
from puppet import Mapping, Puppet, PuppetError

import pagewalk
from pagewalk import bits

if TYPE_CHECKING:  # the fixtures' types, for annotations only
    from conftest import HugetlbPages, Ksm, SwapSpace

PAGE = mmap.PAGESIZE
PMD_PAGES = PAGE // 8  # pages per PMD-mapped huge page: 512 with 4 KiB pages
CAPS = pagewalk.capabilities()
FLAGS = CAPS.missing_for_flags() is None  # kpageflags readable and PFNs visible (root)
COUNTS = CAPS.missing_for_pss() is None  # kpagecount readable: PSS
METHODS = ("read", "scan") if CAPS.pagemap_scan else ("read",)
ATTEMPTS = 20  # tries of a comparison that other processes disturb (see the module docstring)
REPEATS = 3  # the same differences this many times in a row: a real difference

needs_thp = pytest.mark.skipif(
    CAPS.thp_mode in (None, "never"), reason=f"transparent huge pages are unavailable (mode {CAPS.thp_mode})"
)
needs_scan = pytest.mark.skipif(not CAPS.pagemap_scan, reason="method='scan' needs PAGEMAP_SCAN (Linux 6.7+)")


# --- the kernel's view: smaps and smaps_rollup ---------------------------------------------------------------

_FIELD = re.compile(r"^(\w+):\s+(\d+) kB$")
_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) ")


@dataclass
class Vma:
    """One entry of /proc/PID/smaps (or the single entry of smaps_rollup), sizes in bytes."""

    start: int
    end: int
    header: str
    fields: dict[str, int]

    def __getitem__(self, name: str) -> int:
        return self.fields.get(name, 0)


def parse_smaps(text: str) -> list[Vma]:
    entries: list[Vma] = []
    for line in text.splitlines():
        if header := _HEADER.match(line):
            entries.append(Vma(int(header.group(1), 16), int(header.group(2), 16), line, {}))
        elif (field := _FIELD.match(line)) and entries:
            entries[-1].fields[field.group(1)] = int(field.group(2)) * 1024
    return entries


def read_smaps(pid: int) -> dict[int, Vma]:
    with open(f"/proc/{pid}/smaps", encoding="utf-8", errors="surrogateescape") as smaps:
        return {vma.start: vma for vma in parse_smaps(smaps.read())}


def read_rollup(pid: int) -> Vma:
    with open(f"/proc/{pid}/smaps_rollup", encoding="utf-8", errors="surrogateescape") as rollup:
        (entry,) = parse_smaps(rollup.read())
    return entry


def kernel_metrics(vma: Vma) -> dict[str, int]:
    """What pagewalk's totals should be, from the kernel's fields (pss in kB, as the kernel prints it)."""
    return {
        "rss": vma["Rss"],
        "uss": vma["Private_Clean"] + vma["Private_Dirty"] + vma["Private_Hugetlb"],
        "swap": vma["Swap"],
        "anon": vma["Anonymous"],
        "thp": vma["AnonHugePages"] + vma["ShmemPmdMapped"] + vma["FilePmdMapped"],
        "hugetlb": vma["Private_Hugetlb"] + vma["Shared_Hugetlb"],
        "file+shmem": vma["Rss"] - vma["Anonymous"],
        "pss_kb": vma["Pss"] // 1024,
    }


def pagewalk_metrics(totals: pagewalk.Totals) -> dict[str, int | None]:
    return {
        "rss": totals.rss,
        "uss": totals.uss,
        "swap": totals.swap,
        "anon": totals.anon,
        "thp": totals.thp,
        "hugetlb": totals.hugetlb,
        "file+shmem": totals.file + totals.shmem,
        "pss_kb": None if totals.pss is None else totals.pss // 1024,
    }


def differences(label: str, totals: pagewalk.Totals, vma: Vma) -> list[str]:
    expected = kernel_metrics(vma)
    if isinstance(totals, pagewalk.Region) and totals.kind == "hugetlb":
        expected["file+shmem"] = 0  # hugetlb is never in Rss; pagewalk counts it in `hugetlb` only
    found = pagewalk_metrics(totals)
    if found["pss_kb"] is None:
        del expected["pss_kb"], found["pss_kb"]
    return [
        f"{label}: {name} is {found[name]}, the kernel says {expected[name]}"
        for name in expected
        if found[name] != expected[name]
    ]


# --- one consistent look at a stopped puppet ------------------------------------------------------------------


@dataclass
class View:
    """Snapshots by each method and the kernel's smaps, all taken while the process was stopped."""

    pid: int
    snaps: dict[str, pagewalk.Snapshot]
    rollup: Vma
    smaps: dict[int, Vma]

    def regions(self, method: str, mapping: Mapping) -> list[pagewalk.Region]:
        """The regions (VMAs) inside a mapping: one, unless something split it (mlock, mprotect)."""
        found = [r for r in self.snaps[method].regions if mapping.address <= r.start and r.end <= mapping.end]
        assert found and found[0].start == mapping.address and found[-1].end == mapping.end, found
        return found

    def totals(self, method: str, mapping: Mapping) -> dict[str, int | None]:
        """The mapping's totals (summed over its regions) in pages; pss in bytes."""
        regions = self.regions(method, mapping)
        result: dict[str, int | None] = {}
        for name in ("rss", "uss", "anon", "file", "shmem", "swap", "thp", "zero", "hugetlb"):
            values = [getattr(region, name) for region in regions]
            assert None not in values, f"{name} unknown in {regions}"
            result[name] = sum(values) // PAGE
        pss = [region.pss for region in regions]
        result["pss"] = None if None in pss else sum(pss)  # type: ignore[arg-type]
        return result

    def vma(self, mapping: Mapping) -> Vma:
        return self.smaps[mapping.address]

    def flag_pages(self, method: str, name: str, mapping: Mapping | None = None) -> int:
        """Pages with page flag `name` (KPF or synthetic), in the mapping or in the whole process."""
        snap = self.snaps[method]
        assert snap.page_flags is not None
        flags = snap.page_flags
        if mapping is not None:
            inside = (snap.vpn >= np.uint64(mapping.address // PAGE)) & (snap.vpn < np.uint64(mapping.end // PAGE))
            flags = flags[inside]
        return int(np.count_nonzero((flags >> np.uint64(bits.FLAG_BITS[name])) & np.uint64(1)))

    def mapcounts(self, method: str, mapping: Mapping) -> list[int]:
        snap = self.snaps[method]
        assert snap.mapcounts is not None
        inside = (snap.vpn >= np.uint64(mapping.address // PAGE)) & (snap.vpn < np.uint64(mapping.end // PAGE))
        return [int(count) for count in snap.mapcounts[inside]]


def _checked(field: str) -> bool:
    """Whether a change of this smaps field spoils a try: PSS moves whenever another process maps or unmaps a
    shared library page, and matters only where PSS is compared."""
    return COUNTS or not field.startswith("Pss")


def _changed_vmas(before: dict[int, Vma], after: dict[int, Vma]) -> set[int]:
    """Starts of the mappings whose smaps entry changed between two reads (checked fields only)."""
    return {
        start
        for start, vma in after.items()
        if start not in before
        or {k: v for k, v in before[start].fields.items() if _checked(k)}
        != {k: v for k, v in vma.fields.items() if _checked(k)}
    }


def _totals_are_region_sums(method: str, snap: pagewalk.Snapshot) -> list[str]:
    problems = []
    for name, total in snap.metrics().items():
        values = [getattr(region, name) for region in snap.regions]
        if total is None or None in values:
            continue
        slack = len(values) if name == "pss" else 0  # the total is rounded once, each region on its own
        if abs(total - sum(values)) > slack:
            problems.append(f"{method}: total {name} {total} is not the sum of its regions' ({sum(values)})")
    return problems


def _compare(
    pid: int,
    snaps: dict[str, pagewalk.Snapshot],
    rollup: Vma,
    smaps: dict[int, Vma],
    unstable: set[int] | None = None,
) -> list[str]:
    """What differs between the snapshots and the kernel. With `unstable` (mappings that changed while they
    were read), the totals are checked as sums of the regions instead of against smaps_rollup, and those
    mappings are left out."""
    problems: list[str] = []
    for method, snap in snaps.items():
        if unstable is None:
            problems += differences(f"{method}: total", snap, rollup)
        else:
            problems += _totals_are_region_sums(method, snap)
        starts = {region.start for region in snap.regions}
        if starts != set(smaps):
            problems.append(f"{method}: regions {sorted(starts ^ set(smaps))} only in one of pagewalk and smaps")
        for region in snap.regions:
            vma = smaps.get(region.start)
            if vma is None or (unstable and region.start in unstable):
                continue
            label = f"{method}: {region.name} {region.start:x}-{region.end:x} ({region.kind})"
            if vma.end != region.end:
                problems.append(f"{label}: ends at {region.end:x}, smaps says {vma.end:x}")
            problems += differences(label, region, vma)
    methods = list(snaps)
    for other in methods[1:]:
        first, second = snaps[methods[0]], snaps[other]
        if unstable is None:
            if not (np.array_equal(first.vpn, second.vpn) and np.array_equal(first.entries, second.entries)):
                problems.append(f"{methods[0]} and {other} read different pages or entries")
            if first.metrics() != second.metrics() or first.regions != second.regions:
                problems.append(f"{methods[0]} and {other} disagree: {first.metrics()} != {second.metrics()}")
            continue
        # The methods read one after the other, so the file mappings that moved meanwhile may differ.
        kept = [(a, b) for a, b in zip(first.regions, second.regions, strict=False) if a.kind != "file"]
        if len(first.regions) != len(second.regions) or any(a != b for a, b in kept):
            problems.append(f"{methods[0]} and {other} disagree on the mappings other than files")
        if not np.array_equal(*(_entries_outside_files(snap) for snap in (first, second))):
            problems.append(f"{methods[0]} and {other} read different pages or entries outside file mappings")
    return problems


def _entries_outside_files(snap: pagewalk.Snapshot) -> np.ndarray:
    """(virtual page, entry) pairs of the snapshot's pages outside file mappings."""
    vpn = snap.vpn
    outside = np.ones(len(vpn), dtype=bool)
    for region in snap.regions:
        if region.kind == "file":
            outside &= (vpn < np.uint64(region.start // PAGE)) | (vpn >= np.uint64(region.end // PAGE))
    return np.stack([vpn[outside], snap.entries[outside]])


def look(puppet: Puppet, pid: int | None = None, *, methods: Iterable[str] = METHODS) -> View:
    """Stop the puppet (and its children), snapshot `pid` by each method, read smaps, resume; compare.

    A try counts only when smaps_rollup read the same before and after the snapshots. When half of the
    `ATTEMPTS` could not count that way (other processes kept mapping and unmapping the same library pages),
    a try counts when only file mappings changed, checking the other mappings against smaps. Fails the test
    when the same differences show on `REPEATS` counted tries in a row (a real difference), or when no try
    agrees.
    """
    pid = puppet.pid if pid is None else pid
    methods = tuple(methods)
    problems: list[str] = []
    repeats = 0
    for attempt in range(ATTEMPTS):
        with puppet.stopped():
            before = read_rollup(pid)
            smaps_before = read_smaps(pid)
            snaps = {m: pagewalk.snapshot(pid, flags=FLAGS, counts=COUNTS, method=m) for m in methods}  # type: ignore[arg-type]
            smaps = read_smaps(pid)
            rollup = read_rollup(pid)
        for method, snap in snaps.items():
            assert snap.frozen and snap.method == method and snap.pid == pid
            assert (snap.flag_counts is not None) == FLAGS and (snap.pss is not None) == COUNTS
            if snap.zero is None or snap.thp is None:  # documented: rss may then include zero pages
                pytest.skip(f"pagewalk cannot tell zero pages or huge mappings here: {'; '.join(snap.notes)}")
        changed = {k: (before[k], rollup[k]) for k in sorted(before.fields) if _checked(k) and before[k] != rollup[k]}
        unstable = _changed_vmas(smaps_before, smaps) if changed else None
        kinds = {region.start: region.kind for region in next(iter(snaps.values())).regions}
        if changed and (attempt < ATTEMPTS // 2 or any(kinds.get(start) != "file" for start in unstable or ())):
            problems, repeats = [f"smaps_rollup changed while the process was stopped: {changed}"], 0
        else:
            found = _compare(pid, snaps, rollup, smaps, unstable)
            if not found:
                return View(pid, snaps, rollup, smaps)
            repeats = repeats + 1 if found == problems else 1
            problems = found
            if repeats >= REPEATS:
                break
        time.sleep(min(0.02 * (attempt + 1), 0.25))
    pytest.fail(f"pagewalk disagrees with smaps (pid {pid}, {attempt + 1} tries); the last:\n" + "\n".join(problems))


def expect(view: View, mapping: Mapping, *, pss: int | None = None, **pages: int) -> None:
    """Assert a mapping's totals, in pages (pss in bytes); totals not named must be 0."""
    wanted = dict.fromkeys(("rss", "uss", "anon", "file", "shmem", "swap", "thp", "zero", "hugetlb"), 0)
    wanted.update(pages)
    for method in view.snaps:
        found = view.totals(method, mapping)
        found_pss = found.pop("pss")
        assert found == wanted, f"{method}: {found} != {wanted}"
        if COUNTS and pss is not None:
            assert found_pss == pss, f"{method}: pss {found_pss} != {pss}"


def pss_of(*groups: tuple[int, int]) -> int:
    """The kernel's PSS in bytes of (pages, map count) groups: PAGE/count each, summed in 12-bit fixed point."""
    return sum(pages * ((PAGE << 12) // count) for pages, count in groups) >> 12


def raw_entries(pid: int, mapping: Mapping) -> list[int]:
    """The mapping's pagemap entries, read directly (an oracle independent of pagewalk)."""
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        data = os.pread(fd, mapping.pages * 8, mapping.address // PAGE * 8)
    finally:
        os.close(fd)
    return list(struct.unpack(f"<{len(data) // 8}Q", data))


# --- the tests ----------------------------------------------------------------------------------------------


def test_bare_interpreter(puppet: Puppet) -> None:
    """The puppet as started (an interpreter, its libraries and heap) already matches smaps everywhere."""
    view = look(puppet)
    for snap in view.snaps.values():
        assert snap.rss > 0 and snap.uss > 0 and snap.anon > 0 and snap.file > 0
        if FLAGS:
            assert sum(snap.flag_counts.values()) > 0  # type: ignore[union-attr]


def test_private_anonymous(puppet: Puppet) -> None:
    """Written pages of a private anonymous mapping: resident, anonymous, private (in USS), PSS whole."""
    area = puppet.map(64)
    puppet.write(area, range(40))
    view = look(puppet)
    expect(view, area, rss=40, uss=40, anon=40, pss=40 * PAGE)
    assert view.vma(area)["Private_Dirty"] == 40 * PAGE
    if FLAGS:
        for method in view.snaps:
            assert view.flag_pages(method, "ANON", area) == 40
            assert view.flag_pages(method, "MMAP_EXCLUSIVE", area) == 40
    if COUNTS:
        assert set(view.mapcounts("read", area)) == {1}


def test_zero_page(puppet: Puppet) -> None:
    """Read faults on private anonymous memory map the shared zero page.

    pagemap shows those pages present (PRESENT only: no FILE, no EXCLUSIVE), but the kernel leaves them out
    of Rss and every other smaps total (`vm_normal_page()` is NULL for the zero PFN). pagewalk does the same
    and counts them in `zero` (PAGE_IS_PFNZERO; as root also the zero PFN). Their kpagecount is 0, so they
    add nothing to PSS. A write replaces the zero page with a private page.
    """
    area = puppet.map(64)
    puppet.read(area)
    puppet.write(area, range(8))
    view = look(puppet)
    expect(view, area, rss=8, uss=8, anon=8, zero=56, pss=8 * PAGE)
    entries = raw_entries(puppet.pid, area)
    assert all(entry & bits.PM_PRESENT and not entry & bits.PM_FILE for entry in entries)
    if FLAGS:
        for method in view.snaps:
            assert view.flag_pages(method, "ZERO_PAGE", area) == 56
    if COUNTS:
        assert view.mapcounts("read", area) == [1] * 8 + [0] * 56


def _use_zero_page() -> bool:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/use_zero_page", encoding="ascii") as file:
            return file.read().strip() == "1"
    except OSError:
        return False


def _huge_zero_entries(pid: int, mapping: Mapping) -> int:
    """Entries that read PRESENT|FILE in anonymous memory: the huge zero page's signature in pagemap."""
    return sum(1 for entry in raw_entries(pid, mapping) if entry & bits.PM_PRESENT and entry & bits.PM_FILE)


@needs_thp
def test_huge_zero_page(puppet: Puppet) -> None:
    """Read faults on a MADV_HUGEPAGE area map the huge zero page (with use_zero_page=1), one per PMD.

    pagemap reads its 512 entries as PRESENT|FILE (the huge zero folio is not anonymous), PAGEMAP_SCAN as
    PFNZERO|HUGE, kpageflags as ZERO_PAGE|THP. The kernel counts none of it: not in Rss, AnonHugePages or
    FilePmdMapped. pagewalk counts it in `zero` only: not in rss, file or thp.
    """
    area = puppet.map(2 * PMD_PAGES, thp=True)
    puppet.madvise(area, "HUGEPAGE")
    puppet.read(area)
    view = look(puppet)
    expect(view, area, zero=2 * PMD_PAGES, pss=0)
    huge = _huge_zero_entries(puppet.pid, area)
    if huge == 0:
        pytest.skip(f"no huge zero page formed (use_zero_page={int(_use_zero_page())}): small zero pages checked")
    assert huge == 2 * PMD_PAGES
    if FLAGS:
        for method in view.snaps:
            assert view.flag_pages(method, "ZERO_PAGE", area) == 2 * PMD_PAGES
            assert view.flag_pages(method, "THP", area) == 2 * PMD_PAGES


@needs_thp
@pytest.mark.parametrize(
    "method",
    [
        "read",
        pytest.param("scan", marks=needs_scan),
    ],
)
def test_huge_zero_page_in_private_dev_zero_mapping(puppet: Puppet, method: str) -> None:
    """A private mapping of /dev/zero is anonymous memory under a file name, and can map the huge zero page.

    The kernel counts it as for any anonymous mapping (no Rss for the huge zero page).
    """
    area = puppet.map(2 * PMD_PAGES, path="/dev/zero", thp=True)
    puppet.madvise(area, "HUGEPAGE")
    puppet.read(area)
    if _huge_zero_entries(puppet.pid, area) == 0:
        pytest.skip("no huge zero page formed")
    view = look(puppet, methods=[method])
    expect(view, area, zero=2 * PMD_PAGES, pss=0)


def _ensure_thp(puppet: Puppet, mapping: Mapping, blocks: int) -> None:
    """Make sure `blocks` PMDs of the mapping are THPs (MADV_COLLAPSE if the fault did not), or skip."""
    for attempt in range(3):
        if read_smaps(puppet.pid)[mapping.address]["AnonHugePages"] >= blocks * PMD_PAGES * PAGE:
            return
        try:
            puppet.madvise(mapping, "COLLAPSE")
        except PuppetError:
            time.sleep(0.1 * (attempt + 1))
    pytest.skip("the kernel could not allocate transparent huge pages here")


@needs_thp
def test_transparent_huge_pages(puppet: Puppet) -> None:
    """Written MADV_HUGEPAGE memory, 2 MiB-aligned, is mapped by PMDs: thp == AnonHugePages.

    `thp` counts pages mapped by a PMD, as AnonHugePages does. kpageflags' THP flag marks every page of a
    large folio: after MADV_DONTNEED on part of one PMD the kernel maps the rest of that folio with PTEs
    (not in AnonHugePages, not in thp), while the folio stays large, and its pages flagged THP, until the
    deferred split runs.
    """
    size = 3 * PMD_PAGES
    area = puppet.map(size, thp=True)
    puppet.madvise(area, "HUGEPAGE")
    puppet.write(area)
    _ensure_thp(puppet, area, 3)
    view = look(puppet)
    expect(view, area, rss=size, uss=size, anon=size, thp=size, pss=size * PAGE)
    assert view.vma(area)["AnonHugePages"] == size * PAGE
    if FLAGS:
        for method, snap in view.snaps.items():
            assert view.flag_pages(method, "THP", area) == size
            assert view.flag_pages(method, "COMPOUND_HEAD", area) == 3
            assert snap.flag_counts["THP"] == view.flag_pages(method, "THP")  # type: ignore[index]

    # khugepaged would otherwise collapse the hole back into a huge page before the next look (seen under load).
    puppet.madvise(area, "NOHUGEPAGE")
    puppet.madvise(area, "DONTNEED", range(PMD_PAGES, PMD_PAGES + 16))
    view = look(puppet)
    left = size - 16
    expect(view, area, rss=left, uss=left, anon=left, thp=2 * PMD_PAGES, pss=left * PAGE)
    if FLAGS:
        for method in view.snaps:
            assert 2 * PMD_PAGES <= view.flag_pages(method, "THP", area) <= left


def _fork_over_thp(puppet: Puppet) -> tuple[Mapping, int]:
    area = puppet.map(PMD_PAGES, thp=True)
    puppet.madvise(area, "HUGEPAGE")
    puppet.write(area)
    _ensure_thp(puppet, area, 1)
    return area, puppet.fork()


@needs_thp
def test_thp_shared_after_fork(puppet: Puppet) -> None:
    """After fork a THP is PMD-mapped in both processes: thp in each, not in USS, PSS half.

    A write in the parent then splits the parent's PMD and copies that one page: the parent's thp drops to
    0 (its other 511 pages, now mapped by PTEs, stay shared with the child).
    """
    area, child = _fork_over_thp(puppet)
    for pid in (puppet.pid, child):
        view = look(puppet, pid)
        expect(view, area, rss=PMD_PAGES, anon=PMD_PAGES, thp=PMD_PAGES, pss=pss_of((PMD_PAGES, 2)))
    puppet.write(area, [0])
    view = look(puppet)
    expect(view, area, rss=PMD_PAGES, uss=1, anon=PMD_PAGES, pss=pss_of((1, 1), (PMD_PAGES - 1, 2)))


@needs_thp
@pytest.mark.skipif(
    not COUNTS,
    reason="pagemap gives every subpage of a PMD-mapped THP the head page's exclusivity (Linux 6.15+); "
    "only kpagecount (root) can correct it",
)
def test_thp_partly_shared_pmd_mapping(puppet: Puppet) -> None:
    """The child's THP after the parent copied page 0: still PMD-mapped in the child, where page 0 is now
    mapped once (private) and pages 1-511 twice (shared with the parent's PTEs).

    smaps: Private 4 kB, AnonHugePages 2 MiB.
    """
    area, child = _fork_over_thp(puppet)
    puppet.write(area, [0])
    view = look(puppet, child)
    pss = pss_of((1, 1), (PMD_PAGES - 1, 2))
    expect(view, area, rss=PMD_PAGES, uss=1, anon=PMD_PAGES, thp=PMD_PAGES, pss=pss)


def test_file_backed(puppet: Puppet, tmp_path: os.PathLike[str]) -> None:
    """Page cache of a regular file, mapped three times by one process.

    A file page is private while one mapping maps it, and shared (not in USS, PSS half) once two mappings
    of the same process map it. A write to a private file mapping copies the page: anonymous memory inside
    a file region.
    """
    path = os.path.join(tmp_path, "data")
    with open(path, "wb") as file:
        file.write(os.urandom(64 * PAGE))
    whole = puppet.map(64, path=path, prot="r")
    puppet.read(whole)
    shared = puppet.map(16, path=path, shared=True)
    puppet.write(shared, range(8))  # file pages 0-7, now mapped twice
    private = puppet.map(16, path=path, offset=16)
    puppet.write(private, range(4))  # copies of file pages 16-19
    puppet.read(private, range(4, 16))  # file pages 20-31, now mapped twice
    view = look(puppet)
    expect(view, whole, rss=64, uss=44, file=64, pss=pss_of((44, 1), (20, 2)))
    expect(view, shared, rss=8, file=8, pss=pss_of((8, 2)))
    expect(view, private, rss=16, uss=4, anon=4, file=12, pss=pss_of((4, 1), (12, 2)))
    for method in view.snaps:
        assert {r.kind for m in (whole, shared, private) for r in view.regions(method, m)} == {"file"}
        if FLAGS:
            assert view.flag_pages(method, "FILE", whole) == 64
            assert view.flag_pages(method, "ANON", private) == 4
            assert view.flag_pages(method, "MMAP_EXCLUSIVE", whole) == 44


def test_shared_anonymous(puppet: Puppet) -> None:
    """MAP_SHARED|MAP_ANONYMOUS memory is shmem: resident, not Anonymous; a read allocates a real page."""
    area = puppet.map(64, shared=True)
    puppet.write(area, range(32))
    puppet.read(area, range(32, 48))
    view = look(puppet)
    expect(view, area, rss=48, uss=48, shmem=48, pss=48 * PAGE)
    for method in view.snaps:
        assert [r.kind for r in view.regions(method, area)] == ["shmem"]
        if FLAGS:
            assert view.flag_pages(method, "FILE", area) == 48
            assert view.flag_pages(method, "SWAPBACKED", area) == 48
            assert view.flag_pages(method, "ANON", area) == 0


def test_copy_on_write_after_fork(puppet: Puppet) -> None:
    """After fork, pages are shared: in neither process's USS, half in each one's PSS.

    Fork copies the page tables of private mappings only; the child maps a shared (shmem) mapping's pages
    when it touches them, so it reads them first here. A write in the parent then copies the page: each
    process has a private copy again.
    """
    private = puppet.map(64)
    puppet.write(private)
    shared = puppet.map(32, shared=True)
    puppet.write(shared)
    child = puppet.fork(touch=[shared])
    for pid in (puppet.pid, child):
        view = look(puppet, pid)
        expect(view, private, rss=64, anon=64, pss=pss_of((64, 2)))
        expect(view, shared, rss=32, shmem=32, pss=pss_of((32, 2)))
        if COUNTS:
            assert set(view.mapcounts("read", private)) == {2}
        if FLAGS:
            assert view.flag_pages("read", "MMAP_EXCLUSIVE", private) == 0
    puppet.write(private, range(16))
    for pid in (puppet.pid, child):
        view = look(puppet, pid)
        expect(view, private, rss=64, uss=16, anon=64, pss=pss_of((16, 1), (48, 2)))
        expect(view, shared, rss=32, shmem=32, pss=pss_of((32, 2)))


def test_mlocked(puppet: Puppet) -> None:
    """mlock leaves the totals as they were, flags the pages UNEVICTABLE and MLOCKED, adds to Locked.

    mlock splits the VMA at the locked range; mlock of untouched memory faults every page in (written, so
    real pages, not the zero page).
    """
    with puppet.pinned():  # so the kernel's LRU batches drain where they filled: UNEVICTABLE is set by return
        area = puppet.map(64)
        puppet.write(area)
        puppet.mlock(area, range(32))
        fresh = puppet.map(16)
        puppet.mlock(fresh)
    view = look(puppet)
    expect(view, area, rss=64, uss=64, anon=64, pss=64 * PAGE)
    expect(view, fresh, rss=16, uss=16, anon=16, pss=16 * PAGE)
    assert view.rollup["Locked"] == 48 * PAGE
    for method, snap in view.snaps.items():
        assert len(view.regions(method, area)) == 2
        if FLAGS:
            assert snap.flag_counts["UNEVICTABLE"] == 48  # type: ignore[index]
            assert snap.flag_counts["MLOCKED"] == 48  # type: ignore[index]
            assert view.flag_pages(method, "UNEVICTABLE", fresh) == 16


@pytest.mark.system
def test_ksm_merged(ksm: Ksm, puppet: Puppet) -> None:
    """KSM merges identical MADV_MERGEABLE pages into one page mapped many times.

    48 identical pages become one KSM page with map count 48: shared, so in neither the kernel's
    Private_* nor pagewalk's USS; PSS gives each mapping PAGE/48 (floored in 12-bit fixed point), so the
    48 weigh one page. They stay resident and Anonymous. The 16 pages with distinct content stay private.
    """
    area = puppet.map(64)
    puppet.madvise(area, "MERGEABLE")
    puppet.fill(area, range(48), value=0x5A)
    puppet.write(area, range(48, 64))
    ksm.use_zero_pages(False)
    ksm.wait(puppet.pid, 48)
    view = look(puppet)
    expect(view, area, rss=64, uss=16, anon=64, pss=pss_of((16, 1), (48, 48)))
    assert view.vma(area)["KSM"] == 48 * PAGE
    if FLAGS:
        for method, snap in view.snaps.items():
            assert snap.flag_counts["KSM"] == 48  # type: ignore[index]
            assert view.flag_pages(method, "MMAP_EXCLUSIVE", area) == 16
    if COUNTS:
        assert view.mapcounts("read", area) == [48] * 48 + [1] * 16


@pytest.mark.system
def test_ksm_zero_pages(ksm: Ksm, puppet: Puppet) -> None:
    """With use_zero_pages=1, KSM maps zero-filled mergeable pages to the shared zero page.

    They leave Rss (no KSM page, no map count) as any zero page does: pagewalk counts them in `zero`.
    """
    ksm.use_zero_pages(True)
    area = puppet.map(64)
    puppet.madvise(area, "MERGEABLE")
    puppet.fill(area, range(48), value=0)
    puppet.write(area, range(48, 64))
    ksm.wait(puppet.pid, 48, "ksm_zero_pages")
    view = look(puppet)
    expect(view, area, rss=16, uss=16, anon=16, zero=48, pss=16 * PAGE)
    assert view.vma(area)["KSM"] == 0
    if FLAGS:
        for method in view.snaps:
            assert view.flag_pages(method, "ZERO_PAGE", area) == 48
            assert view.flag_pages(method, "KSM", area) == 0


def page_out(puppet: Puppet, mapping: Mapping, pages: range, *, field: str = "Swap") -> None:
    """MADV_PAGEOUT until the kernel shows the pages swapped (pages on another CPU's LRU batch may resist)."""
    wanted = len(pages) * PAGE
    for attempt in range(20):
        puppet.madvise(mapping, "PAGEOUT", pages)
        if (swapped := read_smaps(puppet.pid)[mapping.address][field]) >= wanted:
            return
        time.sleep(0.02 * (attempt + 1))
    pytest.skip(f"MADV_PAGEOUT swapped out only {swapped} of {wanted} bytes")


@pytest.mark.system
def test_swapped_out(swap_space: SwapSpace, puppet: Puppet) -> None:
    """MADV_PAGEOUT swaps private pages out: swap == Swap, out of rss and uss; guard markers are not swap.

    Read back, a page comes in through the swap cache (its refcount is then 2, its map count 1): the kernel
    counts it private by map count, as pagewalk does.
    """
    area = puppet.map(64)
    puppet.write(area, range(56))
    guards = True
    try:
        puppet.madvise(area, "GUARD_INSTALL", range(56, 64))
    except PuppetError as exc:
        if exc.errno != 22:
            raise
        guards = False  # before Linux 6.13
    page_out(puppet, area, range(48))
    view = look(puppet)
    expect(view, area, rss=8, uss=8, anon=8, swap=48, pss=8 * PAGE)
    if FLAGS:
        for snap in view.snaps.values():
            assert snap.flag_counts["SWAPPED"] == 48  # type: ignore[index]
    entries = raw_entries(puppet.pid, area)
    assert all(entry & bits.PM_SWAP and not entry & bits.PM_GUARD for entry in entries[:48])
    assert not guards or all(entry & bits.PM_GUARD for entry in entries[56:])

    puppet.read(area, range(8))
    view = look(puppet)
    expect(view, area, rss=16, uss=16, anon=16, swap=40, pss=16 * PAGE)
    if FLAGS:
        for snap in view.snaps.values():
            assert snap.flag_counts["SWAPPED"] == 40  # type: ignore[index]


BUG_SHMEM_SWAP = (
    "pagewalk limitation: swapped-out shmem pages leave no PTE (pte_none), so pagemap cannot show them, "
    "while smaps counts them in Swap (shmem_swap_usage)"
)


@pytest.mark.system
@pytest.mark.xfail(strict=True, reason=BUG_SHMEM_SWAP)
def test_swapped_out_shmem(swap_space: SwapSpace, puppet: Puppet) -> None:
    """Shared anonymous (shmem) pages paged out: smaps shows them in Swap."""
    area = puppet.map(64, shared=True)
    puppet.write(area)
    page_out(puppet, area, range(32))
    view = look(puppet)
    expect(view, area, rss=32, uss=32, shmem=32, swap=32, pss=32 * PAGE)


@pytest.mark.system
def test_hugetlb(hugetlb_pages: HugetlbPages, puppet: Puppet) -> None:
    """hugetlb pages are never in Rss or Pss, but in Private_Hugetlb (USS) or Shared_Hugetlb.

    pagewalk counts them in `hugetlb`, and in `uss` while mapped once; after fork the private mapping's
    pages are shared copy-on-write and the shared mapping's are mapped by both (once the child touches
    them), so they leave USS in both processes.
    """
    huge = hugetlb_pages.size // PAGE
    private = puppet.map(2 * huge, hugetlb=True)
    puppet.write(private, [0, huge])
    shared = puppet.map(huge, hugetlb=True, shared=True)
    puppet.write(shared, [0])
    view = look(puppet)
    expect(view, private, uss=2 * huge, hugetlb=2 * huge, pss=0)
    expect(view, shared, uss=huge, hugetlb=huge, pss=0)
    assert view.rollup["Private_Hugetlb"] == 3 * huge * PAGE
    for method, snap in view.snaps.items():
        assert {r.kind for m in (private, shared) for r in view.regions(method, m)} == {"hugetlb"}
        assert snap.hugetlb == 3 * huge * PAGE
        if FLAGS:
            assert view.flag_pages(method, "HUGE", private) == 2 * huge
    child = puppet.fork(touch=[shared])
    for pid in (puppet.pid, child):
        view = look(puppet, pid)
        expect(view, private, hugetlb=2 * huge, pss=0)
        expect(view, shared, hugetlb=huge, pss=0)
        assert view.rollup["Shared_Hugetlb"] == 3 * huge * PAGE


def test_guard_regions(puppet: Puppet) -> None:
    """MADV_GUARD_INSTALL (Linux 6.13+) replaces pages with guard markers, which hold no memory.

    pagemap reads a guard marker as PM_SWAP|PM_GUARD and PAGEMAP_SCAN as SWAPPED, yet smaps counts nothing
    for it: pagewalk must not count guard pages as swap (nor as resident).
    """
    area = puppet.map(64)
    puppet.write(area)
    try:
        puppet.madvise(area, "GUARD_INSTALL", range(16, 32))
    except PuppetError as exc:
        if exc.errno == 22:
            pytest.skip("MADV_GUARD_INSTALL needs Linux 6.13+")
        raise
    view = look(puppet)
    expect(view, area, rss=48, uss=48, anon=48, pss=48 * PAGE)
    entries = raw_entries(puppet.pid, area)
    assert all(entry & bits.PM_GUARD and entry & bits.PM_SWAP for entry in entries[16:32])
    for method, snap in view.snaps.items():
        assert snap.swap == 0
        if FLAGS:
            assert view.flag_pages(method, "SWAPPED", area) == 0


def test_uffd_wp_markers_are_not_swap(puppet: Puppet) -> None:
    """userfaultfd write protection of unpopulated memory (WP_UNPOPULATED, Linux 6.4+) leaves PTE markers.

    Like guard markers they are non-present, non-empty PTEs: no memory, no swap.
    """
    area = puppet.map(64)
    puppet.write(area, range(16))
    try:
        puppet.uffd_wp(area)
    except PuppetError as exc:
        pytest.skip(f"userfaultfd write protection is unavailable: {exc}")
    entries = raw_entries(puppet.pid, area)
    if not all(entry & bits.PM_SWAP and entry & bits.PM_UFFD_WP for entry in entries[16:]):
        pytest.skip("this kernel left no uffd-wp markers on unpopulated pages")
    view = look(puppet)
    expect(view, area, rss=16, uss=16, anon=16, pss=16 * PAGE)


def test_noreserve_reservation(puppet: Puppet) -> None:
    """A 64 GiB MAP_NORESERVE reservation with a few pages touched.

    method='read' reads its 16 Mi pagemap entries, method='scan' asks PAGEMAP_SCAN for the populated ranges
    first: both must find the same pages and agree with smaps.
    """
    pages = (64 << 30) // PAGE
    area = puppet.map(pages, noreserve=True)
    written = sorted(
        {0, 1, 511, 512, 513, pages // 2, pages - 2, pages - 1} | {i * (pages // 40) + 7 for i in range(40)}
    )
    zeros = [2, 3, pages // 3, pages - 3]
    assert not set(zeros) & set(written)
    puppet.write(area, written)
    puppet.read(area, zeros)
    view = look(puppet)
    n = len(written)
    expect(view, area, rss=n, uss=n, anon=n, zero=len(zeros), pss=n * PAGE)
    assert view.vma(area).end - view.vma(area).start == 64 << 30
    for snap in view.snaps.values():
        inside = (snap.vpn >= np.uint64(area.address // PAGE)) & (snap.vpn < np.uint64(area.end // PAGE))
        assert (snap.vpn[inside] - np.uint64(area.address // PAGE)).tolist() == sorted(written + zeros)
