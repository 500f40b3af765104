"""The child interpreter of `pagemap.run`: load a pickled call, let the parent snapshot around it, send the outcome.

Run as `python .../pytest_pagemap/_child.py CONTROL_FD STATUS_FD`. It imports only the standard library, so the
memory measured around the call is the call's, not a test framework's. The exchange, one length-prefixed pickle
per message:

    parent -> child   ("call", sys_path, module_files, pickled (func, args, kwargs))
    child  -> parent  ("ready",)                      the parent takes the "before" snapshot
    parent -> child   ("go",)                         the child runs the call
    child  -> parent  ("done",)                       the parent takes the "after" snapshot
    parent -> child   ("go",)
    child  -> parent  ("returned", value) or ("raised", exception or None, type name, message, traceback text)

A call that cannot be loaded answers the first message with "raised" instead of "ready".
"""

from __future__ import annotations

import faulthandler
import importlib
import importlib.util
import io
import os
import pickle
import struct
import sys
import traceback
from collections.abc import Mapping
from typing import Any

__all__ = ["receive", "send"]

_LENGTH = struct.Struct("<Q")


def send(fd: int, message: object) -> None:
    """Pickle `message` and write it to `fd` with its length in front."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    send_bytes(fd, payload)


def send_bytes(fd: int, payload: bytes) -> None:
    view = memoryview(_LENGTH.pack(len(payload)) + payload)
    while view:
        view = view[os.write(fd, view) :]


def read_exactly(fd: int, size: int) -> bytes | None:
    """`size` bytes from `fd`, or None at end of file before the first byte."""
    chunks = []
    remaining = size
    while remaining:
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            if remaining == size:
                return None
            raise EOFError(f"the pipe closed {size - remaining} bytes into a {size}-byte message")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def receive(fd: int) -> bytes | None:
    """The next message's pickled bytes from `fd`, or None when the other side closed the pipe."""
    header = read_exactly(fd, _LENGTH.size)
    if header is None:
        return None
    (length,) = _LENGTH.unpack(header)
    body = read_exactly(fd, length)
    if body is None:
        raise EOFError("the pipe closed inside a message")
    return body


def _load_module_file(name: str, path: str) -> None:
    # pytest's importlib import mode gives test modules names that are not importable from sys.path.
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load module {name!r} from {path}", name=name, path=path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


class CallUnpickler(pickle.Unpickler):
    """Unpickles a call, loading from their files the modules that sys.path cannot import."""

    def __init__(self, data: bytes, module_files: Mapping[str, str]) -> None:
        super().__init__(io.BytesIO(data))
        self._module_files = module_files

    def find_class(self, module: str, name: str) -> Any:
        if module not in sys.modules:
            try:
                importlib.import_module(module)
            except ImportError:
                path = self._module_files.get(module)
                if path is None:
                    raise
                _load_module_file(module, path)
        found: Any = sys.modules[module]
        for part in name.split("."):
            found = getattr(found, part)
        return found


def _raised(exc: BaseException) -> tuple[str, BaseException | None, str, str, str]:
    tb = exc.__traceback__
    # Drop this module's own frame: the traceback starts in the caller's function.
    text = "".join(traceback.format_exception(type(exc), exc, tb.tb_next if tb is not None else None))
    sendable: BaseException | None = exc
    try:
        pickle.loads(pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:
        sendable = None
    return ("raised", sendable, type(exc).__qualname__, str(exc), text)


def _wait_for_go(fd: int) -> None:
    message = receive(fd)
    if message is None or pickle.loads(message) != ("go",):
        # The parent went away: nobody is left to measure or to read the outcome.
        os._exit(3)


def _outcome_bytes(outcome: tuple[Any, ...]) -> bytes:
    try:
        return pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        value = outcome[1]
        problem = RuntimeError(
            f"the call returned a {type(value).__qualname__} that cannot be pickled back to the test: {exc}"
        )
        return pickle.dumps(_raised(problem), protocol=pickle.HIGHEST_PROTOCOL)


def main(argv: list[str]) -> int:
    control_fd, status_fd = int(argv[1]), int(argv[2])
    faulthandler.enable()  # a crash prints the Python stack to stderr, which the parent reports
    first = receive(control_fd)
    if first is None:
        return 3
    _, sys_path, module_files, call_bytes = pickle.loads(first)
    sys.path[:] = sys_path
    try:
        func, args, kwargs = CallUnpickler(call_bytes, module_files).load()
    except BaseException as exc:
        send(status_fd, _raised(exc))
        return 0
    del first, call_bytes
    send(status_fd, ("ready",))
    _wait_for_go(control_fd)
    outcome: tuple[Any, ...]
    try:
        outcome = ("returned", func(*args, **kwargs))
    except BaseException as exc:  # SystemExit and KeyboardInterrupt too: reported, not obeyed
        outcome = _raised(exc)
    send(status_fd, ("done",))
    _wait_for_go(control_fd)
    send_bytes(status_fd, _outcome_bytes(outcome))
    return 0


if __name__ == "__main__":
    status = main(sys.argv)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter shutdown: a thread the call left running must not keep the child alive.
    os._exit(status)
