"""A real server that keeps what it is given: redis used as a cache with no expiry and no memory limit.

Every request stores a new 1 KiB value and nothing is ever evicted, so the server's memory grows with the
traffic. The limit catches it; the HTML memory map shows where the memory went (jemalloc's arenas, told
apart by their address ranges):

    pytest --pagemap --pagemap-html=pagemap.html examples/test_leaky_server.py

The test is marked xfail(strict=True, raises=MemoryLimitExceeded), as the leaky cache example is, so it shows
failing for the right reason without failing the run. It is skipped where redis-server is not installed.
"""

from __future__ import annotations

import shutil
import socket

import pytest

from pytest_pagemap import MemoryLimitExceeded

REQUESTS = 20_000
VALUE = b"v" * 1024


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def command(*words: bytes) -> bytes:
    """One redis command in its wire format (RESP)."""
    return b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(word), word) for word in words)


def cache_pages(port: int, requests: int) -> None:
    """Store `requests` distinct pages, pipelined, and wait for every reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(b"".join(command(b"SET", b"page:%d" % n, VALUE) for n in range(requests)))
        expected, received = len(b"+OK\r\n") * requests, 0
        while received < expected:
            chunk = connection.recv(1 << 16)
            assert chunk, "redis closed the connection"
            received += len(chunk)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
@pytest.mark.xfail(strict=True, raises=MemoryLimitExceeded, reason="the cache never evicts")
def test_cache_server_memory_is_bounded(pagemap):
    port = free_port()
    server = pagemap.spawn(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        ready=port,
    )
    cache_pages(port, 100)  # warm up: the first requests allocate what every later one reuses
    with pagemap.measure(server, label="redis-server") as m:
        cache_pages(port, REQUESTS)
    m.assert_uss_growth_below("8 MiB")
