"""The risk journal: table ``risk_log``, one row per block that changed risk state, folded into ``risk`` and
a pair run (ledger/pair_runs.py) every few blocks (docs/formats.md, docs/rules.md).

A block that changed risk states or paid a payer–payee pair under a rule set that tracks them writes one
row (key: the block height, u64 BE) instead of one ``risk`` row per state and one ``risk_pairs`` row per
pair. The row: ``u32 LE state count ‖ u32 LE pair count``, the states sorted by key (``u8 key length ‖
key ‖ 17 × u64 LE`` — the ``risk`` row's value), then the distinct pairs the block paid (every pair a
successful transfer paid in it, committed before or not), sorted, 32 bytes each.

**Fold.** When the journal with the sealing block's row would hold ``FOLD_BLOCKS`` rows or more, or
``FOLD_STATES`` state entries, or ``FOLD_PAIRS`` pair entries (entries counted per row, not distinct),
the sealing block writes no row: it writes the latest state of every journaled key (its own included)
into ``risk``, the journal's distinct pairs as one new run (ledger/pair_runs.py: written without looking
anything up, then runs merged by a rule on their stored sizes) and deletes the journal's rows,
in its one write transaction. The rule reads only the journal's contents, so every node and both engines
fold at the same block, also after a restart. With ``FOLD_BLOCKS = 1`` every block folds: the layout
without a journal. The thresholds are part of the replicated state machine: a region's nodes must agree.

Committed risk state = ``risk`` overridden by the journal (latest row wins); a pair is committed if it is in
the legacy ``risk_pairs`` (folds before runs; read, no longer written), in a run or in a journal row.
The native engine pins journaled entries in its C table (ledger/_native/risk_table.c); the Python paths
read an ``Overlay`` built from the same transaction.
The C functions of the same names (RiskTable.journal / fold, ledger/_native/risk_journal.c) are the
fast path and must agree byte for byte (tests/engine/test_risk_journal.py).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from ledger import pair_runs, risk
from ledger.pair_runs import PairRuns
from ledger.risk import RISK_STRUCT, decode_state
from ledger.schema import Table, index_key
from ledger.store import ReadTxn, WriteTxn

FOLD_BLOCKS: Final = 16
FOLD_STATES: Final = 32768
FOLD_PAIRS: Final = 65536
COUNTS: Final = struct.Struct("<II")
ROW_LEN: Final = RISK_STRUCT.size
PAIR_LEN: Final = 32


def encode(states: Iterable[tuple[bytes, bytes]], pairs: Iterable[bytes]) -> bytes | None:
    """A block's journal row from its (risk key, packed state) rows and the pairs it paid; None if empty."""
    srt = sorted(states)
    prs = sorted(set(pairs))
    if not srt and not prs:
        return None
    parts = [COUNTS.pack(len(srt), len(prs))]
    for key, row in srt:
        parts.append(bytes((len(key),)))
        parts.append(key)
        parts.append(row)
    parts.extend(prs)
    return b"".join(parts)


def counts(value: bytes) -> tuple[int, int]:
    """(state entries, pair entries) of one row."""
    ns, np = COUNTS.unpack_from(value)
    return ns, np


def decode(value: bytes) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
    """(sorted (risk key, packed state) rows, sorted pairs) of one row; ValueError if malformed."""
    if len(value) < COUNTS.size:
        raise ValueError("a risk_log row is malformed (docs/formats.md, table risk_log)")
    ns, np = COUNTS.unpack_from(value)
    at = COUNTS.size
    states = []
    for _ in range(ns):
        klen = value[at] if at < len(value) else 0
        end = at + 1 + klen + ROW_LEN
        if not 1 <= klen <= 17 or end > len(value):
            raise ValueError("a risk_log row is malformed (docs/formats.md, table risk_log)")
        states.append((value[at + 1:at + 1 + klen], value[at + 1 + klen:end]))
        at = end
    if len(value) - at != np * PAIR_LEN:
        raise ValueError("a risk_log row is malformed (docs/formats.md, table risk_log)")
    pairs = [value[at + PAIR_LEN * i:at + PAIR_LEN * (i + 1)] for i in range(np)]
    return states, pairs


def fold(values: list[bytes]) -> tuple[list[bytes], list[bytes], bytes]:
    """(risk keys, their packed states, packed pairs) of the journal's rows (oldest first): the latest
    state per key, sorted by key, and the distinct pairs, sorted, 32 bytes each (the bytes of the fold's
    pair run). Flat lists, not (key, value) tuples: a fold of 100k rows allocates no tuple the garbage
    collector would scan (``_fold_into`` zips them)."""
    latest: dict[bytes, bytes] = {}
    pairs: set[bytes] = set()
    for value in values:
        states, prs = decode(value)
        latest.update(states)
        pairs.update(prs)
    keys = sorted(latest)
    return keys, [latest[k] for k in keys], b"".join(sorted(pairs))


def rows(txn: ReadTxn) -> list[tuple[bytes, bytes]]:
    """The journal's (height key, row), oldest first."""
    return list(txn.range(Table.RISK_LOG))


@dataclass(slots=True)
class Counts:
    """What the fold rule reads: the journal's rows and their state and pair entries."""

    blocks: int = 0
    states: int = 0
    pairs: int = 0

    @staticmethod
    def read(txn: ReadTxn) -> Counts:
        c = Counts()
        for _, value in txn.range(Table.RISK_LOG):
            c.add(value)
        return c

    def add(self, value: bytes) -> None:
        ns, np = counts(value)
        self.blocks += 1
        self.states += ns
        self.pairs += np

    def due(self, value: bytes) -> bool:
        """Whether the block whose row is ``value`` folds the journal (see the module doc)."""
        ns, np = counts(value)
        return (self.blocks + 1 >= FOLD_BLOCKS or self.states + ns >= FOLD_STATES
                or self.pairs + np >= FOLD_PAIRS)


Folder = Callable[[list[bytes]], tuple[list[bytes], list[bytes], bytes]]


def write(txn: WriteTxn, height: int, value: bytes, due: bool, fold_rows: Folder | None = None,
          runs: PairRuns | None = None) -> PairRuns | None:
    """Journal the block's row, or (``due``) fold the journal with it: ``risk`` gets the folded states, the
    distinct pairs become a new run (ledger/pair_runs.py) and the journal is emptied. ``fold_rows``: the C
    fold (RiskTable.fold) when available; ``runs``: the committed runs (with their filters). Returns the
    runs after a fold (to publish when the block commits), None without one."""
    if not due:
        txn.put(Table.RISK_LOG, index_key(height), value)
        return None
    return _fold_into(txn, rows(txn), value, fold_rows or fold, runs)


def _fold_into(txn: WriteTxn, old: list[tuple[bytes, bytes]], value: bytes | None, folder: Folder,
               runs: PairRuns | None) -> PairRuns:
    keys, states, pairs = folder([v for _, v in old] + ([value] if value is not None else []))
    if keys:  # zip hands put_many one reused tuple per row (it is released before the next)
        txn.put_many(Table.RISK, zip(keys, states, strict=True))
    after = pair_runs.add_run(txn, pairs, runs)
    for key, _ in old:
        txn.delete(Table.RISK_LOG, key)
    return after


@dataclass(slots=True)
class Overlay:
    """Committed risk state the store's ``risk`` / pair runs do not hold yet: the journal's latest
    state per key and its pairs (the Python paths' view; the C table pins the same entries)."""

    states: dict[bytes, list[int]] = field(default_factory=dict)
    pairs: set[bytes] = field(default_factory=set)

    @staticmethod
    def read(txn: ReadTxn) -> Overlay:
        ov = Overlay()
        for _, value in txn.range(Table.RISK_LOG):
            states, pairs = decode(value)
            for key, row in states:
                ov.states[key] = decode_state(row)
            ov.pairs.update(pairs)
        return ov


def state_in(values: list[bytes], key: bytes) -> bytes | None:
    """The packed state of ``key`` in the newest of ``values`` (journal rows, oldest first) that holds it,
    or None: one key without decoding the whole journal (compiled when built: ledger/_native/risk_journal.c)."""
    if risk.journal_state is not None:
        found: bytes | None = risk.journal_state(values, key)
        return found
    for value in reversed(values):
        for k, row in decode(value)[0]:
            if k == key:
                return row
    return None


def has_pair(values: list[bytes], pk: bytes) -> bool:
    """Whether one of ``values`` (journal rows) holds the pair (compiled when built: a binary search per row)."""
    if risk.journal_has_pair is not None:
        return bool(risk.journal_has_pair(values, pk))
    return any(pk in decode(value)[1] for value in values)


def committed(txn: ReadTxn) -> tuple[dict[bytes, bytes], set[bytes]]:
    """The committed risk state of a snapshot, whole: (risk key -> packed state, pairs), ``risk`` /
    the stored pairs (legacy and runs) overridden by the journal (tools and tests; the apply paths read lazily)."""
    states = dict(txn.range(Table.RISK))
    pairs = pair_runs.PairRuns.read(txn).all_pairs(txn)
    for _, value in txn.range(Table.RISK_LOG):
        rows_, prs = decode(value)
        states.update(rows_)
        pairs.update(prs)
    return states, pairs


def fold_all(txn: WriteTxn) -> int:
    """Fold the whole journal into ``risk`` / a pair run outside a block (offline tools and tests: a
    ledger open over the store must ``reload()`` after, its fold counts are stale); the rows folded."""
    old = rows(txn)
    if old:
        _fold_into(txn, old, None, fold, None)
    return len(old)
