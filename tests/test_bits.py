"""Decoding pagemap entries and page flags, on synthetic words and on this process's own pages."""

from __future__ import annotations

import ctypes
import mmap
import os
import struct

import pytest

import pagewalk
from pagewalk import bits


def own_entry(address: int) -> int:
    fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:
        return int(struct.unpack("<Q", os.pread(fd, 8, address // mmap.PAGESIZE * 8))[0])
    finally:
        os.close(fd)


def test_decode_present_exclusive_entry() -> None:
    entry = bits.PM_PRESENT | bits.PM_EXCLUSIVE | bits.PM_SOFT_DIRTY | 0x1234
    decoded = bits.decode_entry(entry)
    assert decoded.present and decoded.exclusive and decoded.soft_dirty
    assert not (decoded.swapped or decoded.file_or_shared_anon or decoded.guard or decoded.uffd_wp)
    assert decoded.pfn == 0x1234
    assert decoded.swap_type is None and decoded.swap_offset is None


def test_decode_swap_entry_type_and_offset() -> None:
    entry = bits.PM_SWAP | (0x5678 << 5) | 3
    decoded = bits.decode_entry(entry)
    assert decoded.swapped and not decoded.present
    assert (decoded.swap_type, decoded.swap_offset) == (3, 0x5678)
    assert decoded.pfn is None


def test_decode_guard_and_uffd_markers() -> None:
    guard = bits.decode_entry(bits.PM_SWAP | bits.PM_GUARD)
    assert guard.guard and guard.swapped
    marker = bits.decode_entry(bits.PM_SWAP | bits.PM_UFFD_WP)
    assert marker.uffd_wp


def test_hidden_pfn_reads_as_none() -> None:
    assert bits.decode_entry(bits.PM_PRESENT | bits.PM_FILE).pfn is None
    assert bits.decode_entry(bits.PM_PRESENT | bits.PM_FILE).file_or_shared_anon


def test_every_kpf_flag_decodes() -> None:
    every = 0
    for bit in bits.ALL_KPF_BITS.values():
        every |= 1 << bit
    assert bits.decode_kpageflags(every) == frozenset(bits.ALL_KPF_BITS)
    assert bits.decode_kpageflags(1 << 22 | 1 << 12) == {"THP", "ANON"}
    assert bits.decode_kpageflags(0) == frozenset()


def test_kpf_mask_rejects_unknown_names() -> None:
    assert bits.kpf_mask(["thp", "KSM"]) == 1 << 22 | 1 << 21
    with pytest.raises(ValueError, match="unknown page flag 'HUGEPAGE'; known flags: LOCKED"):
        bits.kpf_mask(["HUGEPAGE"])


def test_real_written_and_zero_pages() -> None:
    area = mmap.mmap(-1, 2 * mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    address = ctypes.addressof(ctypes.c_char.from_buffer(area))
    area[0] = 7
    _ = area[mmap.PAGESIZE]
    written = bits.decode_entry(own_entry(address))
    zero = bits.decode_entry(own_entry(address + mmap.PAGESIZE))
    assert written.present and written.exclusive and not written.file_or_shared_anon
    assert zero.present and not zero.exclusive and not zero.file_or_shared_anon
    caps = pagewalk.capabilities()
    assert (written.pfn is not None) == caps.pfn_visible
    if caps.pfn_visible:
        assert zero.pfn == caps.zero_pfn
        assert written.pfn != zero.pfn


def test_capabilities_match_the_user() -> None:
    caps = pagewalk.capabilities()
    is_root = os.geteuid() == 0
    assert caps.euid == os.geteuid()
    assert caps.pfn_visible == (is_root and caps.cap_sys_admin)
    assert caps.kpageflags == os.access("/proc/kpageflags", os.R_OK)
    assert (caps.missing_for_flags() is None) == (caps.kpageflags and caps.pfn_visible)
    if caps.missing_for_flags():
        assert "CAP_SYS_ADMIN" in caps.missing_for_flags()  # type: ignore[operator]
    if not caps.soft_dirty:
        assert "CONFIG_MEM_SOFT_DIRTY" in caps.missing_for_soft_dirty()  # type: ignore[operator]
    if caps.pagemap_scan:
        assert {"PRESENT", "SWAPPED", "PFNZERO", "HUGE"} <= set(caps.scan_categories)
    assert caps.thp_mode in (None, "always", "madvise", "never")
