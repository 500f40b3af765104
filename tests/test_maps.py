"""Parsing /proc/PID/maps, with odd lines the kernel can produce, and against real processes."""

import mmap
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pagewalk.procfs import parse_maps, parse_maps_line, read_maps
from pagewalk.regions import classify, display_name

PADDING = " " * 26


def test_every_field_of_a_file_line() -> None:
    line = f"7f0c2a000000-7f0c2a021000 r-xp 0001c000 fe:01 1234567{PADDING}/usr/lib/libc.so.6"
    entry = parse_maps_line(line)
    assert (entry.start, entry.end) == (0x7F0C2A000000, 0x7F0C2A021000)
    assert entry.perms == "r-xp" and not entry.shared
    assert entry.offset == 0x1C000
    assert entry.dev == (0xFE, 0x01)
    assert entry.inode == 1234567
    assert entry.path == "/usr/lib/libc.so.6" and not entry.deleted
    assert entry.size == 0x21000


@pytest.mark.parametrize(
    ("tail", "path", "deleted"),
    [
        ("/tmp/with space/and  two spaces.so", "/tmp/with space/and  two spaces.so", False),
        ("/tmp/trailing space ", "/tmp/trailing space ", False),
        ("/dev/zero (deleted)", "/dev/zero", True),
        ("/memfd:cache (deleted)", "/memfd:cache", True),
        ("/tmp/new\\012line", "/tmp/new\nline", False),
        ("[heap]", "[heap]", False),
        ("[stack]", "[stack]", False),
        ("[vdso]", "[vdso]", False),
        ("[anon:jemalloc arena]", "[anon:jemalloc arena]", False),
        ("[anon_shmem:ring]", "[anon_shmem:ring]", False),
        ("", "", False),
    ],
)
def test_paths_labels_and_escapes(tail: str, path: str, deleted: bool) -> None:
    entry = parse_maps_line(f"55d0c000-55d0d000 rw-s 00000000 00:01 42{PADDING}{tail}")
    assert entry.path == path
    assert entry.deleted is deleted
    assert entry.shared


def test_anonymous_line_without_padding() -> None:
    entry = parse_maps_line("7ffd1000-7ffd3000 rw-p 00000000 00:00 0")
    assert entry.path == "" and entry.inode == 0
    assert display_name(entry) == "[anon]"


@pytest.mark.parametrize(
    "bad", ["", "garbage", "1000-2000 rw-p 0 00:00", "1000-2000 rwxps 0 00:00 0 x", "zz-1 rw-p 0 0:0 0"]
)
def test_malformed_lines_raise_value_error(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_maps_line(bad)


def test_parse_maps_skips_blank_lines() -> None:
    text = "1000-2000 r--p 00000000 00:00 0\n\n3000-4000 rw-p 00000000 00:00 0   [heap]\n"
    assert [entry.path for entry in parse_maps(text)] == ["", "[heap]"]


@pytest.mark.parametrize(
    ("tail", "dev", "kind"),
    [
        ("[heap]", "00:00", "heap"),
        ("[stack]", "00:00", "stack"),
        ("[vvar]", "00:00", "special"),
        ("[vsyscall]", "00:00", "special"),
        ("", "00:00", "anon"),
        ("[anon:arena]", "00:00", "anon"),
        ("[anon_shmem:ring]", "00:01", "shmem"),
        ("/dev/zero (deleted)", "00:01", "shmem"),
        ("/anon_hugepage (deleted)", "00:11", "hugetlb"),
        ("/mnt/huge/file", "00:2a", "hugetlb"),
        ("/usr/lib/libc.so.6", "fe:01", "file"),
    ],
)
def test_classify(tail: str, dev: str, kind: str) -> None:
    entry = parse_maps_line(f"1000-2000 rw-s 00000000 {dev} 7{PADDING}{tail}")
    assert classify(entry, shmem_devices={(0, 1)}, hugetlb_devices={(0, 0x2A)}) == kind


def test_private_dev_zero_is_anonymous_memory() -> None:
    private = parse_maps_line(f"1000-2000 rw-p 00000000 00:05 4{PADDING}/dev/zero")
    shared = parse_maps_line(f"1000-2000 rw-s 00000000 00:01 9{PADDING}/dev/zero (deleted)")
    assert classify(private, shmem_devices={(0, 1)}, hugetlb_devices=()) == "anon"
    assert classify(shared, shmem_devices={(0, 1)}, hugetlb_devices=()) == "shmem"


def test_real_process_with_odd_file_names(tmp_path: Path) -> None:
    """A child maps files whose names hold spaces and a newline; the parsed paths match exactly."""
    names = [tmp_path / "with space.bin", tmp_path / "new\nline.bin", tmp_path / "gone.bin"]
    for name in names:
        name.write_bytes(b"x" * mmap.PAGESIZE)
    code = (
        "import mmap, os, sys\n"
        "maps = [mmap.mmap(os.open(p, os.O_RDONLY), 0, prot=mmap.PROT_READ) for p in sys.argv[1:]]\n"
        "os.unlink(sys.argv[-1])\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, *map(str, names)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        by_path = {(entry.path, entry.deleted) for entry in read_maps(child.pid)}
        assert (str(names[0]), False) in by_path
        assert (str(names[1]), False) in by_path
        assert (str(names[2]), True) in by_path
    finally:
        child.kill()
        child.wait()


def test_real_maps_parse_completely() -> None:
    entries = read_maps(os.getpid())
    assert any(entry.path == "[stack]" for entry in entries)
    assert all(entry.end > entry.start for entry in entries)
    assert [entry.start for entry in entries] == sorted(entry.start for entry in entries)
