"""Time-ordered 128-bit transfer ids, chosen by the PSP before it sends (idempotency keys).

Layout of the u128 value (most significant bits first)::

    | 48 bits: milliseconds since the Unix epoch | 80 bits: per-process random start, then a counter |

Time sits in the most significant bits because the node keys its transfer table by the id's
big-endian bytes: ids that grow with time append at the right edge of the B-tree instead of
splitting pages all over it. Within a process ids are strictly increasing (monotonic): within one
millisecond the low 80 bits count up from a fresh random start; if the wall clock steps back, the
last millisecond is kept and the counter continues. 80 random bits per millisecond and process make
collisions across processes negligible (birthday bound ~2^40 ids per millisecond).

On the wire an id is a little-endian u128 (``ledger.codec.u128_bytes``), like every id.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable
from typing import Final

TIME_BITS: Final = 48
LOW_BITS: Final = 80
LOW_MASK: Final = (1 << LOW_BITS) - 1
TIME_MAX_MS: Final = (1 << TIME_BITS) - 1
# A fresh millisecond starts its counter below 2^79, leaving at least 2^79 increments of headroom.
_START_BITS: Final = LOW_BITS - 1


class IdGenerator:
    """Thread-safe, monotonic generator of time-ordered u128 ids."""

    def __init__(self, clock_ms: Callable[[], int] | None = None) -> None:
        self._clock: Callable[[], int] = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._lock = threading.Lock()
        self._last_ms = -1
        self._low = 0

    def reseed(self) -> None:
        """Forget the current millisecond (after fork, so parent and child never share a sequence)."""
        with self._lock:
            self._last_ms = -1

    def new(self) -> int:
        with self._lock:
            return self._next()

    def reserve(self, n: int) -> int:
        """Reserve ``n`` consecutive ids (the bulk path): returns the first; ``first + n - 1`` is the
        last, and every id handed out later is greater."""
        if n < 1:
            raise ValueError("reserve at least one id")
        with self._lock:
            first = self._next()
            if self._low + n - 1 > LOW_MASK:  # the block would overflow this millisecond: take the next
                self._last_ms += 1
                self._low = secrets.randbits(_START_BITS)
                first = (self._last_ms << LOW_BITS) | self._low
            self._low += n - 1
            return first

    def _next(self) -> int:
        """The next id; the caller holds the lock."""
        now = int(self._clock())
        if not 0 <= now <= TIME_MAX_MS:
            raise ValueError(f"clock {now} ms does not fit 48 bits")
        if now > self._last_ms:
            self._last_ms = now
            self._low = secrets.randbits(_START_BITS)
        else:  # same millisecond, or the clock stepped back: keep counting
            self._low += 1
            if self._low > LOW_MASK:  # 2^79 ids in one ms: borrow the next millisecond
                self._last_ms += 1
                self._low = secrets.randbits(_START_BITS)
        return (self._last_ms << LOW_BITS) | self._low

    def many(self, n: int) -> list[int]:
        return [self.new() for _ in range(n)]


_default = IdGenerator()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_default.reseed)


def new_id() -> int:
    """A new time-ordered u128 id from the process-wide generator."""
    return _default.new()


def new_ids(n: int) -> list[int]:
    return _default.many(n)


def reserve_ids(n: int) -> int:
    """The first of ``n`` consecutive new ids from the process-wide generator (the bulk path)."""
    return _default.reserve(n)


def id_time_ms(value: int) -> int:
    """Milliseconds since the epoch encoded in an id's high 48 bits."""
    return value >> LOW_BITS


def id_bytes_be(value: int) -> bytes:
    """Big-endian 16 bytes: the order in which the node's transfer table stores ids."""
    return value.to_bytes(16, "big")


__all__ = ["IdGenerator", "id_bytes_be", "id_time_ms", "new_id", "new_ids", "reserve_ids"]
