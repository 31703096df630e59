"""Deterministic risk features for rules: sliding-window velocity and amount deviation.

Everything here is integer arithmetic over leader-assigned block timestamps, so every replica
computes the same features. State lives in the store table ``risk`` and is written in the same
block transaction as the ledger changes; it is updated only by successful transfer creations.

Windows (1 min, 1 h, 24 h) are sliding windows approximated with two fixed buckets per window:
the current bucket ``ts // W`` and the previous one, weighted by how much of it still overlaps
the window::

    estimate = prev * (W - (ts - bucket_start)) // W + cur

Amount deviation: an integer EWMA of the account's own outgoing amounts with alpha = 1/8
(``ewma += (amount - ewma) // 8``, Python floor division), and the deviation of the current
amount from it in basis points (``(amount - ewma) * 10000 // ewma``; 0 without history).
Features describe the history *before* the transfer being evaluated.

``record`` and ``window_one`` run compiled (``ledger/_native/risk.c``, the same integer arithmetic,
property-tested against ``record_py``/``window_one_py`` in tests/rules/test_compiled_rules.py) unless
the extension is not built or ``SOVLEDGER_ENGINE=python``.

Memory: one state of 17 integers per tracked key (payer, payee, PSP) and one entry per payer–payee
pair, in the store table ``risk`` / ``risk_pairs`` and, for the blocks since the last fold, the journal
``risk_log`` (ledger/risk_log.py); a block holds only the states it touched. The
semantics need every key's history (a window reaches back 24 h, the EWMA and ``history_n`` for ever),
so there is no cap here that would change a feature: the store keeps every state, and what stays in
memory between blocks is only a cache of committed states, which may be bounded in bytes freely, since
a miss reads the store: with the native engine the C ``RiskTable`` (``ledger/_native/risk_table.c``,
``Committed.table``: also the open block's changes and the pair lookups), else ``Committed.risk`` in
``ledger/apply/scratch.py``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Final

from ledger import native

NS: Final = 1_000_000_000
WINDOWS_NS: Final = (60 * NS, 3600 * NS, 86400 * NS)
WINDOW_NAMES: Final = ("1m", "1h", "24h")
EWMA_SHIFT: Final = 3  # alpha = 1/8
SUM_MAX: Final = (1 << 64) - 1
# per window: bucket, prev_count, prev_sum, cur_count, cur_sum; then ewma, n
STATE_LEN: Final = 3 * 5 + 2
RISK_STRUCT: Final = struct.Struct("<" + "Q" * STATE_LEN)

KEY_OUT: Final = b"o"  # an account as payer (debit side)
KEY_IN: Final = b"i"  # an account as payee (credit side)
KEY_PSP: Final = b"p"


class RiskView:
    """What the rule activation builder reads: risk states by key, and whether a payee pair was seen.

    Subclasses read block-then-committed state (apply) or a committed snapshot (dry runs)."""

    __slots__ = ()

    def state(self, key: bytes) -> list[int] | None:
        raise NotImplementedError

    def seen(self, debit_id: bytes, credit_id: bytes) -> bool:
        raise NotImplementedError

    def out(self, aid: bytes) -> list[int] | None:
        return self.state(KEY_OUT + aid)

    def inc(self, aid: bytes) -> list[int] | None:
        return self.state(KEY_IN + aid)

    def psp(self, psp_id: int) -> list[int] | None:
        return self.state(psp_key(psp_id))


def new_state() -> list[int]:
    return [0] * STATE_LEN


def encode_state(st: list[int]) -> bytes:
    return RISK_STRUCT.pack(*st)


def decode_state(raw: bytes) -> list[int]:
    return list(RISK_STRUCT.unpack(raw))


def psp_key(psp_id: int) -> bytes:
    return KEY_PSP + psp_id.to_bytes(4, "big")


_BASES: Final = tuple((w * 5, size) for w, size in enumerate(WINDOWS_NS))  # (state offset, window size)


def window_features(st: list[int] | None, ts: int) -> tuple[int, int, int, int, int, int]:
    """(count_1m, count_1h, count_24h, sum_1m, sum_1h, sum_24h) before the current event."""
    if st is None:
        return 0, 0, 0, 0, 0, 0
    out = [0, 0, 0, 0, 0, 0]
    for w, (base, size) in enumerate(_BASES):
        bucket = ts // size
        cur_b = st[base]
        if bucket == cur_b:
            remaining = size - (ts - bucket * size)
            out[w] = st[base + 1] * remaining // size + st[base + 3]
            out[w + 3] = st[base + 2] * remaining // size + st[base + 4]
        elif bucket == cur_b + 1:  # the stored current bucket is now the previous one
            remaining = size - (ts - bucket * size)
            out[w] = st[base + 3] * remaining // size
            out[w + 3] = st[base + 4] * remaining // size
    return out[0], out[1], out[2], out[3], out[4], out[5]


def window_one_py(st: list[int] | None, ts: int, slot: int) -> int:
    """One value of ``window_features(st, ts)``: ``slot`` 0–2 counts (1m, 1h, 24h), 3–5 sums.

    The Python reference of the compiled ``window_one`` (ledger/_native/risk.c)."""
    if st is None:
        return 0
    base, size = _BASES[slot % 3]
    bucket = ts // size
    cur_b = st[base]
    at = base + 1 + (slot >= 3)
    if bucket == cur_b:
        return st[at] * (size - (ts - bucket * size)) // size + st[at + 2]
    if bucket == cur_b + 1:
        return st[at + 2] * (size - (ts - bucket * size)) // size
    return 0


def record_py(st: list[int], ts: int, amount: int) -> None:
    """Add one successful event of ``amount`` at block time ``ts`` (in place). Counters saturate at SUM_MAX.

    The Python reference of the compiled ``record`` (ledger/_native/risk.c)."""
    top = SUM_MAX
    for base, size in _BASES:
        bucket = ts // size
        cur_b = st[base]
        if bucket != cur_b:
            if bucket == cur_b + 1:
                st[base + 1], st[base + 2] = st[base + 3], st[base + 4]
            else:
                st[base + 1] = st[base + 2] = 0
            st[base], st[base + 3], st[base + 4] = bucket, 0, 0
        count = st[base + 3] + 1
        st[base + 3] = count if count < top else top
        total = st[base + 4] + amount
        st[base + 4] = total if total < top else top
    ewma, n = st[15], st[16]
    if amount > top:
        amount = top
    st[15] = amount if n == 0 else max(0, ewma + ((amount - ewma) >> EWMA_SHIFT))
    st[16] = n + 1 if n + 1 < top else top


def deviation_bps(st: list[int] | None, amount: int) -> tuple[int, int, int]:
    """(ewma, deviation in basis points, history count) of ``amount`` against the account's EWMA."""
    if st is None or st[16] == 0 or st[15] == 0:
        return (0, 0, 0) if st is None else (st[15], 0, st[16])
    ewma = st[15]
    return ewma, (amount - ewma) * 10_000 // ewma, st[16]


record: Callable[[list[int], int, int], None] = record_py
window_one: Callable[[list[int] | None, int, int], int] = window_one_py
NATIVE: bool = False
Hook: Any = None  # the C rules hook (ledger/_native/rules.c), used by ledger/apply/native_transfers.py
RiskTable: Any = None  # risk states and pairs in C across blocks (ledger/_native/risk_table.c), see new_table
journal_state: Any = None  # one key's / pair's journaled value in C (ledger/_native/risk_journal.c), see
journal_has_pair: Any = None  # ledger/risk_log.py state_in / has_pair
# RiskTable bounds: committed states (160 B + 16 B of index each: 128 Ki ~ 22 MiB) and cached pair lookups
# (33 B + 16 B each: 256 Ki ~ 12 MiB); above a bound after a commit the oldest half / all are dropped, except
# the journaled (pinned) entries: at most FOLD_STATES / FOLD_PAIRS + one block's (ledger/risk_log.py)
RISK_TABLE_STATES: Final = 128 << 10
RISK_TABLE_PAIRS: Final = 256 << 10
if native.active() == "native":  # engine choice made once, in ledger/native.py (SOVLEDGER_ENGINE)
    try:  # the same arithmetic in C (built with the package; absent without a C compiler)
        from ledger._native import _risk

        record, window_one, NATIVE = _risk.record, _risk.window_one, True
        RiskTable = getattr(_risk, "RiskTable", None)  # absent: a stale build, whose Hook takes other arguments
        Hook = getattr(_risk, "Hook", None) if RiskTable is not None else None
        journal_state = getattr(_risk, "journal_state", None)
        journal_has_pair = getattr(_risk, "journal_has_pair", None)
    except ImportError:
        pass


def new_table() -> Any:
    """A C RiskTable for ``Committed`` when the native engine runs rules in C, else None."""
    if RiskTable is None or native.active() != "native":
        return None
    return RiskTable(RISK_TABLE_STATES, RISK_TABLE_PAIRS)
