"""Shared fixtures: the puppet process, the `root` marker, and fixtures that change the system.

The system-changing fixtures (`swap_space`, `hugetlb_pages`, `ksm`) hold an exclusive `flock` on
`/tmp/pagewalk-tests-system.lock` for the whole test, so that under `pytest -n 2` (and across users) only
one such test runs at a time, and they restore what they changed in a `finally`, whatever the test did.
Unprivileged, each uses what the system already offers (swap space, free huge pages, a running KSM) and
skips with the reason when there is none.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import secrets
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))  # for `from puppet import ...` in test modules (importlib import mode)
try:
    import pagewalk  # noqa: F401 - normally installed
except ImportError:
    sys.path.insert(0, str(TESTS.parent / "src"))

from family import Family  # noqa: E402
from puppet import Puppet, PuppetError  # noqa: E402

ROOT = os.geteuid() == 0
LOCK_PATH = "/tmp/pagewalk-tests-system.lock"  # fixed: shared by xdist workers and by the root and nobody runs
SWAP_DIR = "/var/tmp"
SWAP_PREFIX = "pagewalk-test-swap-"
KSM_DIR = Path("/sys/kernel/mm/ksm")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "system: changes system-wide state (swap, huge pages, KSM) under a lock file; restores it afterwards",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("root")
    if marker is not None and not ROOT:
        pytest.skip(marker.kwargs.get("reason") or "needs root (CAP_SYS_ADMIN)")


# --- the puppet ---------------------------------------------------------------------------------------------


@pytest.fixture
def make_puppet() -> Iterator[Callable[..., Puppet]]:
    """A factory of puppets; each is ended at teardown, and no process it forked may outlive the test."""
    made: list[Puppet] = []

    def make(**kwargs: Any) -> Puppet:
        puppet = Puppet(**kwargs)
        made.append(puppet)
        return puppet

    yield make
    errors = []
    for puppet in made:
        try:
            puppet.close()
        except PuppetError as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def puppet(make_puppet: Callable[..., Puppet]) -> Puppet:
    """A live puppet process (see tests/puppet.py): `puppet.map(...)`, `puppet.write(...)`, `puppet.pid`."""
    return make_puppet()


@pytest.fixture
def family() -> Iterator[Family]:
    """A process family on command (see tests/family.py): `family.do("map 64")`, `family.fork()`."""
    started = Family()
    try:
        yield started
    finally:
        started.close()


# --- system-wide state, one test at a time ------------------------------------------------------------------


def _open_lock() -> int:
    try:
        fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except PermissionError:  # created by another user: flock works on a read-only descriptor too
        return os.open(LOCK_PATH, os.O_RDONLY | os.O_CLOEXEC)
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o666)
    return fd


@pytest.fixture
def system_lock() -> Iterator[None]:
    """Hold the lock that serialises tests changing system-wide state (across xdist workers and users)."""
    fd = _open_lock()
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write(path: Path | str, value: str) -> None:
    with open(path, "w", encoding="ascii") as file:
        file.write(value)


def _read(path: Path | str) -> str:
    with open(path, encoding="ascii") as file:
        return file.read().strip()


def meminfo() -> dict[str, int]:
    """/proc/meminfo: kB values (counts for the HugePages_ lines)."""
    values = {}
    with open("/proc/meminfo", encoding="ascii") as file:
        for line in file:
            name, _, rest = line.partition(":")
            values[name] = int(rest.split()[0])
    return values


# --- swap ---------------------------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.swapon.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.swapoff.argtypes = [ctypes.c_char_p]


def _swapoff(path: str) -> None:
    if _libc.swapoff(os.fsencode(path)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"swapoff {path}: {os.strerror(err)}")


def _active_swaps() -> list[str]:
    with open("/proc/swaps", encoding="utf-8") as swaps:
        return [line.split()[0] for line in swaps.read().splitlines()[1:] if line.strip()]


def _remove_stale_swap_files() -> None:
    """Swap files a crashed earlier run left behind (we hold the lock, so none of them is in use by a test)."""
    for path in _active_swaps():
        if os.path.basename(path).startswith(SWAP_PREFIX):
            with contextlib.suppress(OSError):
                _swapoff(path)
    for name in os.listdir(SWAP_DIR):
        if name.startswith(SWAP_PREFIX):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(SWAP_DIR, name))


@dataclass
class SwapSpace:
    path: str | None  # the swap file or device this fixture added, or None when the system's own swap is used
    size: int


def _swapon(path: str, mkswap: str) -> None:
    subprocess.run([mkswap, path], check=True, capture_output=True)
    if _libc.swapon(os.fsencode(path), 0) != 0:
        err = ctypes.get_errno()
        pytest.skip(f"swapon of {path} failed: {os.strerror(err)}")


@contextlib.contextmanager
def _swap_device(device: str, mkswap: str) -> Iterator[SwapSpace]:
    """A spare block device as swap: inside the kernel matrix's guests, whose only file systems (9p, tmpfs)
    cannot hold a swap file."""
    if not (os.path.exists(device) and stat.S_ISBLK(os.stat(device).st_mode)):
        raise pytest.UsageError(f"PAGEMAP_SWAP_DEVICE={device} is not a block device: name a spare disk, or unset it")
    _swapon(device, mkswap)
    try:
        with open(device, "rb") as disk:
            yield SwapSpace(device, disk.seek(0, os.SEEK_END))
    finally:
        _swapoff(device)


@pytest.fixture
def swap_space(system_lock: None) -> Iterator[SwapSpace]:
    """Swap space to page out to: as root, a 64 MiB swap file that is always removed at teardown."""
    size = 64 << 20
    if not ROOT:
        if meminfo()["SwapFree"] * 1024 < size // 4:
            pytest.skip("no free swap space, and only root can add a swap file")
        yield SwapSpace(None, meminfo()["SwapFree"] * 1024)
        return
    mkswap = shutil.which("mkswap", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    if mkswap is None:
        pytest.skip("mkswap (util-linux) is not installed")
    if device := os.environ.get("PAGEMAP_SWAP_DEVICE"):
        with _swap_device(device, mkswap) as space:
            yield space
        return
    _remove_stale_swap_files()
    path = os.path.join(SWAP_DIR, f"{SWAP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
    active = False
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            block = bytes(1 << 20)
            for _ in range(size >> 20):  # written out, not sparse: swapon refuses files with holes
                os.write(fd, block)
            os.fsync(fd)
        finally:
            os.close(fd)
        _swapon(path, mkswap)
        active = True
        yield SwapSpace(path, size)
    finally:
        try:
            if active:
                _swapoff(path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    assert path not in _active_swaps()


# --- hugetlb ------------------------------------------------------------------------------------------------


@dataclass
class HugetlbPages:
    count: int  # free huge pages of the default size available to the test
    size: int  # bytes per huge page


@pytest.fixture
def hugetlb_pages(system_lock: None) -> Iterator[HugetlbPages]:
    """Four free huge pages of the default size: as root reserved here and given back at teardown."""
    wanted = 4
    size_kb = meminfo().get("Hugepagesize", 0)
    directory = Path(f"/sys/kernel/mm/hugepages/hugepages-{size_kb}kB")
    if not size_kb or not directory.exists():
        pytest.skip("this kernel has no hugetlb pages (CONFIG_HUGETLBFS)")
    if not ROOT:
        if int(_read(directory / "free_hugepages")) - int(_read(directory / "resv_hugepages")) < wanted:
            pytest.skip(f"fewer than {wanted} free huge pages, and only root can reserve more")
        yield HugetlbPages(wanted, size_kb * 1024)
        return
    before = _read(directory / "nr_hugepages")
    try:
        _write(directory / "nr_hugepages", str(int(before) + wanted))
        free = int(_read(directory / "free_hugepages")) - int(_read(directory / "resv_hugepages"))
        if free < wanted:
            pytest.skip(f"could reserve only {free} of {wanted} huge pages (memory too fragmented)")
        yield HugetlbPages(wanted, size_kb * 1024)
    finally:
        _write(directory / "nr_hugepages", before)


# --- KSM ----------------------------------------------------------------------------------------------------


class Ksm:
    """KSM, running; waits on a process's merge counters, and (as root) changes `use_zero_pages`."""

    @staticmethod
    def stat(pid: int) -> dict[str, int]:
        """/proc/PID/ksm_stat: ksm_merging_pages, ksm_zero_pages, ... (numbers only)."""
        values = {}
        for line in _read(f"/proc/{pid}/ksm_stat").splitlines():
            name, _, value = line.partition(" ")
            if value.strip().lstrip("-").isdigit():
                values[name] = int(value)
        return values

    def wait(self, pid: int, pages: int, counter: str = "ksm_merging_pages", timeout: float = 60.0) -> None:
        """Wait until `counter` of `pid` (ksm_merging_pages or ksm_zero_pages) reaches `pages`."""
        deadline = time.monotonic() + timeout
        while (merged := self.stat(pid).get(counter, 0)) < pages:
            if time.monotonic() > deadline:
                raise AssertionError(f"KSM {counter} of {pid} reached only {merged} of {pages} in {timeout} s")
            time.sleep(0.02)

    def use_zero_pages(self, enabled: bool) -> None:
        """Merge zero-filled pages into the zero page; restored at teardown (unprivileged: skip unless set)."""
        value = "1" if enabled else "0"
        if _read(KSM_DIR / "use_zero_pages") == value:
            return
        if not ROOT:
            pytest.skip(f"KSM use_zero_pages is not {value}, and only root can change it")
        _write(KSM_DIR / "use_zero_pages", value)


_KSM_SETTINGS = ("use_zero_pages", "pages_to_scan", "sleep_millisecs", "run")  # restored in this order


@pytest.fixture
def ksm(system_lock: None) -> Iterator[Ksm]:
    """KSM running and scanning fast; as root the previous settings come back at teardown."""
    if not (KSM_DIR / "run").exists():
        pytest.skip("this kernel has no KSM (CONFIG_KSM)")
    saved = {name: _read(KSM_DIR / name) for name in _KSM_SETTINGS}
    if not ROOT:
        if saved["run"] != "1":
            pytest.skip("KSM is not running, and only root can start it")
        yield Ksm()
        return
    try:
        _write(KSM_DIR / "pages_to_scan", "5000")
        _write(KSM_DIR / "sleep_millisecs", "10")
        _write(KSM_DIR / "run", "1")
        yield Ksm()
    finally:
        for name in _KSM_SETTINGS:
            if _read(KSM_DIR / name) != saved[name]:
                _write(KSM_DIR / name, saved[name])
    assert {name: _read(KSM_DIR / name) for name in _KSM_SETTINGS} == saved
