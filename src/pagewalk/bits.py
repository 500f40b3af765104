"""Bit layouts of pagemap entries, `/proc/kpageflags` and PAGEMAP_SCAN categories, with pure decoders.

Sources: `fs/proc/task_mmu.c` (PM_*), `include/uapi/linux/kernel-page-flags.h` (KPF_*),
`include/linux/kernel-page-flags.h` (the hidden KPF bits 32-42) and `include/uapi/linux/fs.h` (PAGE_IS_*).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

__all__ = [
    "KPF_BITS",
    "KPF_HIDDEN_BITS",
    "PM_EXCLUSIVE",
    "PM_FILE",
    "PM_GUARD",
    "PM_PFN_MASK",
    "PM_PRESENT",
    "PM_SOFT_DIRTY",
    "PM_SWAP",
    "PM_UFFD_WP",
    "PageEntry",
    "decode_entry",
    "decode_kpageflags",
]

# --- /proc/PID/pagemap: one little-endian u64 per virtual page ---------------------------------------
PM_PFN_MASK = (1 << 55) - 1
PM_SWAP_TYPE_BITS = 5
PM_SOFT_DIRTY = 1 << 55
PM_EXCLUSIVE = 1 << 56  # mapped exactly once; only ever set together with PM_PRESENT
PM_UFFD_WP = 1 << 57
PM_GUARD = 1 << 58  # MADV_GUARD_INSTALL marker (6.15+); reads together with PM_SWAP
PM_FILE = 1 << 61  # file page or shared anonymous (shmem): the folio is not anon
PM_SWAP = 1 << 62  # any non-present, non-empty PTE: swap, migration and PTE markers alike
PM_PRESENT = 1 << 63

PAGEMAP_FLAG_NAMES: dict[str, int] = {
    "PRESENT": PM_PRESENT,
    "SWAP": PM_SWAP,
    "FILE": PM_FILE,
    "GUARD": PM_GUARD,
    "UFFD_WP": PM_UFFD_WP,
    "EXCLUSIVE": PM_EXCLUSIVE,
    "SOFT_DIRTY": PM_SOFT_DIRTY,
}


class PageEntry(NamedTuple):
    """One decoded pagemap entry."""

    present: bool
    swapped: bool
    file_or_shared_anon: bool
    exclusive: bool
    soft_dirty: bool
    uffd_wp: bool
    guard: bool
    pfn: int | None  # None unless present and the PFN is visible
    swap_type: int | None  # None unless swapped and the swap location is visible
    swap_offset: int | None


def decode_entry(entry: int) -> PageEntry:
    """Decode one raw pagemap entry. A zero PFN field reads as None: it is hidden without CAP_SYS_ADMIN."""
    present = bool(entry & PM_PRESENT)
    swapped = bool(entry & PM_SWAP) and not present
    frame = entry & PM_PFN_MASK
    return PageEntry(
        present=present,
        swapped=swapped,
        file_or_shared_anon=bool(entry & PM_FILE),
        exclusive=bool(entry & PM_EXCLUSIVE),
        soft_dirty=bool(entry & PM_SOFT_DIRTY),
        uffd_wp=bool(entry & PM_UFFD_WP),
        guard=bool(entry & PM_GUARD),
        pfn=frame if present and frame else None,
        swap_type=frame & ((1 << PM_SWAP_TYPE_BITS) - 1) if swapped and frame else None,
        swap_offset=frame >> PM_SWAP_TYPE_BITS if swapped and frame else None,
    )


# --- /proc/kpageflags: one u64 per PFN -----------------------------------------------------------------
KPF_BITS: dict[str, int] = {
    "LOCKED": 0,
    "ERROR": 1,
    "REFERENCED": 2,
    "UPTODATE": 3,
    "DIRTY": 4,
    "LRU": 5,
    "ACTIVE": 6,
    "SLAB": 7,
    "WRITEBACK": 8,
    "RECLAIM": 9,
    "BUDDY": 10,
    "MMAP": 11,
    "ANON": 12,
    "SWAPCACHE": 13,
    "SWAPBACKED": 14,
    "COMPOUND_HEAD": 15,
    "COMPOUND_TAIL": 16,
    "HUGE": 17,
    "UNEVICTABLE": 18,
    "HWPOISON": 19,
    "NOPAGE": 20,
    "KSM": 21,
    "THP": 22,
    "OFFLINE": 23,
    "ZERO_PAGE": 24,
    "IDLE": 25,
    "PGTABLE": 26,
}

# "Kernel hacking" bits: exported, but documented as subject to change.
KPF_HIDDEN_BITS: dict[str, int] = {
    "RESERVED": 32,
    "MLOCKED": 33,
    "OWNER_2": 34,  # PG_anon_exclusive on anon pages; PG_mappedtodisk before ~6.12
    "PRIVATE": 35,
    "PRIVATE_2": 36,
    "OWNER_PRIVATE": 37,
    "ARCH": 38,
    "UNCACHED": 39,
    "SOFTDIRTY": 40,  # never set by the kernel in kpageflags
    "ARCH_2": 41,
    "ARCH_3": 42,
}

ALL_KPF_BITS: dict[str, int] = {**KPF_BITS, **KPF_HIDDEN_BITS}


def decode_kpageflags(flags: int) -> frozenset[str]:
    """The names of the KPF bits set in one `/proc/kpageflags` entry."""
    return frozenset(name for name, bit in ALL_KPF_BITS.items() if flags >> bit & 1)


def kpf_mask(names: Iterable[str]) -> int:
    """The mask of the given KPF names; an unknown name raises `ValueError` listing the known ones."""
    mask = 0
    for name in names:
        try:
            mask |= 1 << ALL_KPF_BITS[name.upper()]
        except KeyError:
            known = ", ".join(ALL_KPF_BITS)
            raise ValueError(f"unknown page flag {name!r}; known flags: {known}") from None
    return mask


# --- PAGEMAP_SCAN ioctl (6.7+) ------------------------------------------------------------------------
PAGE_IS_WPALLOWED = 1 << 0
PAGE_IS_WRITTEN = 1 << 1
PAGE_IS_FILE = 1 << 2
PAGE_IS_PRESENT = 1 << 3
PAGE_IS_SWAPPED = 1 << 4
PAGE_IS_PFNZERO = 1 << 5
PAGE_IS_HUGE = 1 << 6
PAGE_IS_SOFT_DIRTY = 1 << 7  # 6.8+
PAGE_IS_GUARD = 1 << 8  # 6.16+

SCAN_CATEGORY_NAMES: dict[str, int] = {
    "WPALLOWED": PAGE_IS_WPALLOWED,
    "WRITTEN": PAGE_IS_WRITTEN,
    "FILE": PAGE_IS_FILE,
    "PRESENT": PAGE_IS_PRESENT,
    "SWAPPED": PAGE_IS_SWAPPED,
    "PFNZERO": PAGE_IS_PFNZERO,
    "HUGE": PAGE_IS_HUGE,
    "SOFT_DIRTY": PAGE_IS_SOFT_DIRTY,
    "GUARD": PAGE_IS_GUARD,
}

# --- marks pagewalk sets in bits 59-60, which the kernel leaves zero --------------------------------------
MARK_ZERO = 1 << 59  # the page is the shared zero page or the huge zero page
MARK_PMD = 1 << 60  # the page is part of a PMD-mapped huge page (THP or hugetlb)
PM_KERNEL_FLAGS = PM_PRESENT | PM_SWAP | PM_FILE | PM_GUARD | PM_UFFD_WP | PM_EXCLUSIVE | PM_SOFT_DIRTY

# The per-page passes read bits 56-63 of each entry (the kernel's flags and pagewalk's marks) as one byte.
TOP_SHIFT = 56


def top_bits(mask: int) -> int:
    """The bits of the entry mask `mask` that lie in bits 56-63, as a top-byte mask."""
    return mask >> TOP_SHIFT


def pmd_pages(page_size: int) -> int:
    """The pages a PMD maps, so a PMD-mapped huge page holds: a page table holds page_size / 8 entries."""
    return page_size // 8


# Synthetic per-page flags (as page-types numbers them) beside the KPF bits, for flag counts and deltas.
SYNTHETIC_FLAG_BITS: dict[str, int] = {
    "SWAPPED": 62,
    "FILE": 61,
    "MMAP_EXCLUSIVE": 63,
}

# Every per-page flag of a snapshot's `page_flags`: the KPF bits and the synthetic ones.
FLAG_BITS: dict[str, int] = {**ALL_KPF_BITS, **SYNTHETIC_FLAG_BITS}
