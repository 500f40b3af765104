"""What each mapping is: anonymous, heap, stack, file, shmem, hugetlb or special, from its maps line."""

from __future__ import annotations

from collections.abc import Collection

from .procfs import MapsEntry

__all__ = ["KINDS", "classify", "display_name"]

KINDS = ("anon", "heap", "stack", "file", "shmem", "hugetlb", "special")

_SPECIAL = frozenset({"[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]", "[uprobes]", "[sigpage]", "[vectors]"})


def classify(
    entry: MapsEntry,
    shmem_devices: Collection[tuple[int, int]],
    hugetlb_devices: Collection[tuple[int, int]],
) -> str:
    """The kind of one mapping. Device numbers tell shmem and hugetlb files from ordinary ones."""
    path = entry.path
    if path == "[heap]":
        return "heap"
    if path == "[stack]" or path.startswith("[stack:"):
        return "stack"
    if path in _SPECIAL:
        return "special"
    if path.startswith("[anon_shmem:"):
        return "shmem"
    if path == "" or path.startswith("[anon:") or (entry.is_label and entry.inode == 0):
        return "anon"
    if path == "/dev/zero" and not entry.deleted and not entry.shared:
        return "anon"  # a private mapping of /dev/zero is anonymous memory; a shared one is shmem ("(deleted)")
    if entry.dev in hugetlb_devices or (entry.deleted and path == "/anon_hugepage"):
        return "hugetlb"
    if entry.dev in shmem_devices:
        return "shmem"
    return "file"


def display_name(entry: MapsEntry) -> str:
    """The path or label of a mapping, or `[anon]` for unnamed anonymous memory."""
    if not entry.path:
        return "[anon]"
    return f"{entry.path} (deleted)" if entry.deleted else entry.path
