"""Host side of a process family on command, for tree and peak tests (the child side: family_child.py).

family.do("map 64")     # the parent maps and writes 64 MiB
child = family.fork()   # a child that shares it
family.do("child 0 write 32")
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from pagewalk.tree import descendants

__all__ = ["Family"]

CHILD = Path(__file__).with_name("family_child.py")


class Family:
    """The parent of family.py, driven one command at a time."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(CHILD)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.readline() == "ready"

    @property
    def pid(self) -> int:
        return self.process.pid

    def readline(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"family.py (pid {self.pid}) exited: {self.process.wait()}")
        return line.strip()

    def do(self, command: str) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        answer = self.readline()
        assert answer.startswith("ok"), answer
        return answer[3:]

    def fork(self) -> int:
        return int(self.do("fork"))

    def close(self) -> None:
        members = [self.pid, *descendants(self.pid)]
        self.process.kill()
        self.process.wait()
        for pid in members[1:]:  # children die with their parent (PR_SET_PDEATHSIG); make sure
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
