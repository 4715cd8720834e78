"""The lifetime every owner of a library handle shares (KVCache, Pool, PoolView)."""
from __future__ import annotations

from typing import Any, Optional, TypeVar

from . import _native
from .errors import MisuseError

_Self = TypeVar("_Self", bound="NativeHandle")


class NativeHandle:
    """Owns one handle of libmemwall: ``with`` closes it, the garbage collector closes it when
    the owner forgot (without raising: a finaliser must not), and :meth:`_h` refuses a closed one.

    Subclasses set ``_handle`` in ``__init__``, name their ``mw_*_close`` function in
    ``_native_close`` and the hint a closed handle's error gives in ``_closed_hint``, and
    implement ``close()`` (which raises on a second call).
    """

    _handle: Optional[int] = None
    _native_close: str = ""
    _closed_hint: str = ""

    def close(self) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._handle is None

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self.close()

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is not None:
            getattr(_native.lib, self._native_close)(handle)

    def _h(self) -> int:
        handle = self._handle
        if handle is None:
            raise MisuseError(self._closed_hint)
        return handle
