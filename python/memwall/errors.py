"""memwall.Error and its subclasses: one per status code of the C ABI (MemWallError.Code)."""

from __future__ import annotations

from typing import Dict, Optional, Type


class Error(Exception):
    """A failed MemWall call.

    Attributes:
        code: the stable name of the failure, e.g. ``"invalid-argument"`` (MemWallError.Code).
        status: the C ABI's status number (negative, ``MW_E_*`` in memwall.h).
        message: what failed and what to do about it.
    """

    code: str = "internal"
    status: int = -99

    def __init__(self, message: str, *, code: Optional[str] = None, status: Optional[int] = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


class SystemCallError(Error, OSError):
    """A C library or system call failed; the message names it and its errno."""
    code, status = "system-call", -1


class InvalidArgumentError(Error, ValueError):
    """A value is not valid (a shape, a dtype, a count, a config key); the message names valid ones."""
    code, status = "invalid-argument", -2


class MalformedInputError(Error, ValueError):
    """A document or file could not be parsed."""
    code, status = "malformed-input", -3


class NotFoundError(Error, LookupError):
    """The named thing (node, block, file) does not exist; a load of an uncached key."""
    code, status = "not-found", -4


class AlreadyExistsError(Error):
    """The thing exists already (a region registered twice)."""
    code, status = "already-exists", -5


class BusyError(Error):
    """Held by someone else, or still in use (a transfer in flight, a registered region)."""
    code, status = "busy", -6


class OutOfBoundsError(Error, IndexError):
    """An access falls outside a region, file or array."""
    code, status = "out-of-bounds", -7


class MisalignedError(Error, ValueError):
    """A buffer, offset or length breaks an alignment rule (O_DIRECT: 4096 bytes)."""
    code, status = "misaligned", -8


class UnsupportedError(Error):
    """This host or build cannot do the operation."""
    code, status = "unsupported", -9


class HardwareRequiredError(Error):
    """Hardware was required but only emulation exists."""
    code, status = "hardware-required", -10


class TimedOutError(Error, TimeoutError):
    """An operation did not complete in time."""
    code, status = "timed-out", -11


class CancelledError(Error):
    """The operation was cancelled by its owner."""
    code, status = "cancelled", -12


class DisconnectedError(Error, ConnectionError):
    """The peer went away."""
    code, status = "disconnected", -13


class ShortTransferError(Error):
    """Fewer bytes moved than asked."""
    code, status = "short-transfer", -14


class NoMemoryOnNodeError(Error, MemoryError):
    """A NUMA node has no room for the request."""
    code, status = "no-memory-on-node", -15


class RemoteAccessError(Error):
    """The remote side refused an access."""
    code, status = "remote-access", -16


class CorruptedError(Error):
    """Bytes read back do not match their checksum; the message names the block."""
    code, status = "corrupted", -17


class MisuseError(Error):
    """The API was used against its rules: a closed handle, a double close, a closed cache."""
    code, status = "misuse", -18


class MissingDependencyError(Error):
    """A needed tool or package (or libmemwall itself) is missing on this host."""
    code, status = "missing-dependency", -19


_BY_STATUS: Dict[int, Type[Error]] = {
    cls.status: cls
    for cls in (SystemCallError, InvalidArgumentError, MalformedInputError, NotFoundError, AlreadyExistsError,
                BusyError, OutOfBoundsError, MisalignedError, UnsupportedError, HardwareRequiredError,
                TimedOutError, CancelledError, DisconnectedError, ShortTransferError, NoMemoryOnNodeError,
                RemoteAccessError, CorruptedError, MisuseError, MissingDependencyError)
}


def error_for(status: int, message: str) -> Error:
    """The Error subclass for a C ABI status, carrying `message`."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        return Error(message, code="internal" if status == -99 else "unknown", status=status)
    return cls(message)
