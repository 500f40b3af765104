"""Measure a server while the test drives it: spawn it, wait until it is ready, load it, assert on its memory.

Run with `pytest --pagemap examples/` to check the marker limit and see the summary.
"""

from __future__ import annotations

import re
import socket
import sys
import urllib.request
from pathlib import Path

import pytest

REQUESTS = 200
SERVING = re.compile(r"Serving HTTP on \S+ port (\d+)")


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read()


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "index.html").write_text("<h1>hello</h1>\n" * 100)
    return tmp_path


@pytest.mark.pagemap(uss_growth_below="4 MiB")
def test_server_memory_stays_flat_under_load(pagemap, site):
    # Port 0: the server picks a free port and prints it; `ready` waits for that line.
    server = pagemap.spawn(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(site), "0"],
        ready=SERVING,
    )
    port = int(SERVING.search(server.stdout).group(1))
    url = f"http://127.0.0.1:{port}/index.html"
    fetch(url)  # warm up: the first request imports and allocates what every later one reuses

    with pagemap.measure(server) as m:
        for _ in range(REQUESTS):
            assert fetch(url).startswith(b"<h1>hello</h1>")

    m.assert_rss_growth_below("8 MiB")  # explicit assertions work with or without --pagemap
    assert m.after.uss < 64 * 1024 * 1024


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_server_ready_when_its_port_accepts_connections(pagemap, site):
    port = free_port()
    server = pagemap.spawn(
        f"{sys.executable} -m http.server --bind 127.0.0.1 --directory {site} {port}",
        ready=port,  # an int waits for a TCP connection to succeed on 127.0.0.1
        timeout=20,
    )
    with pagemap.measure(server, accessed=True) as m:
        for _ in range(20):
            fetch(f"http://127.0.0.1:{port}/")
    m.assert_uss_growth_below("4 MiB")
    assert m.delta.accessed > 0  # serving requests touches the interpreter's pages
