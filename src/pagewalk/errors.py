"""The library's exceptions: one flat tree, each carrying the pid and a message that says what to do."""

from __future__ import annotations

__all__ = [
    "AccessDenied",
    "InvalidPid",
    "NoAddressSpace",
    "PagewalkError",
    "ProcessGone",
    "Unsupported",
]


class PagewalkError(Exception):
    """Base class of every error raised by pagewalk."""

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message, pid)
        self.message = message
        self.pid = pid

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[type[PagewalkError], tuple[str, int | None]]:
        # Keep errors picklable across the process boundary of `pagemap.run` and xdist.
        return (type(self), (self.message, self.pid))


class InvalidPid(PagewalkError, ValueError):
    """The value given as a pid cannot name a process (zero, negative, not an integer)."""


class ProcessGone(PagewalkError):
    """The process does not exist, or exited while it was being read."""


class NoAddressSpace(PagewalkError):
    """The process has no user address space: a kernel thread, or a zombie."""


class AccessDenied(PagewalkError, PermissionError):
    """The caller may not read this process or this file (ptrace access or CAP_SYS_ADMIN missing)."""


class Unsupported(PagewalkError):
    """This kernel, platform or configuration cannot provide what was asked."""
