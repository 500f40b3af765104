"""Fixtures for the plugin's tests; inner pytest sessions run with pytester.

The test modules that use pytester require it with their own `pytest_plugins = ["pytester"]`: pytest rejects
`pytest_plugins` in a conftest.py below the rootdir when the suite runs from the top (`pytest`, `pytest tests`).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

# A process that allocates (and touches) as many bytes as each line of its standard input says.
ALLOCATOR = """
import sys
kept = []
print("ready", flush=True)
for line in sys.stdin:
    block = bytearray(int(line))
    block[::4096] = b"x" * len(block[::4096])
    kept.append(block)
    print("ok", flush=True)
"""


class Allocator:
    """A child Python process that grows on request."""

    def __init__(self) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-c", ALLOCATOR], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.popen.stdout is not None and self.popen.stdout.readline() == "ready\n"
        self.pid = self.popen.pid

    def allocate(self, nbytes: int) -> None:
        assert self.popen.stdin is not None and self.popen.stdout is not None
        self.popen.stdin.write(f"{nbytes}\n")
        self.popen.stdin.flush()
        assert self.popen.stdout.readline() == "ok\n"

    def close(self) -> None:
        self.popen.kill()
        self.popen.wait()


@pytest.fixture
def pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """pytester whose inner sessions load pytest-pagemap alone, not every plugin installed: fast and reproducible."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p pagemap")  # set after pytester's own setup, which clears it
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)  # inner sessions must not write to this job's summary
    return pytester


@pytest.fixture
def allocator() -> Iterator[Allocator]:
    """A live process the test can grow with `allocator.allocate(nbytes)`."""
    process = Allocator()
    yield process
    process.close()
