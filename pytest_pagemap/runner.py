"""Running a picklable callable in a fresh interpreter, paused before and after the call so it can be measured.

The parent side of the exchange described in `_child.py`.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import select
import subprocess
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pagewalk.measure import Measurement

from . import _child
from .processes import describe_status, end_process_tree

if TYPE_CHECKING:
    from pagewalk.delta import Delta
    from pagewalk.snapshot import Snapshot

__all__ = ["ChildCall", "ChildCrashed", "RemoteError", "RemoteTraceback", "RunResult", "describe_callable"]

T = TypeVar("T")

_CHILD_SCRIPT = Path(_child.__file__).resolve()
_TAIL_LINES = 30


class RemoteTraceback(Exception):
    """The traceback of an exception raised in the child, attached as the `__cause__` of the re-raised one."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f"\n{self.text.rstrip()}"


class RemoteError(Exception):
    """An exception raised by the function in the child that could not be pickled back as itself."""


class ChildCrashed(Exception):
    """The child interpreter of `pagemap.run` ended (exit, signal) before the call returned."""

    def __init__(self, message: str, *, pid: int, returncode: int | None, stdout: str = "", stderr: str = "") -> None:
        super().__init__(message)
        self.pid = pid
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


def describe_callable(func: Callable[..., object]) -> str:
    """`module.function` for messages and labels."""
    name = getattr(func, "__qualname__", None) or type(func).__qualname__
    module = getattr(func, "__module__", None)
    return f"{module}.{name}" if module and module != "builtins" else name


class _RecordingPickler(pickle.Pickler):
    """Pickles a call and notes the file of every module a function or class in it comes from."""

    def __init__(self, file: Any) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.module_files: dict[str, str] = {}

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (types.FunctionType, type)):
            name = getattr(obj, "__module__", None)
            module = sys.modules.get(name) if isinstance(name, str) else None
            path = getattr(module, "__file__", None)
            if isinstance(name, str) and isinstance(path, str):
                self.module_files[name] = path
        return NotImplemented


def _pickle_call(
    func: Callable[..., object], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[bytes, dict[str, str]]:
    buffer = io.BytesIO()
    pickler = _RecordingPickler(buffer)
    try:
        pickler.dump((func, args, kwargs))
    except Exception as exc:
        raise TypeError(
            f"run() sends the call to a fresh interpreter by pickling it, and {describe_callable(func)} "
            f"or its arguments cannot be pickled ({exc}): use a module-level function and picklable arguments"
        ) from exc
    return buffer.getvalue(), pickler.module_files


def _tail(text: str) -> str:
    lines = text.splitlines()[-_TAIL_LINES:]
    return "\n".join("    " + line for line in lines) if lines else "    (empty)"


class ChildCall:
    """One call running in a child interpreter; the steps of the exchange are its methods."""

    def __init__(
        self,
        func: Callable[..., object],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        log_dir: Path,
        grace: float,
        timeout: float | None,
    ) -> None:
        self.name = describe_callable(func)
        self.grace = grace
        self.timeout = timeout
        self.stdout_path = log_dir / "stdout.txt"
        self.stderr_path = log_dir / "stderr.txt"
        call_bytes, module_files = _pickle_call(func, args, kwargs)
        control_read, self._control = os.pipe()
        self._status, status_write = os.pipe()
        try:
            with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
                self.popen: subprocess.Popen[bytes] = subprocess.Popen(
                    [sys.executable, str(_CHILD_SCRIPT), str(control_read), str(status_write)],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    pass_fds=(control_read, status_write),
                    start_new_session=True,
                )
        finally:
            # Only the child keeps its ends: the parent then sees end of file when the child dies.
            os.close(control_read)
            os.close(status_write)
        self.pid = self.popen.pid
        self._send(("call", list(sys.path), module_files, call_bytes))

    # --- the steps --------------------------------------------------------------------------------------

    def wait_ready(self) -> None:
        """Wait until the child has loaded the call and is paused before it."""
        __tracebackhide__ = True  # failures point at the test's call to run()
        message = self._receive("loading the call")
        if message[0] == "raised":
            raise self._exception(message, f"could not load {self.name}() in the child interpreter")
        self._expect(message, "ready")

    def start_call(self) -> None:
        """Let the child run the call and wait until it is paused after it."""
        __tracebackhide__ = True
        self._send(("go",))
        self._expect(self._receive("running the call"), "done")

    def outcome(self) -> Any:
        """Let the child send the outcome: return the value, or raise the exception the call raised."""
        __tracebackhide__ = True
        self._send(("go",))
        message = self._receive("sending the outcome")
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=self.grace)
        if message[0] == "returned":
            return message[1]
        raise self._exception(message, None)

    def close(self) -> None:
        """End the child and anything it started, and close the pipes."""
        try:
            end_process_tree(self.popen, self.grace)
        finally:
            for fd in (self._control, self._status):
                with contextlib.suppress(OSError):
                    os.close(fd)

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    # --- plumbing ---------------------------------------------------------------------------------------

    def _send(self, message: object) -> None:
        __tracebackhide__ = True
        try:
            _child.send(self._control, message)
        except BrokenPipeError:
            raise self._crashed("before it received the call") from None

    def _receive(self, doing: str) -> tuple[Any, ...]:
        __tracebackhide__ = True
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        poller = select.poll()
        poller.register(self._status, select.POLLIN | select.POLLHUP)
        while not poller.poll(100):
            if deadline is not None and time.monotonic() > deadline:
                end_process_tree(self.popen, self.grace)
                raise TimeoutError(
                    f"run({self.name}): the child interpreter (pid {self.pid}) took more than {self.timeout:g} s "
                    f"{doing}; it was ended\n  stdout:\n{_tail(self.stdout)}\n  stderr:\n{_tail(self.stderr)}"
                )
        try:
            data = _child.receive(self._status)
        except EOFError:
            data = None
        if data is None:
            raise self._crashed(f"while {doing}")
        try:
            message = pickle.loads(data)
        except Exception as exc:
            raise RuntimeError(f"run({self.name}): the child's answer cannot be unpickled here: {exc}") from exc
        assert isinstance(message, tuple) and message, f"unexpected message from the child: {message!r}"
        return message

    def _expect(self, message: tuple[Any, ...], kind: str) -> None:
        if message[0] != kind:
            raise RuntimeError(f"run({self.name}): expected {kind!r} from the child, got {message[0]!r}")

    def _crashed(self, when: str) -> ChildCrashed:
        try:
            returncode: int | None = self.popen.wait(timeout=self.grace)
        except subprocess.TimeoutExpired:
            returncode = None
        stdout, stderr = self.stdout, self.stderr
        return ChildCrashed(
            f"run({self.name}): the child interpreter (pid {self.pid}) {describe_status(returncode)} {when}"
            f"\n  stdout:\n{_tail(stdout)}\n  stderr:\n{_tail(stderr)}",
            pid=self.pid,
            returncode=returncode,
            stdout=stdout,
            stderr=stderr,
        )

    def _exception(self, message: tuple[Any, ...], context: str | None) -> BaseException:
        _, sent, type_name, text, traceback_text = message
        exc = (
            sent
            if isinstance(sent, BaseException)
            else RemoteError(f"{type_name}: {text} (the exception could not be pickled back to the test)")
        )
        # As concurrent.futures does: the child's traceback, as text, is the cause of the re-raised exception.
        exc.__cause__ = RemoteTraceback(traceback_text)
        if context is None:
            return exc
        wrapper = RuntimeError(f"{context}: {type_name}: {text}")
        wrapper.__cause__ = exc
        return wrapper


@dataclass
class RunResult(Generic[T]):
    """What `pagemap.run` gives back: the call's return value and the measurement around the call."""

    value: T
    measurement: Measurement
    pid: int
    stdout: str
    stderr: str

    @property
    def before(self) -> Snapshot:
        """The child just before the call (its arguments already loaded)."""
        before = self.measurement.before
        assert before is not None
        return before

    @property
    def after(self) -> Snapshot:
        """The child just after the call returned (or raised)."""
        return self.measurement.after

    @property
    def delta(self) -> Delta:
        """What the call changed: `after - before`."""
        return self.measurement.delta
