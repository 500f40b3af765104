#!/usr/bin/env python3
"""The puppet: a child process that maps, touches and advises memory on command, one JSON line at a time.

Standard library only (ctypes, mmap, os, json), so it also runs inside small test guests. Start it with
`python3 tests/puppet_child.py`; the host side is `tests/puppet.py`. Protocol: one JSON object per line on
stdin, `{"cmd": NAME, ...arguments}`, answered by one JSON line on stdout: `{"ok": true, ...results}` or
`{"ok": false, "error": MESSAGE, "type": EXCEPTION NAME, "errno": ERRNO OR null}`. The child prints
`{"ok": true, "ready": true, "pid": PID, ...}` first. End of input, or `exit`, ends it after killing and
reaping every process it forked.

Commands (pages are indexes into one mapping: `"pages": [i, j, ...]` or `"range": [first, stop]`, default
every page):

* `map`: `pages` (size in base pages), `shared`, `path` (+ `offset` in pages, map a file), `noreserve`,
  `hugetlb`, `populate`, `prot` ("rw", "r", "none"), `align` (bytes, e.g. 2 MiB so THP can form),
  `guard` (default true: a PROT_NONE page either side so the mapping never merges with a neighbour),
  `name` (PR_SET_VMA_ANON_NAME). Returns `id`, `address`, `size`.
* `write`: `id`, pages, `value` (a byte to fill each page with; default: distinct non-zero content per
  page so KSM never merges them). `fill` is `write` with identical content (`value`, default 0x5a).
* `read`: `id`, pages: touch by reading (private anonymous memory then maps the zero page).
* `madvise`: `id`, pages, `advice` (a name such as "HUGEPAGE", "PAGEOUT", "GUARD_INSTALL", or a number).
* `mlock` / `munlock` / `mprotect` (`prot`) / `munmap` / `prctl_name` (`name`): on `id`, pages.
* `fork`: a child that sleeps, sharing every page copy-on-write; returns its `pid`. Killed with the puppet.
  `touch`: ids of mappings the child reads every page of first (shared mappings are not copied at fork).
* `uffd_wp`: `id`, pages: register the pages with userfaultfd for write protection and protect them,
  with UFFD_FEATURE_WP_UNPOPULATED, so unpopulated pages get uffd-wp PTE markers (Linux 6.4+).
* `kill_children`, `ping`, `exit`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import mmap
import os
import signal
import struct
import sys

PAGE = mmap.PAGESIZE

PROT = {"none": 0, "r": 1, "rw": 3, "w": 2, "rx": 5, "rwx": 7}
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_NORESERVE = 0x4000
MAP_POPULATE = 0x8000
MAP_HUGETLB = 0x40000

MADV = {
    "NORMAL": 0,
    "RANDOM": 1,
    "SEQUENTIAL": 2,
    "WILLNEED": 3,
    "DONTNEED": 4,
    "FREE": 8,
    "REMOVE": 9,
    "DONTFORK": 10,
    "DOFORK": 11,
    "MERGEABLE": 12,
    "UNMERGEABLE": 13,
    "HUGEPAGE": 14,
    "NOHUGEPAGE": 15,
    "DONTDUMP": 16,
    "DODUMP": 17,
    "WIPEONFORK": 18,
    "KEEPONFORK": 19,
    "COLD": 20,
    "PAGEOUT": 21,
    "POPULATE_READ": 22,
    "POPULATE_WRITE": 23,
    "DONTNEED_LOCKED": 24,
    "COLLAPSE": 25,
    "GUARD_INSTALL": 102,
    "GUARD_REMOVE": 103,
}

# userfaultfd: syscall numbers, and the generic _IOWR(0xAA, nr, size) ioctl encoding
UFFD_SYSCALL = {"x86_64": 323, "aarch64": 282, "riscv64": 282, "i686": 374, "armv7l": 388, "s390x": 355}
UFFD_USER_MODE_ONLY = 1
UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
UFFDIO_REGISTER_MODE_WP = 1 << 1
UFFDIO_WRITEPROTECT_MODE_WP = 1 << 0


def _iowr(nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (0xAA << 8) | nr


UFFDIO_API = _iowr(0x3F, 24)
UFFDIO_REGISTER = _iowr(0x00, 32)
UFFDIO_WRITEPROTECT = _iowr(0x06, 24)

PR_SET_PDEATHSIG = 1
PR_SET_VMA = 0x53564D41
PR_SET_VMA_ANON_NAME = 0

libc = ctypes.CDLL(None, use_errno=True)
_mmap = libc.mmap
_mmap.restype = ctypes.c_void_p
_mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
MAP_FAILED = ctypes.c_void_p(-1).value
for _name in ("munmap", "mlock", "munlock"):
    getattr(libc, _name).argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    getattr(libc, _name).restype = ctypes.c_int
for _name in ("madvise", "mprotect"):
    getattr(libc, _name).argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    getattr(libc, _name).restype = ctypes.c_int
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
libc.prctl.restype = ctypes.c_int
libc.syscall.restype = ctypes.c_long
libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
libc.ioctl.restype = ctypes.c_int


class CommandError(Exception):
    """A bad command: reported to the host, which raises it."""


def check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def huge_page_size() -> int:
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("Hugepagesize:"):
                return int(line.split()[1]) * 1024
    return 2 << 20


class Puppet:
    def __init__(self) -> None:
        self.mappings: dict[int, dict[str, int]] = {}
        self.next_id = 1
        self.children: set[int] = set()
        self.counter = 0
        self.salt = os.urandom(8)
        self.uffds: list[int] = []  # kept open: closing a userfaultfd removes its write protection

    # --- helpers ---------------------------------------------------------------------------------------

    def mapping(self, args: dict) -> dict[str, int]:
        try:
            return self.mappings[int(args["id"])]
        except KeyError:
            raise CommandError(f"no mapping with id {args.get('id')!r}") from None

    def page_list(self, m: dict[str, int], args: dict) -> list[int]:
        count = m["size"] // PAGE
        if "pages" in args and args["pages"] is not None:
            pages = [int(p) for p in args["pages"]]
        elif "range" in args and args["range"] is not None:
            first, stop = (int(v) for v in args["range"])
            pages = list(range(first, stop))
        else:
            pages = list(range(count))
        for page in pages:
            if not 0 <= page < count:
                raise CommandError(f"page {page} is outside the mapping of {count} pages")
        return pages

    def page_runs(self, m: dict[str, int], args: dict) -> list[tuple[int, int]]:
        """The selected pages as (address, length) runs of consecutive pages."""
        runs: list[tuple[int, int]] = []
        for page in sorted(set(self.page_list(m, args))):
            address = m["address"] + page * PAGE
            if runs and runs[-1][0] + runs[-1][1] == address:
                runs[-1] = (runs[-1][0], runs[-1][1] + PAGE)
            else:
                runs.append((address, PAGE))
        return runs

    # --- commands --------------------------------------------------------------------------------------

    def cmd_ping(self, args: dict) -> dict:
        return {"pid": os.getpid(), "page_size": PAGE, "children": sorted(self.children)}

    def cmd_map(self, args: dict) -> dict:
        pages = int(args["pages"])
        if pages <= 0:
            raise CommandError("pages must be positive")
        size = pages * PAGE
        prot = PROT[args.get("prot", "rw")]
        flags = MAP_FIXED | (MAP_SHARED if args.get("shared") else MAP_PRIVATE)
        if args.get("noreserve"):
            flags |= MAP_NORESERVE
        if args.get("populate"):
            flags |= MAP_POPULATE
        align = max(int(args.get("align") or PAGE), PAGE)
        path = args.get("path")
        if args.get("hugetlb"):
            if path:
                raise CommandError("hugetlb mappings here are anonymous; map a hugetlbfs file with path instead")
            flags |= MAP_HUGETLB
            align = max(align, huge_page_size())
        if align & (align - 1):
            raise CommandError(f"align must be a power of two, got {align}")
        gap = PAGE if args.get("guard", True) else 0
        span = size + align + 2 * gap
        base = _mmap(None, span, 0, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        if base == MAP_FAILED:
            err = ctypes.get_errno()
            raise OSError(err, f"reserving {span} bytes: {os.strerror(err)}")
        address = (base + gap + align - 1) & ~(align - 1)
        fd = -1
        try:
            if path:
                writable = bool(args.get("shared")) and prot & 2
                fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
            else:
                flags |= MAP_ANONYMOUS
            got = _mmap(address, size, prot, flags, fd, int(args.get("offset", 0)) * PAGE)
            if got == MAP_FAILED:
                err = ctypes.get_errno()
                raise OSError(err, f"mmap of {size} bytes (flags {flags:#x}): {os.strerror(err)}")
        except BaseException:
            libc.munmap(base, span)
            raise
        finally:
            if fd >= 0:
                os.close(fd)
        low, high = address - gap, address + size + gap
        if low > base:
            check(libc.munmap(base, low - base), "munmap")
        if base + span > high:
            check(libc.munmap(high, base + span - high), "munmap")
        ident = self.next_id
        self.next_id += 1
        self.mappings[ident] = {"address": address, "size": size, "low": low, "high": high}
        if args.get("name"):
            self.cmd_prctl_name({"id": ident, "name": args["name"]})
        return {"id": ident, "address": address, "size": size}

    def cmd_write(self, args: dict) -> dict:
        m = self.mapping(args)
        value = args.get("value")
        pages = self.page_list(m, args)
        if value is None:
            for page in pages:
                self.counter += 1
                ctypes.memmove(m["address"] + page * PAGE, struct.pack("<Q", self.counter) + self.salt, 16)
        else:
            for address, length in self.page_runs(m, args):
                ctypes.memset(address, int(value) & 0xFF, length)
        return {"pages": len(pages)}

    def cmd_fill(self, args: dict) -> dict:
        return self.cmd_write({**args, "value": args.get("value", 0x5A)})

    def cmd_read(self, args: dict) -> dict:
        m = self.mapping(args)
        total = 0
        pages = self.page_list(m, args)
        for page in pages:
            total += ctypes.c_ubyte.from_address(m["address"] + page * PAGE).value
        return {"pages": len(pages), "sum": total}

    def cmd_madvise(self, args: dict) -> dict:
        m = self.mapping(args)
        advice = args["advice"]
        number = MADV[advice.upper()] if isinstance(advice, str) else int(advice)
        for address, length in self.page_runs(m, args):
            check(libc.madvise(address, length, number), f"madvise({advice})")
        return {}

    def cmd_mlock(self, args: dict) -> dict:
        m = self.mapping(args)
        for address, length in self.page_runs(m, args):
            check(libc.mlock(address, length), "mlock")
        return {}

    def cmd_munlock(self, args: dict) -> dict:
        m = self.mapping(args)
        for address, length in self.page_runs(m, args):
            check(libc.munlock(address, length), "munlock")
        return {}

    def cmd_mprotect(self, args: dict) -> dict:
        m = self.mapping(args)
        for address, length in self.page_runs(m, args):
            check(libc.mprotect(address, length, PROT[args["prot"]]), "mprotect")
        return {}

    def cmd_munmap(self, args: dict) -> dict:
        m = self.mapping(args)
        check(libc.munmap(m["low"], m["high"] - m["low"]), "munmap")
        del self.mappings[int(args["id"])]
        return {}

    def cmd_prctl_name(self, args: dict) -> dict:
        m = self.mapping(args)
        name = ctypes.create_string_buffer(str(args["name"]).encode())
        for address, length in self.page_runs(m, args):
            check(
                libc.prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, address, length, ctypes.addressof(name)),
                "prctl(PR_SET_VMA_ANON_NAME)",
            )
        return {}

    def cmd_uffd_wp(self, args: dict) -> dict:
        m = self.mapping(args)
        number = UFFD_SYSCALL.get(os.uname().machine)
        if number is None:
            raise CommandError(f"no userfaultfd syscall number for {os.uname().machine}")
        fd = libc.syscall(number, os.O_CLOEXEC | os.O_NONBLOCK | UFFD_USER_MODE_ONLY)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"userfaultfd: {os.strerror(err)}")
        self.uffds.append(fd)
        api = (ctypes.c_uint64 * 3)(0xAA, UFFD_FEATURE_WP_UNPOPULATED, 0)
        check(libc.ioctl(fd, UFFDIO_API, api), "UFFDIO_API")
        for address, length in self.page_runs(m, args):
            register = (ctypes.c_uint64 * 4)(address, length, UFFDIO_REGISTER_MODE_WP, 0)
            check(libc.ioctl(fd, UFFDIO_REGISTER, register), "UFFDIO_REGISTER")
            protect = (ctypes.c_uint64 * 3)(address, length, UFFDIO_WRITEPROTECT_MODE_WP)
            check(libc.ioctl(fd, UFFDIO_WRITEPROTECT, protect), "UFFDIO_WRITEPROTECT")
        return {}

    def cmd_fork(self, args: dict) -> dict:
        touch = [self.mapping({"id": ident}) for ident in args.get("touch") or ()]
        parent = os.getpid()
        ready_r, ready_w = os.pipe()
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:  # the child: die with the puppet, read only what it was asked to, sleep
            try:
                libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
                if os.getppid() != parent:
                    os._exit(0)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                for m in touch:
                    for address in range(m["address"], m["address"] + m["size"], PAGE):
                        _ = ctypes.c_ubyte.from_address(address).value  # a read fault
                null = os.open(os.devnull, os.O_RDWR)
                os.dup2(null, 0)
                os.dup2(null, 1)
                os.close(null)
                os.close(ready_r)
                os.write(ready_w, b"x")
                os.close(ready_w)
                while True:
                    signal.pause()
            finally:
                os._exit(0)
        os.close(ready_w)
        try:
            if os.read(ready_r, 1) != b"x":
                raise OSError(f"forked child {pid} died before it was ready")
        finally:
            os.close(ready_r)
        self.children.add(pid)
        return {"pid": pid}

    def kill_children(self) -> list[int]:
        killed = sorted(self.children)
        for pid in killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in killed:
            with contextlib.suppress(ChildProcessError):  # already reaped by the SIGCHLD handler
                os.waitpid(pid, 0)
            self.children.discard(pid)
        return killed

    def cmd_kill_children(self, args: dict) -> dict:
        return {"killed": self.kill_children()}

    def reap(self, signum: int, frame: object) -> None:
        # A forked child killed from outside: reap it at once so it never lingers as a zombie.
        for pid in list(self.children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self.children.discard(pid)


def main() -> None:
    puppet = Puppet()
    signal.signal(signal.SIGCHLD, puppet.reap)
    out = sys.stdout

    def reply(message: dict) -> None:
        out.write(json.dumps(message) + "\n")
        out.flush()

    reply({"ok": True, "ready": True, "pid": os.getpid(), "page_size": PAGE})
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            name = request.pop("cmd")
            if name == "exit":
                puppet.kill_children()
                reply({"ok": True})
                break
            handler = getattr(puppet, f"cmd_{name}", None)
            if handler is None:
                raise CommandError(f"unknown command {name!r}")
            result = handler(request)
            reply({"ok": True, **result})
        except Exception as exc:  # reported to the host, which raises it in the test
            reply(
                {
                    "ok": False,
                    "error": str(exc),
                    "type": type(exc).__name__,
                    "errno": getattr(exc, "errno", None),
                }
            )
    puppet.kill_children()


if __name__ == "__main__":
    main()
