"""Which implementation of the hot data-path pieces runs: C (``conspirator._native``,
compiled from ``native/`` by the package build) or the pure-Python fallback
(:mod:`conspirator.wire._native_py`), which behave the same.

``CONSPIRATOR_NATIVE=0`` forces the fallback, ``=1`` requires C (ImportError without it);
unset picks C when it was built.  On CPUs without x86-64's store ordering the fallback's
ring is not safe across processes, so it is refused there unless
``CONSPIRATOR_NATIVE_UNSAFE_FALLBACK=1`` (single-process tests).
"""

from __future__ import annotations

import os
import platform
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

from conspirator.wire import _native_py

if TYPE_CHECKING:
    from typing_extensions import Buffer

RingEntry = _native_py.RingEntry


class RingLike(Protocol):
    @property
    def capacity(self) -> int: ...
    def push(self, tag: int, slot: int, length: int, status: int = ..., aux: int = ...
             ) -> bool: ...
    def submit(self, dst: Buffer, dst_off: int, src: Buffer, src_off: int, n: int, tag: int,
               slot: int) -> int: ...
    def pop(self) -> RingEntry | None: ...
    def pop_many(self, max: int = ...) -> list[RingEntry]: ...
    def pending(self) -> int: ...
    def close(self) -> None: ...


class Impl(Protocol):
    """What both implementations provide (the C module and the fallback module)."""

    @property
    def IMPLEMENTATION(self) -> str: ...  # noqa: N802 - module constant
    @property
    def LARGE_COPY(self) -> str: ...  # noqa: N802 - module constant
    @property
    def RingCorrupted(self) -> type[RuntimeError]: ...  # noqa: N802 - exception class

    def Ring(self, buffer: Buffer, base: int, capacity: int) -> RingLike: ...  # noqa: N802

    def copy(self, dst: Buffer, dst_off: int, src: Buffer, src_off: int, n: int) -> int: ...
    def doorbell_ring(self, fd: int) -> None: ...
    def parse_staged(self, data: Buffer) -> list[tuple[int, int, int, int]] | None: ...
    def doorbell_wait(self, fd: int, timeout_ms: int) -> int: ...


def _load_c() -> ModuleType | None:
    try:
        from conspirator import _native
    except ImportError:
        return None
    return _native


C_MODULE = _load_c()
PY: Impl = _native_py


def _tso() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def implementations() -> list[Impl]:
    """Every implementation available here (tests parametrize over these)."""
    out: list[Impl] = [PY]
    if C_MODULE is not None:
        c: Impl = C_MODULE
        out.insert(0, c)
    return out


def select_impl() -> Impl:
    want = os.environ.get("CONSPIRATOR_NATIVE", "")
    if want == "1" and C_MODULE is None:
        raise ImportError("CONSPIRATOR_NATIVE=1 but conspirator._native was not built")
    if want != "0" and C_MODULE is not None:
        c: Impl = C_MODULE
        return c
    if not _tso() and os.environ.get("CONSPIRATOR_NATIVE_UNSAFE_FALLBACK") != "1":
        raise ImportError(f"the pure-Python ring is only safe on x86-64, not on "
                          f"{platform.machine()}; build conspirator._native")
    return PY


impl: Impl = select_impl()
