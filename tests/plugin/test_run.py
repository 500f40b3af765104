"""`pagemap.run`: calling a function in a fresh interpreter and measuring the child around the call."""

from __future__ import annotations

import ctypes
import os
import threading
import time

import numpy as np
import psutil
import pytest

from pytest_pagemap import ChildCrashed, MemoryLimitExceeded, RemoteError, RemoteTraceback

from .support import privileged

pytest_plugins = ["pytester"]  # here, not in conftest.py: see conftest.py

MiB = 1024 * 1024
_kept: list[bytearray] = []


def add(a: int, b: int, *, times: int = 1) -> dict[str, int]:
    return {"sum": (a + b) * times, "pid": os.getpid()}


def keep(nbytes: int) -> int:
    block = bytearray(nbytes)
    block[::4096] = b"x" * len(block[::4096])
    _kept.append(block)
    print(f"kept {nbytes}")
    return len(_kept)


def fail_deep(message: str) -> None:
    def inner() -> None:
        raise KeyError(message)

    inner()


class NeedsTwoArguments(Exception):
    def __init__(self, first: str, second: str) -> None:
        super().__init__(f"{first}/{second}")


def raise_unpicklable() -> None:
    raise NeedsTwoArguments("a", "b")


def return_unpicklable() -> threading.Lock:
    return threading.Lock()


def exit_abruptly(status: int) -> None:
    os._exit(status)


def segfault() -> None:
    ctypes.string_at(0)


def make_array(n: int) -> np.ndarray:
    return np.arange(n)


def test_returns_the_value_and_measures_the_child(pagemap):
    result = pagemap.run(add, 2, 3, times=2)
    assert result.value["sum"] == 10
    assert result.value["pid"] == result.pid == result.measurement.pid != os.getpid()
    assert result.before.pid == result.after.pid == result.pid
    assert result.measurement.label == f"{add.__module__}.add()"
    assert pagemap.measurements == [result.measurement]


def test_growth_during_the_call_is_measured(pagemap):
    result = pagemap.run(keep, 16 * MiB)
    assert result.value == 1 and result.stdout == f"kept {16 * MiB}\n"
    # 16 MiB, give or take shared-library pages that other processes start or stop sharing meanwhile.
    assert 15 * MiB < result.delta.uss_growth < 20 * MiB
    result.measurement.assert_uss_growth_below("20 MiB")
    with pytest.raises(MemoryLimitExceeded, match=r"^USS growth of '.*keep\(\)' \(pid \d+\) limited to 8.0 MiB"):
        result.measurement.assert_uss_growth_below("8 MiB")


def test_numpy_values_come_back(pagemap):
    assert pagemap.run(make_array, 5).value.tolist() == [0, 1, 2, 3, 4]


def test_exceptions_are_reraised_with_the_remote_traceback(pagemap):
    with pytest.raises(KeyError, match="'gone'") as caught:
        pagemap.run(fail_deep, "gone")
    cause = caught.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "in fail_deep" in cause.text and "in inner" in cause.text and "raise KeyError(message)" in cause.text
    assert pagemap.measurements[0].finished  # measured even though the call raised


def test_unpicklable_exception_comes_back_as_remote_error(pagemap):
    with pytest.raises(RemoteError, match=r"NeedsTwoArguments: a/b \(the exception could not be pickled back"):
        pagemap.run(raise_unpicklable)


def test_unpicklable_return_value_is_an_error(pagemap):
    with pytest.raises(RuntimeError, match="returned a lock that cannot be pickled back to the test"):
        pagemap.run(return_unpicklable)


def test_unpicklable_function_is_refused_before_starting(pagemap):
    with pytest.raises(TypeError, match=r"cannot be pickled .*: use a module-level function and picklable arguments"):
        pagemap.run(lambda: 1)
    assert pagemap.measurements == []


def test_exit_during_the_call(pagemap):
    with pytest.raises(ChildCrashed, match=r"exited with status 7 while running the call") as caught:
        pagemap.run(exit_abruptly, 7)
    assert caught.value.returncode == 7


def test_segfault_during_the_call(pagemap):
    with pytest.raises(ChildCrashed) as caught:
        pagemap.run(segfault)
    error = caught.value
    assert "was killed by signal 11 (SIGSEGV) while running the call" in str(error)
    assert error.returncode == -11
    assert "Segmentation fault" in error.stderr  # faulthandler's report, with the Python stack
    assert not psutil.pid_exists(error.pid) or psutil.Process(error.pid).status() == psutil.STATUS_ZOMBIE


def test_timeout_ends_the_child(pagemap):
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"took more than 0.5 s running the call; it was ended"):
        pagemap.runner(timeout=0.5)(time.sleep, 30)
    assert time.monotonic() - started < 10


@privileged
def test_runner_options_and_label(pagemap):
    result = pagemap.runner(label="sum", accessed=True, counts=True)(add, 1, 1)
    assert result.measurement.label == "sum"
    assert result.after.pss is not None and result.delta.accessed is not None
    result.measurement.assert_pss_below("1 GiB")


def test_a_test_module_function_under_importlib_mode(pytester):
    pytester.makepyfile(
        test_inner="""
        import pytest

        def square(x):
            return x * x

        def boom():
            raise ValueError("bad thing")

        def test_square(pagemap):
            assert pagemap.run(square, 7).value == 49

        def test_boom(pagemap):
            pagemap.run(boom)
        """
    )
    result = pytester.runpytest("--import-mode=importlib")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*RemoteTraceback*",
            "Traceback (most recent call last):",
            "*in boom",
            '    raise ValueError("bad thing")',
            "ValueError: bad thing",
            "*The above exception was the direct cause of the following exception:*",
            ">       pagemap.run(boom)",
            "E       ValueError: bad thing",
        ]
    )
