"""A pre-forking server (a parent and its workers) measured as one tree.

`pagemap.measure(server, tree=True)` stops the parent and every worker together, adds up their memory and
counts the tree's USS once per frame: the table the parent built and the workers still share counts once,
not once per worker and not zero times. With visible PFNs (root), it also checks that each worker still
shares most of its memory with the parent, which `gc.freeze()` before forking is there to keep.
"""

from __future__ import annotations

import socket
import sys
import urllib.request
from pathlib import Path

import pytest

from pagewalk import capabilities

SERVER = Path(__file__).with_name("prefork_server.py")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def fetch(port: int, requests: int) -> None:
    for number in range(requests):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/{'x' * number}", timeout=10).read()


@pytest.mark.pagemap(uss_growth_below="8 MiB")  # of the whole tree, with --pagemap
def test_prefork_server_memory(pagemap):
    port = free_port()
    server = pagemap.spawn([sys.executable, str(SERVER), str(port), "3"], ready=f"serving on {port}")
    fetch(port, 20)  # warm up every worker
    with pagemap.measure(server, tree=True) as m:
        fetch(port, 200)
    assert len(m.after.processes) == 4  # the parent and three workers
    assert m.delta.processes_exited == {}  # no worker died
    m.assert_rss_growth_below("16 MiB")
    # The workers' copies of the table are not counted four times: the tree's USS is far below the sum of RSS.
    assert m.after.uss < sum(process.rss for process in m.after.processes.values())
    if capabilities().pfn_visible:
        m.assert_shared_with_parent_above(0.5)
