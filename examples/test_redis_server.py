"""A real third-party server under the gate: redis-server, driven over its own protocol with a bounded workload.

    pytest --pagemap-save=base examples/test_redis_server.py
    pytest --pagemap-compare=base --pagemap-fail=anon:5% examples/test_redis_server.py

Skipped when `redis-server` is not installed. It listens on a free port of 127.0.0.1, so its command line
differs on every run: the measurements are keyed by their labels, never by the command line.
"""

from __future__ import annotations

import os
import shutil
import socket

import pytest

REDIS = shutil.which("redis-server")
KEYS = int(os.environ.get("PAGEMAP_DEMO_REDIS_KEYS", "20000"))

pytestmark = pytest.mark.skipif(REDIS is None, reason="redis-server is not installed")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def command(*words: str) -> bytes:
    """One command in the Redis serialisation protocol."""
    parts = [f"*{len(words)}\r\n".encode()]
    for word in words:
        data = word.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def fill(port: int, count: int, value_size: int = 512) -> None:
    """SET `count` keys of `value_size` bytes, pipelined, and wait for every reply."""
    value = "v" * value_size
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.sendall(b"".join(command("SET", f"key:{n}", value) for n in range(count)))
        replies = b""
        while replies.count(b"\r\n") < count:
            chunk = connection.recv(1 << 16)
            assert chunk, "redis-server closed the connection"
            replies += chunk
        assert replies == b"+OK\r\n" * count, replies[:200]


@pytest.fixture
def redis(pagemap):
    port = free_port()
    assert REDIS is not None
    server = pagemap.spawn(
        [REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], ready=port
    )
    fill(port, 100)  # warm up: the first commands allocate the server's own tables
    return server, port


def test_redis_holds_keys(pagemap, redis):
    server, port = redis
    with pagemap.measure(server, label="fill"):
        fill(port, KEYS)
    with pagemap.measure(server, label="overwrite"):  # the same keys again: little new memory
        fill(port, KEYS)
