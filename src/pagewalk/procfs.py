"""The one place that opens `/proc`: errors translated once, at the edge; maps parsing; freezing.

Every OS error met while reading a process is turned into the library's own errors here, with the pid and
a message that says what to do.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from .errors import AccessDenied, InvalidPid, NoAddressSpace, PagewalkError, ProcessGone, Unsupported

__all__ = [
    "MapsEntry",
    "check_pid",
    "open_proc",
    "parent_pids",
    "parse_maps",
    "read_maps",
    "read_proc_text",
    "translate_os_error",
]

PROC = "/proc"
_PF_KTHREAD = 0x00200000  # task flag of kernel threads (include/linux/sched.h)

T = TypeVar("T")


def check_platform() -> None:
    """Raise `Unsupported` unless this is Linux with a mounted `/proc`."""
    if not sys.platform.startswith("linux"):
        raise Unsupported(f"pagewalk reads Linux page tables; this platform is {sys.platform!r}")
    _check_proc_mounted()


@functools.cache  # a check that passed holds for good; one that raised is made again
def _check_proc_mounted() -> None:
    if not os.path.exists(f"{PROC}/self/pagemap"):
        raise Unsupported("/proc/self/pagemap is missing: mount procfs (mount -t proc proc /proc)")


def check_pid(pid: object) -> int:
    """Validate a pid given by a caller and return it as an int."""
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise InvalidPid(f"pid must be an int, not {type(pid).__name__} ({pid!r})")
    if pid <= 0:
        raise InvalidPid(f"pid must be a positive int, got {pid}", pid)
    return pid


def _describe_missing(pid: int) -> PagewalkError:
    return ProcessGone(f"process {pid} does not exist (or exited while being read)", pid)


_PF_EXITING = 0x00000004  # task flag of a task that is exiting (include/linux/sched.h)


def is_leaving(pid: int) -> bool:
    """Whether `pid` is gone, a zombie, or exiting: what an EINVAL from its /proc files means then."""
    try:
        with open(f"{PROC}/{pid}/stat", encoding="utf-8", errors="surrogateescape") as stat:
            fields = _stat_fields(stat.read())
    except OSError:
        return True
    return fields[0] in ("Z", "X") or bool(int(fields[6]) & _PF_EXITING)


def translate_os_error(exc: OSError, pid: int, what: str) -> PagewalkError:
    """Map an OS error met while reading `what` of process `pid` to the library's error."""
    if exc.errno in (errno.ENOENT, errno.ESRCH):
        return _describe_missing(pid)
    # EINVAL: a file whose task (or namespace) went mid-read. EACCES: /proc of a process that has dropped its
    # memory belongs to root, so an exiting process denies what it allowed a moment before.
    if exc.errno in (errno.EINVAL, errno.EACCES, errno.EPERM) and is_leaving(pid):
        return ProcessGone(f"process {pid} exited while {what} was being read", pid)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return AccessDenied(
            f"not allowed to read {what} of process {pid}: run as the process's owner with ptrace access "
            "(kernel.yama.ptrace_scope=0, or CAP_SYS_PTRACE), or as root",
            pid,
        )
    return PagewalkError(f"reading {what} of process {pid} failed: {exc}", pid)


def call(pid: int, what: str, func: Callable[[], T]) -> T:
    """Run `func`, translating an `OSError` into the library's errors for process `pid`."""
    try:
        return func()
    except OSError as exc:
        raise translate_os_error(exc, pid, what) from exc


def open_proc(pid: int | str, name: str, flags: int = os.O_RDONLY) -> int:
    """Open `/proc/PID/NAME` and return the fd, translating errors."""
    path = f"{PROC}/{pid}/{name}"
    numeric = pid if isinstance(pid, int) else os.getpid()
    return call(numeric, path, lambda: os.open(path, flags | os.O_CLOEXEC))


def read_proc_text(pid: int | str, name: str) -> str:
    """Read a whole `/proc/PID/NAME` text file."""
    fd = open_proc(pid, name)
    numeric = pid if isinstance(pid, int) else os.getpid()
    try:
        chunks = []
        while True:
            chunk = call(numeric, f"/proc/{pid}/{name}", lambda: os.read(fd, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "surrogateescape")


# --- process state ------------------------------------------------------------------------------------


def _stat(pid: int) -> list[str]:
    """The fields of `/proc/PID/stat` after the command (the state is the first)."""
    return _stat_fields(read_proc_text(pid, "stat"))


def _stat_fields(text: str) -> list[str]:
    # The comm field may hold spaces and parentheses: split after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def process_state(pid: int) -> tuple[str, int]:
    """The one-letter state and the task flags of a process, from `/proc/PID/stat`."""
    fields = _stat(pid)
    return fields[0], int(fields[6])


def parent_pids() -> dict[int, int]:
    """pid -> parent pid of every process visible in `/proc` (processes that exit meanwhile are skipped)."""
    parents = {}
    for name in os.listdir(PROC):
        if not name.isdigit():
            continue
        try:
            with open(f"{PROC}/{name}/stat", "rb") as stat:
                text = stat.read()
        except OSError:  # gone, or hidden (hidepid)
            continue
        parents[int(name)] = int(text[text.rindex(b")") + 2 :].split(None, 2)[1])
    return parents


def check_address_space(pid: int) -> int:
    """Raise the right error unless `pid` is a live process with a user address space; return its start time
    (see `start_time`), read from the same look at `/proc/PID/stat`."""
    fields = _stat(pid)
    state, task_flags = fields[0], int(fields[6])
    if task_flags & _PF_KTHREAD:
        raise NoAddressSpace(f"process {pid} is a kernel thread: it has no user memory to snapshot", pid)
    if state not in ("Z", "X"):
        return int(fields[19])
    if any(state not in ("Z", "X") for state in thread_states(pid)):
        raise NoAddressSpace(
            f"the main thread of process {pid} has exited while its other threads run on: /proc/{pid} no longer "
            "shows the process's memory, so it cannot be snapshot; keep the main thread alive (join the others)",
            pid,
        )
    raise NoAddressSpace(
        f"process {pid} has exited and freed its memory (a zombie): its parent has not collected its exit status yet",
        pid,
    )


def start_time(pid: int) -> int:
    """When `pid` started, in clock ticks after boot: with the pid, it names one process for good."""
    return int(_stat(pid)[19])


def pidfd_inode(pid: int) -> int | None:
    """A number that names process `pid` until reboot: the inode of a pidfd for it, where pidfds live in pidfs
    (Linux 6.9+). Its start time does not suffice alone: it counts clock ticks, and a pid reused within a tick
    shares it. None where pidfds share one inode (older kernels) or `pid` is gone."""
    inode = _inode_of_pidfd(pid)
    return None if inode == _own_pidfd_inode() else inode


@functools.cache
def _own_pidfd_inode() -> int | None:
    # Where every pidfd shares one anonymous inode, another process's equals this one's. (A child forked later
    # keeps its parent's answer, which serves as well.)
    return _inode_of_pidfd(os.getpid())


def _inode_of_pidfd(pid: int) -> int | None:
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None
    try:
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


def executable(pid: int) -> str | None:
    """The path of the program `pid` runs, or None when it cannot be read (no access, or exiting)."""
    try:
        return os.readlink(f"{PROC}/{pid}/exe")
    except OSError:
        return None


def thread_ids(pid: int) -> list[int]:
    """The ids of the threads of `pid` (empty when it is gone)."""
    try:
        return [int(tid) for tid in os.listdir(f"{PROC}/{pid}/task")]
    except (FileNotFoundError, ProcessLookupError):
        return []
    except OSError as exc:
        raise translate_os_error(exc, pid, f"{PROC}/{pid}/task") from exc


def thread_state(pid: int, tid: int) -> str | None:
    """The state letter of one thread of `pid`, or None when it is gone."""
    try:
        fd = os.open(f"{PROC}/{pid}/task/{tid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            text = os.read(fd, 1 << 12)  # the state comes right after the command, at most 64 bytes in
        finally:
            os.close(fd)
        return _stat_fields(text.decode("utf-8", "surrogateescape"))[0]
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # the thread went while being read
            return None
        raise translate_os_error(exc, pid, f"{PROC}/{pid}/task/{tid}/stat") from exc


def thread_states(pid: int) -> list[str]:
    """The state letters of every thread of `pid` (threads that vanish while listed are skipped)."""
    states = (thread_state(pid, tid) for tid in thread_ids(pid))
    return [state for state in states if state is not None]


def parent_pid(pid: int) -> int:
    """The pid of the (real, not tracing) parent of `pid`."""
    return int(_stat(pid)[1])


def tracer_pid(pid: int, tid: int) -> int | None:
    """The process tracing thread `tid` of `pid` (0 for none), or None when the thread is gone."""
    with contextlib.suppress(PagewalkError):
        value = status_field(f"{pid}/task/{tid}", "TracerPid")
        return None if value is None else int(value)
    return None


def check_thread_group_leader(pid: int) -> None:
    """Raise `InvalidPid` when `pid` is the id of a thread rather than of a process."""
    # pidfd_open refuses a thread that leads no thread group with EINVAL (Linux 5.3+): a system call where
    # the status file costs the kernel a page of formatting.
    try:
        os.close(os.pidfd_open(pid))
        return
    except ProcessLookupError:
        raise _describe_missing(pid) from None
    except (AttributeError, OSError):  # no pidfd_open here, or a thread: the status file tells which
        pass
    tgid = status_field(pid, "Tgid")
    if tgid is not None and int(tgid) != pid:
        raise InvalidPid(
            f"{pid} is the id of a thread of process {tgid}, not of a process: pass the process id {tgid}", pid
        )


# --- /proc/PID/maps -----------------------------------------------------------------------------------

_DELETED = " (deleted)"
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class MapsEntry:
    """One line of `/proc/PID/maps`, every field parsed."""

    start: int
    end: int
    perms: str  # e.g. "rw-p"; the last letter is p (private) or s (shared)
    offset: int
    dev_major: int
    dev_minor: int
    inode: int
    path: str  # file path (newlines unescaped), a label such as "[heap]", or "" for anonymous memory
    deleted: bool  # the backing file was deleted (or is an internal shmem/hugetlb file)

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def shared(self) -> bool:
        return self.perms[3:4] == "s"

    @property
    def is_label(self) -> bool:
        return self.path.startswith("[") and self.path.endswith("]")

    @property
    def dev(self) -> tuple[int, int]:
        return (self.dev_major, self.dev_minor)


def _unescape_path(raw: str) -> str:
    # show_map_vma() escapes only "\n" (as \012); decode any octal escape to be safe.
    if "\\" not in raw:
        return raw
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), raw)


def parse_maps_line(line: str) -> MapsEntry:
    """Parse one line of `/proc/PID/maps`; raise `ValueError` on a malformed line."""
    parts = line.split(None, 5)
    if len(parts) < 5:
        raise ValueError(f"malformed maps line: {line!r}")
    address, perms, offset, dev, inode = parts[:5]
    start_text, _, end_text = address.partition("-")
    major_text, _, minor_text = dev.partition(":")
    # The path follows space padding; a file path always starts with "/", and labels with "[".
    path = parts[5].lstrip(" ").rstrip("\n") if len(parts) > 5 else ""
    deleted = False
    if path.endswith(_DELETED) and not path.startswith("["):
        path = path[: -len(_DELETED)]
        deleted = True
    if len(perms) != 4:
        raise ValueError(f"malformed permissions {perms!r} in maps line: {line!r}")
    return MapsEntry(
        start=int(start_text, 16),
        end=int(end_text, 16),
        perms=perms,
        offset=int(offset, 16),
        dev_major=int(major_text, 16),
        dev_minor=int(minor_text, 16),
        inode=int(inode),
        path=_unescape_path(path),
        deleted=deleted,
    )


def parse_maps(text: str) -> list[MapsEntry]:
    """Parse the text of `/proc/PID/maps`."""
    return list(_parse_maps_cached(text))


@functools.lru_cache(maxsize=4)
def _parse_maps_cached(text: str) -> tuple[MapsEntry, ...]:
    # Parsing costs a few microseconds a line; repeated snapshots of a process mostly see the same maps.
    return tuple(parse_maps_line(line) for line in text.splitlines() if line.strip())


def read_maps(pid: int) -> tuple[MapsEntry, ...]:
    """The parsed `/proc/PID/maps` of a process: the same object as last time while the text is the same."""
    return _parse_maps_cached(read_proc_text(pid, "maps"))


def status_field(pid: int | str, name: str) -> str | None:
    """The value of the `NAME:` line of `/proc/PID/status`, or None when this kernel prints no such line."""
    return status_fields(pid, (name,))[name]


def status_fields(pid: int | str, names: tuple[str, ...]) -> dict[str, str | None]:
    """The values of several lines of `/proc/PID/status` from one read (None for a line not printed)."""
    text = "\n" + read_proc_text(pid, "status")
    found: dict[str, str | None] = {}
    for name in names:  # a few look-ups in C rather than a loop over some 60 lines
        at = text.find(f"\n{name}:")
        if at < 0:
            found[name] = None
            continue
        end = text.find("\n", at + 1)
        found[name] = text[at + len(name) + 2 : None if end < 0 else end].strip()
    return found


@dataclass(frozen=True)
class MemoryStatus:
    """A process's memory use from `/proc/PID/status`, in bytes."""

    size: int  # address space (VmSize)
    resident: int  # VmRSS, as statm's resident
    swap: int  # VmSwap
    peak_resident: int | None  # VmHWM: None for a process whose memory is gone (no Vm lines)


def memory_status(pid: int) -> MemoryStatus:
    """The memory lines of `/proc/PID/status`, read once."""
    fields = status_fields(pid, ("VmSize", "VmRSS", "VmSwap", "VmHWM"))
    size, resident, swap, peak = (None if value is None else int(value.split()[0]) * 1024 for value in fields.values())
    return MemoryStatus(size or 0, resident or 0, swap or 0, peak)


def read_statm(pid: int) -> tuple[int, int]:
    """(size, resident) in pages from `/proc/PID/statm`."""
    fields = read_proc_text(pid, "statm").split()
    return int(fields[0]), int(fields[1])


def mount_devices(pid: int, fstypes: frozenset[str]) -> set[tuple[int, int]]:
    """Device numbers of the mounts of the given filesystem types, as seen by `pid`."""
    return set().union(*mount_devices_by_type(pid, tuple(fstypes)).values())


# Mount tables by mount namespace: the kernel formats the whole table on every read of mountinfo.
_MOUNTS_BY_NAMESPACE: dict[tuple[int, int], dict[str, frozenset[tuple[int, int]]]] = {}
_MOUNTS_CACHE_MAX = 8


def mount_devices_by_type(
    pid: int, fstypes: tuple[str, ...], seen: Iterable[tuple[int, int]] = ()
) -> dict[str, set[tuple[int, int]]]:
    """Device numbers of the mounts of each of the given filesystem types, as seen by `pid`.

    The table is cached per mount namespace and read again when a device in `seen` (the devices of the
    process's file mappings) is not in it: a mount made since.
    """
    try:
        stat = os.stat(f"{PROC}/{pid}/ns/mnt")
        namespace: tuple[int, int] | None = (stat.st_dev, stat.st_ino)
    except OSError:  # no access to the namespace link: read the table every time
        namespace = None
    table = _MOUNTS_BY_NAMESPACE.get(namespace) if namespace else None
    if table is not None:
        known = set().union(*table.values())
        if any(device not in known for device in seen):
            table = None
    if table is None:
        table = _parse_mountinfo(read_proc_text(pid, "mountinfo"))
        if namespace:
            if len(_MOUNTS_BY_NAMESPACE) >= _MOUNTS_CACHE_MAX:
                _MOUNTS_BY_NAMESPACE.pop(next(iter(_MOUNTS_BY_NAMESPACE)))
            _MOUNTS_BY_NAMESPACE[namespace] = table
    return {fstype: set(table.get(fstype, ())) for fstype in fstypes}


def _parse_mountinfo(text: str) -> dict[str, frozenset[tuple[int, int]]]:
    """Device numbers of the mounts of every filesystem type in a mountinfo text."""
    devices: dict[str, set[tuple[int, int]]] = {}
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 3 or not right:
            continue
        major, _, minor = fields[2].partition(":")
        devices.setdefault(right.split()[0], set()).add((int(major), int(minor)))
    return {fstype: frozenset(found) for fstype, found in devices.items()}
