"""Fair share between PSPs: a token bucket (records per second) and an in-flight cap (batches) per PSP.

One PSP flooding the node gets RESOURCE_EXHAUSTED (reason REASON_RATE_LIMITED) with a retry-after
hint in milliseconds, while the others keep their share of the ingest queue. Limits are per PSP
(``psp_limits`` in the node config) with a default for PSPs not listed; 0 means unlimited.
The clock only meters admission at the edge; nothing here reaches the log.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from node.errors import RateLimited


@dataclass(frozen=True, slots=True)
class PspLimit:
    rate_per_s: float = 0.0  # records per second, 0 = unlimited
    burst: int = 0  # bucket size in records; 0 = one second's worth (at least one full batch)
    inflight_batches: int = 0  # batches accepted but not yet answered, 0 = unlimited


class _Bucket:
    __slots__ = ("capacity", "inflight", "limit", "stamp", "tokens")

    def __init__(self, limit: PspLimit, now: float) -> None:
        self.limit = limit
        self.capacity = float(limit.burst or max(limit.rate_per_s, 8189.0))
        self.tokens = self.capacity
        self.stamp = now
        self.inflight = 0


class FairShare:
    def __init__(self, default: PspLimit, per_psp: dict[int, PspLimit],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._default = default
        self._per_psp = per_psp
        self._clock = clock
        self._buckets: dict[int, _Bucket] = {}

    def admit(self, psp_id: int, records: int) -> Callable[[object], None]:
        """Take ``records`` from the PSP's share or raise RateLimited; returns the release callback
        to run when the batch is answered (frees its in-flight slot)."""
        now = self._clock()
        b = self._buckets.get(psp_id)
        if b is None:
            b = self._buckets[psp_id] = _Bucket(self._per_psp.get(psp_id, self._default), now)
        lim = b.limit
        if lim.inflight_batches and b.inflight >= lim.inflight_batches:
            raise RateLimited(f"PSP {psp_id} has {b.inflight} batches in flight (its limit); wait for answers",
                              retry_after_ms=10)
        if lim.rate_per_s:
            b.tokens = min(b.capacity, b.tokens + (now - b.stamp) * lim.rate_per_s)
            b.stamp = now
            if b.tokens < records:
                wait_ms = int((records - b.tokens) / lim.rate_per_s * 1000) + 1
                raise RateLimited(f"PSP {psp_id} is over its rate of {lim.rate_per_s:g} records/s; "
                                  f"retry in {wait_ms} ms", retry_after_ms=wait_ms)
            b.tokens -= records
        b.inflight += 1

        def release(_: object = None) -> None:
            b.inflight -= 1

        return release


def parse_limits(raw: dict[str, dict[str, float]]) -> dict[int, PspLimit]:
    """``{"7": {"rate_per_s": 5000, "inflight_batches": 8}}`` (TOML table ``[psp_limits.7]``)."""
    out = {}
    for key, spec in raw.items():
        if not str(key).isdigit():
            raise ValueError(f"psp_limits key {key!r} must be a psp_id (a number)")
        unknown = set(spec) - {"rate_per_s", "burst", "inflight_batches"}
        if unknown:
            raise ValueError(f"psp_limits.{key}: unknown keys {sorted(unknown)}")
        lim = PspLimit(float(spec.get("rate_per_s", 0)), int(spec.get("burst", 0)),
                       int(spec.get("inflight_batches", 0)))
        if lim.rate_per_s < 0 or lim.burst < 0 or lim.inflight_batches < 0:
            raise ValueError(f"psp_limits.{key}: limits must be >= 0")
        out[int(key)] = lim
    return out
