"""What this kernel and this user can do: privilege, kpageflags, PAGEMAP_SCAN, soft-dirty, THP. Probed once."""

from __future__ import annotations

import contextlib
import functools
import mmap
import os
import platform
import struct
from dataclasses import asdict, dataclass
from typing import Any

from . import bits
from .procfs import check_platform, status_field

__all__ = ["Capabilities", "capabilities"]

_CAP_SYS_ADMIN = 21
_MFD_CLOEXEC = 0x0001
_MFD_HUGETLB = 0x0004


@dataclass(frozen=True)
class Capabilities:
    """What pagewalk can read here, for the calling user on the running kernel."""

    kernel: str
    machine: str
    page_size: int
    euid: int
    cap_sys_admin: bool  # effective CAP_SYS_ADMIN of the caller
    pfn_visible: bool  # pagemap shows PFNs (needs CAP_SYS_ADMIN in the initial user namespace)
    kpageflags: bool  # /proc/kpageflags readable: page flag counts possible
    kpagecount: bool  # /proc/kpagecount readable: PSS possible
    kpagecgroup: bool
    pagemap_scan: bool  # the PAGEMAP_SCAN ioctl (6.7+)
    scan_categories: tuple[str, ...]  # PAGE_IS_* names the ioctl accepts
    soft_dirty: bool  # a round trip on this process proved soft-dirty works (CONFIG_MEM_SOFT_DIRTY)
    idle_page_tracking: bool  # /sys/kernel/mm/page_idle/bitmap exists and is readable
    thp_mode: str | None  # "always", "madvise", "never", or None when THP is not built in
    zero_pfn: int | None  # PFN of the shared zero page, when PFNs are visible
    # False where /proc/kpageflags marks every anonymous page KSM (seen on Debian's 6.12; the 6.10 rewrite of
    # stable_page_flags tests `mapping & PAGE_MAPPING_KSM`, true for any anonymous page); None when unreadable.
    ksm_flag_reliable: bool | None
    shmem_devices: tuple[tuple[int, int], ...]  # device numbers of the kernel's internal shmem mount
    hugetlb_devices: tuple[tuple[int, int], ...]  # ... and of the internal hugetlbfs mount(s)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _missing_pfn_file(self, readable: bool, what: str, path: str) -> str | None:
        if readable and self.pfn_visible:
            return None
        return (
            f"{what} need {path} and visible PFNs, which need CAP_SYS_ADMIN in the initial user namespace "
            "(run as root, or grant the capability)"
        )

    def missing_for_flags(self) -> str | None:
        """Why page flags cannot be read here, or None when they can."""
        return self._missing_pfn_file(self.kpageflags, "page flags", "/proc/kpageflags")

    def missing_for_pss(self) -> str | None:
        """Why PSS cannot be computed here, or None when it can."""
        return self._missing_pfn_file(self.kpagecount, "PSS and page counts", "/proc/kpagecount")

    def missing_for_cgroups(self) -> str | None:
        """Why the memory cgroup of each page cannot be read here, or None when it can."""
        return self._missing_pfn_file(self.kpagecgroup, "page cgroups", "/proc/kpagecgroup (CONFIG_MEMCG)")

    def missing_for_flag(self, name: str) -> str | None:
        """Why page flag `name` cannot be told here, beyond `missing_for_flags()`, or None when it can."""
        if name == "KSM" and self.ksm_flag_reliable is False:
            return (
                f"this kernel ({self.kernel}) marks every anonymous page KSM in /proc/kpageflags, so pages "
                "merged by KSM cannot be told apart; run on a kernel without that bug (6.1 and 6.18 are fine)"
            )
        return None

    def missing_for_soft_dirty(self) -> str | None:
        """Why pages written cannot be tracked here, or None when they can."""
        if self.soft_dirty:
            return None
        return (
            f"this kernel ({self.kernel}) does not track soft-dirty pages: it was built without "
            "CONFIG_MEM_SOFT_DIRTY (or the architecture lacks it), so pages written cannot be counted; "
            "run on a kernel with CONFIG_MEM_SOFT_DIRTY=y (most distribution kernels on x86-64 have it)"
        )


def _readable(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return len(os.pread(fd, 8, 0)) == 8
    except OSError:
        return False
    finally:
        os.close(fd)


def _word_at(fd: int, index: int) -> int | None:
    """The 8-byte word `index` of a pagemap or PFN-indexed file, or None past its end."""
    raw = os.pread(fd, 8, index * 8)
    return int(struct.unpack("<Q", raw)[0]) if len(raw) == 8 else None


def _own_entry(fd: int, address: int) -> int:
    return _word_at(fd, address // mmap.PAGESIZE) or 0


def _buffer_address(buf: mmap.mmap) -> int:
    import ctypes

    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


def _probe_pages() -> tuple[bool, int | None, bool, bool | None]:
    """(pfn_visible, zero_pfn, soft_dirty, ksm_flag_reliable), from a round trip on pages of this process."""
    page = mmap.PAGESIZE
    area = mmap.mmap(-1, 2 * page, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        address = _buffer_address(area)
        fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        try:
            area[0] = 1  # written page
            _ = area[page]  # read fault: maps the shared zero page
            written = _own_entry(fd, address)
            zero = _own_entry(fd, address + page)
            pfn_visible = bool(written & bits.PM_PFN_MASK)
            zero_pfn = zero & bits.PM_PFN_MASK if pfn_visible and zero & bits.PM_PRESENT else None
            # A plain private anonymous page, never offered to KSM: the KSM flag must be clear on it.
            flags = _kpageflags_of(written & bits.PM_PFN_MASK) if pfn_visible else None
            ksm_flag_reliable = None if flags is None else not flags >> bits.KPF_BITS["KSM"] & 1
            soft_dirty = False
            if written & bits.PM_SOFT_DIRTY:
                try:
                    with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
                        clear_refs.write("4")
                except OSError:
                    pass
                else:
                    cleared = not _own_entry(fd, address) & bits.PM_SOFT_DIRTY
                    area[0] = 2
                    soft_dirty = cleared and bool(_own_entry(fd, address) & bits.PM_SOFT_DIRTY)
        finally:
            os.close(fd)
    finally:
        with contextlib.suppress(BufferError):
            area.close()
    return pfn_visible, zero_pfn, soft_dirty, ksm_flag_reliable


def _kpageflags_of(pfn: int) -> int | None:
    try:
        fd = os.open("/proc/kpageflags", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _word_at(fd, pfn)
    except OSError:
        return None
    finally:
        os.close(fd)


def _probe_scan() -> tuple[str, ...] | None:
    """The PAGE_IS_* categories PAGEMAP_SCAN accepts, or None without the ioctl."""
    from .scan import ScanUnsupported, pagemap_scan  # here: the scan needs numpy, which importing must not load

    fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            pagemap_scan(fd, 0, 0, return_mask=bits.PAGE_IS_PRESENT)
        except (ScanUnsupported, OSError):
            return None
        accepted = []
        for name, mask in bits.SCAN_CATEGORY_NAMES.items():
            try:
                pagemap_scan(fd, 0, 0, return_mask=mask)
            except (ScanUnsupported, OSError):
                continue
            accepted.append(name)
        return tuple(accepted)
    finally:
        os.close(fd)


def _thp_mode() -> str | None:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled", encoding="ascii") as enabled:
            text = enabled.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if start >= 0 and end > start else None


def _memfd_device(flags: int) -> tuple[int, int] | None:
    # The kernel's internal shmem and hugetlbfs mounts have no path; a memfd lives on them.
    try:
        fd = os.memfd_create("pagewalk-probe", _MFD_CLOEXEC | flags)
    except (OSError, AttributeError):
        return None
    try:
        st = os.fstat(fd)
        return (os.major(st.st_dev), os.minor(st.st_dev))
    finally:
        os.close(fd)


@functools.lru_cache(maxsize=1)
def capabilities() -> Capabilities:
    """Probe, once per process, what this kernel and user allow."""
    check_platform()
    caps = int(status_field("self", "CapEff") or "0", 16)
    pfn_visible, zero_pfn, soft_dirty, ksm_flag_reliable = _probe_pages()
    scan_categories = _probe_scan()
    shmem = _memfd_device(0)
    hugetlb = _memfd_device(_MFD_HUGETLB)
    return Capabilities(
        kernel=platform.release(),
        machine=platform.machine(),
        page_size=mmap.PAGESIZE,
        euid=os.geteuid(),
        cap_sys_admin=bool(caps >> _CAP_SYS_ADMIN & 1),
        pfn_visible=pfn_visible,
        kpageflags=_readable("/proc/kpageflags"),
        kpagecount=_readable("/proc/kpagecount"),
        kpagecgroup=_readable("/proc/kpagecgroup"),
        pagemap_scan=scan_categories is not None,
        scan_categories=scan_categories or (),
        soft_dirty=soft_dirty,
        idle_page_tracking=os.access("/sys/kernel/mm/page_idle/bitmap", os.R_OK),
        thp_mode=_thp_mode(),
        zero_pfn=zero_pfn,
        ksm_flag_reliable=ksm_flag_reliable,
        shmem_devices=(shmem,) if shmem else (),
        hugetlb_devices=(hugetlb,) if hugetlb else (),
    )
