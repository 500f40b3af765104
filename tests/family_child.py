"""A process family on command, for tree and peak tests: a parent that maps memory, forks children and has
them write, exit or allocate, answering each command with a line once it is done. Standard library only.

    python tests/family_child.py  then, one command a line on stdin ("ok ..." on stdout after each):
    map MIB                       map MIB MiB private anonymous memory and write every page (distinct content)
    fork                          fork a child (it shares the mapping) that waits for commands; answers its pid
    child K write MIB             child K (0-based) writes the first MIB MiB of the mapping: copy-on-write copies
    child K exit                  child K exits; the parent reaps it
    hold MIB / free               allocate and touch MIB MiB in the parent / unmap it again
"""

from __future__ import annotations

import ctypes
import mmap
import os
import signal
import sys

PAGE = mmap.PAGESIZE
PR_SET_PDEATHSIG = 1
libc = ctypes.CDLL(None, use_errno=True)


def fill(area: mmap.mmap, size: int, salt: int) -> None:
    address = ctypes.addressof(ctypes.c_char.from_buffer(area))
    ctypes.memset(address, salt, size)
    for offset in range(0, size, PAGE):  # distinct pages: KSM cannot merge them
        area[offset : offset + 8] = (offset // PAGE + (salt << 40)).to_bytes(8, "little")


def child_loop(area: mmap.mmap | None, commands: int, answers: int) -> None:
    libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    with os.fdopen(commands, "r") as inbox, os.fdopen(answers, "w") as outbox:
        for line in inbox:
            verb, *args = line.split()
            if verb == "write" and area is not None:
                fill(area, int(args[0]) << 20, 7)
            elif verb == "exit":
                outbox.write("ok\n")
                outbox.flush()
                os._exit(0)
            outbox.write("ok\n")
            outbox.flush()
    os._exit(0)


def main() -> None:
    area: mmap.mmap | None = None
    held: mmap.mmap | None = None
    children: list[tuple[int, object, object]] = []
    print("ready", flush=True)
    for line in sys.stdin:
        words = line.split()
        reply = "ok"
        if words[0] == "map":
            size = int(words[1]) << 20
            area = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            fill(area, size, 1)
        elif words[0] == "fork":
            to_child_r, to_child_w = os.pipe()
            from_child_r, from_child_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(to_child_w)
                os.close(from_child_r)
                child_loop(area, to_child_r, from_child_w)
            os.close(to_child_r)
            os.close(from_child_w)
            children.append((pid, os.fdopen(to_child_w, "w"), os.fdopen(from_child_r, "r")))
            reply = f"ok {pid}"
        elif words[0] == "child":
            pid, inbox, outbox = children[int(words[1])]
            inbox.write(" ".join(words[2:]) + "\n")  # type: ignore[attr-defined]
            inbox.flush()  # type: ignore[attr-defined]
            outbox.readline()  # type: ignore[attr-defined]
            if words[2] == "exit":
                os.waitpid(pid, 0)
        elif words[0] == "hold":
            size = int(words[1]) << 20
            held = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            fill(held, size, 3)
        elif words[0] == "free" and held is not None:
            held.close()
            held = None
        print(reply, flush=True)


if __name__ == "__main__":
    main()
