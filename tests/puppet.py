"""Host side of the puppet: a child process that maps and touches memory on command (see puppet_child.py).

    with Puppet() as puppet:
        area = puppet.map(64)                  # 64 private anonymous pages, fenced by PROT_NONE pages
        puppet.write(area, range(0, 32))       # distinct content per page: KSM never merges them
        puppet.read(area, range(32, 48))       # read faults: the shared zero page
        with puppet.stopped():                 # the puppet and its forked children, all SIGSTOPped
            ...                                # snapshot it, read /proc/PID/smaps_rollup
    # closed: the puppet and every process it forked are gone (verified, or PuppetError)

Errors in the child come back as `PuppetError` (with the child's `errno` when it was an OSError). The
puppet runs in a session of its own, so its forked children share its process group: stopping, resuming
and the final check of "nothing outlived the test" all go by that group. Standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CHILD", "HUGE_ALIGN", "Mapping", "Puppet", "PuppetError", "group_members"]

CHILD = Path(__file__).with_name("puppet_child.py")
HUGE_ALIGN = 2 << 20  # a PMD on x86-64 with 4 KiB pages: THP forms only in aligned 2 MiB blocks
_STOPPED = frozenset("TtXZ")

Pages = int | range | Iterable[int] | None


class PuppetError(Exception):
    """A command failed in the puppet (or the puppet died or hung)."""

    def __init__(self, message: str, *, errno: int | None = None, remote_type: str | None = None) -> None:
        super().__init__(message)
        self.errno = errno
        self.remote_type = remote_type


@dataclass(frozen=True)
class Mapping:
    """One mapping made by the puppet: `pages` pages at `address`."""

    id: int
    address: int
    size: int
    page_size: int

    @property
    def pages(self) -> int:
        return self.size // self.page_size

    @property
    def end(self) -> int:
        return self.address + self.size

    def page_address(self, index: int) -> int:
        return self.address + index * self.page_size


def _pages_args(pages: Pages) -> dict[str, Any]:
    if pages is None:
        return {}
    if isinstance(pages, int):
        return {"pages": [pages]}
    if isinstance(pages, range) and pages.step == 1:
        return {"range": [pages.start, pages.stop]}
    return {"pages": [int(page) for page in pages]}


def _stat_fields(pid: int | str, tid: int | str | None = None) -> list[str] | None:
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as stat:
            text = stat.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2 :].split()


def group_members(pgid: int) -> list[int]:
    """Every process (zombies included) in process group `pgid`."""
    members = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(name)
            if fields is not None and int(fields[2]) == pgid:
                members.append(int(name))
    return sorted(members)


def _dead(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is None or fields[0] in ("Z", "X")


def _all_threads_stopped(pid: int) -> bool:
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return True
    for tid in tids:
        fields = _stat_fields(pid, tid)
        if fields is not None and fields[0] not in _STOPPED:
            return False
    return True


class Puppet:
    """A live child process driven by JSON commands; see the module docstring."""

    def __init__(
        self,
        *,
        python: str | None = None,
        child: Path | str = CHILD,
        timeout: float = 120.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.timeout = timeout
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the puppet; close() closes it
        self._buffer = b""
        self._closed = False
        self.process = subprocess.Popen(
            [python or sys.executable, str(child)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            bufsize=0,
            start_new_session=True,  # its own process group: the forks go with it
            env=env,
        )
        self.pid = self.process.pid
        self.pgid = self.pid
        self._forked: list[int] = []
        try:
            hello = self._receive()
        except BaseException:
            self.close(check=False)
            raise
        self.page_size = int(hello["page_size"])

    # --- protocol ----------------------------------------------------------------------------------------

    def _stderr_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace").strip()

    def _receive(self, timeout: float | None = None) -> dict[str, Any]:
        assert self.process.stdout is not None
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        fd = self.process.stdout.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    raise PuppetError(f"puppet {self.pid} did not answer within {self.timeout} s")
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    code = self.process.poll()
                    raise PuppetError(
                        f"puppet {self.pid} exited (status {code}) without answering; stderr:\n{self._stderr_text()}"
                    )
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        message: dict[str, Any] = json.loads(line)
        if not message.get("ok"):
            raise PuppetError(
                f"puppet: {message.get('type')}: {message.get('error')}",
                errno=message.get("errno"),
                remote_type=message.get("type"),
            )
        return message

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        """Send one command and return the child's answer; raise `PuppetError` if it failed."""
        if self._closed:
            raise PuppetError("the puppet is closed")
        assert self.process.stdin is not None
        try:
            self.process.stdin.write((json.dumps({"cmd": cmd, **args}) + "\n").encode())
        except BrokenPipeError:
            raise PuppetError(f"puppet {self.pid} is gone; stderr:\n{self._stderr_text()}") from None
        return self._receive()

    # --- commands ------------------------------------------------------------------------------------------

    def ping(self) -> dict[str, Any]:
        return self.call("ping")

    def map(
        self,
        pages: int,
        *,
        shared: bool = False,
        path: str | os.PathLike[str] | None = None,
        offset: int = 0,
        noreserve: bool = False,
        hugetlb: bool = False,
        populate: bool = False,
        prot: str = "rw",
        align: int | None = None,
        thp: bool = False,
        guard: bool = True,
        name: str | None = None,
    ) -> Mapping:
        """Map `pages` pages: private anonymous by default. `thp=True` aligns to 2 MiB (`align` in bytes)."""
        args: dict[str, Any] = {
            "pages": pages,
            "shared": shared,
            "offset": offset,
            "noreserve": noreserve,
            "hugetlb": hugetlb,
            "populate": populate,
            "prot": prot,
            "align": HUGE_ALIGN if thp and not align else align,
            "guard": guard,
        }
        if path is not None:
            args["path"] = os.fspath(path)
        if name is not None:
            args["name"] = name
        answer = self.call("map", **args)
        return Mapping(answer["id"], answer["address"], answer["size"], self.page_size)

    def write(self, mapping: Mapping, pages: Pages = None, value: int | None = None) -> None:
        """Write each page: distinct non-zero content by default, or fill it with the byte `value`."""
        self.call("write", id=mapping.id, value=value, **_pages_args(pages))

    def fill(self, mapping: Mapping, pages: Pages = None, value: int = 0x5A) -> None:
        """Fill each page with the same byte: identical pages, which KSM can merge."""
        self.call("fill", id=mapping.id, value=value, **_pages_args(pages))

    def read(self, mapping: Mapping, pages: Pages = None) -> None:
        """Touch each page by reading one byte."""
        self.call("read", id=mapping.id, **_pages_args(pages))

    def madvise(self, mapping: Mapping, advice: str | int, pages: Pages = None) -> None:
        self.call("madvise", id=mapping.id, advice=advice, **_pages_args(pages))

    def mlock(self, mapping: Mapping, pages: Pages = None) -> None:
        self.call("mlock", id=mapping.id, **_pages_args(pages))

    def munlock(self, mapping: Mapping, pages: Pages = None) -> None:
        self.call("munlock", id=mapping.id, **_pages_args(pages))

    def mprotect(self, mapping: Mapping, prot: str, pages: Pages = None) -> None:
        self.call("mprotect", id=mapping.id, prot=prot, **_pages_args(pages))

    def munmap(self, mapping: Mapping) -> None:
        self.call("munmap", id=mapping.id)

    def prctl_name(self, mapping: Mapping, name: str, pages: Pages = None) -> None:
        """Name anonymous memory (PR_SET_VMA_ANON_NAME): it shows as [anon:NAME] in maps."""
        self.call("prctl_name", id=mapping.id, name=name, **_pages_args(pages))

    def fork(self, touch: Iterable[Mapping] = ()) -> int:
        """Fork a child that sleeps, sharing every page copy-on-write; return its pid.

        Fork copies the page tables of private mappings only: the child maps the pages of shared ones
        (shmem, shared files) when it first touches them, so list those in `touch` to share them now.
        """
        pid = int(self.call("fork", touch=[mapping.id for mapping in touch])["pid"])
        self._forked.append(pid)
        return pid

    def uffd_wp(self, mapping: Mapping, pages: Pages = None) -> None:
        """Write-protect pages with userfaultfd (WP_UNPOPULATED: unpopulated pages get uffd-wp markers)."""
        self.call("uffd_wp", id=mapping.id, **_pages_args(pages))

    def kill_children(self) -> list[int]:
        killed: list[int] = self.call("kill_children")["killed"]
        return killed

    # --- process control ---------------------------------------------------------------------------------

    def members(self) -> list[int]:
        """The puppet and the processes it forked (its process group)."""
        return group_members(self.pgid)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGSTOP the puppet and its forked children, and wait until every thread of each shows stopped."""
        os.killpg(self.pgid, signal.SIGSTOP)
        deadline = time.monotonic() + timeout
        while not all(_all_threads_stopped(pid) for pid in self.members()):
            if time.monotonic() > deadline:
                raise PuppetError(f"puppet {self.pid} did not stop within {timeout} s")
            time.sleep(0.001)

    def cont(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGCONT)

    @contextlib.contextmanager
    def stopped(self) -> Iterator[None]:
        """Keep the puppet and its children stopped for the duration of the block."""
        self.stop()
        try:
            yield
        finally:
            self.cont()

    @contextlib.contextmanager
    def pinned(self) -> Iterator[None]:
        """Keep the puppet on one CPU for the duration of the block.

        The kernel moves pages between its LRU lists through per-CPU batches and drains only the local CPU's, so
        pages faulted or mlocked on one CPU while the process then drains on another wait in the first: their
        UNEVICTABLE lags MLOCKED. It did in 140 of 1,000 mlock calls here when the process moved meanwhile, and
        in none of 1,000 with the process on one CPU from its first write on.
        """
        allowed = os.sched_getaffinity(self.pid)
        os.sched_setaffinity(self.pid, {min(allowed)})
        try:
            yield
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(self.pid, allowed)

    def close(self, *, check: bool = True, timeout: float = 10.0) -> None:
        """End the puppet and everything it forked; with `check`, raise if any process outlives it."""
        if self._closed:
            return
        self._closed = True
        self.cont()  # a stopped puppet can neither exit nor reap
        try:
            assert self.process.stdin is not None
            self.process.stdin.write(b'{"cmd": "exit"}\n')
            self._receive(timeout=timeout)
            self.process.wait(timeout=timeout)
        except (OSError, PuppetError, subprocess.TimeoutExpired, ValueError):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGKILL)
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        # Forked children die with the puppet (PR_SET_PDEATHSIG) or were reaped by it; check no one is left.
        # (A child orphaned by a killed puppet is reaped by init; until then it is a zombie: dead, memory freed.)
        deadline = time.monotonic() + timeout
        while survivors := [pid for pid in self.members() if not _dead(pid)]:
            if time.monotonic() > deadline:
                break
            for pid in survivors:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)
        stderr = self._stderr_text()
        self._stderr.close()
        if check and survivors:
            raise PuppetError(f"processes outlived puppet {self.pid}: {survivors}")
        if check and self.process.returncode not in (0, -signal.SIGKILL):
            raise PuppetError(f"puppet {self.pid} ended with status {self.process.returncode}; stderr:\n{stderr}")

    def __enter__(self) -> Puppet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close(check=exc_info[0] is None)
