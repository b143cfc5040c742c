"""The error hierarchy. Every error a user can meet is a LlamactlError with an exit code
and, where there is one, a hint naming the next thing to run. The CLI turns these into
one line on stderr; the core never prints."""

from __future__ import annotations


class ExitCode:
    OK = 0
    ERROR = 1
    USAGE = 2
    LICENSE = 3
    NOT_FOUND = 4
    ACCESS = 5
    NETWORK = 6
    INTEGRITY = 7
    RESOURCES = 8
    INTERRUPTED = 130


class LlamactlError(Exception):
    """Base class: a message for the user, an exit code, an optional hint."""

    exit_code: int = ExitCode.ERROR

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(LlamactlError):
    """A bad flag, value or combination (exit 2)."""

    exit_code = ExitCode.USAGE


class LicenseNotAccepted(LlamactlError):
    """A Llama license family has not been accepted on this machine (exit 3)."""

    exit_code = ExitCode.LICENSE


class NotFound(LlamactlError):
    """A model, tag, repository or file does not exist (exit 4)."""

    exit_code = ExitCode.NOT_FOUND


class AccessDenied(LlamactlError):
    """Gated repository without access, or a bad token (exit 5)."""

    exit_code = ExitCode.ACCESS


class NetworkError(LlamactlError):
    """The Hub could not be reached or the connection failed (exit 6)."""

    exit_code = ExitCode.NETWORK


class IntegrityError(LlamactlError):
    """A checksum mismatch, a truncated or corrupt file (exit 7)."""

    exit_code = ExitCode.INTEGRITY


class InsufficientResources(LlamactlError):
    """Not enough disk, memory or VRAM (exit 8)."""

    exit_code = ExitCode.RESOURCES


class Interrupted(LlamactlError):
    """Ctrl-C (exit 130)."""

    exit_code = ExitCode.INTERRUPTED

