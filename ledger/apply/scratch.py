"""What one block changes, kept aside until its write transaction commits.

``Block`` is the ledger's scratch state (accounts, transfers, expiry, scales, the undo log of a
linked chain); ``SideState`` is the scratch state of rules and reconciliation (risk windows,
counterparty pairs, external refs, callbacks, rounding), and doubles as the risk view the rule
activation builder reads. ``Committed`` holds the caches of committed state; they are only updated
by the driver after the block's transaction commits.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Final, TypeVar

from ledger import native, pair_runs, risk_log
from ledger.codec import decode_leaf
from ledger.invariant import invariant
from ledger.risk import RiskView, decode_state, new_table
from ledger.rules.compiler import CompiledRuleSet
from ledger.schema import AccountState, Table, TransferRef, id_key, index_key
from ledger.store import WriteTxn

T = TypeVar("T")


# The committed caches hold one entry per account / risk key touched, so without a bound they grow
# with the ledger's accounts. Bytes per entry measured with tracemalloc (key, value, dict slot):
# an AccountState ~480 B, a risk state (17 ints) ~850 B. 128 Ki accounts ~ 60 MiB and 32 Ki risk
# states ~ 27 MiB keep a working set far above a block's (≤ 2 x 32768 accounts) in memory.
ACCOUNTS_CACHE_MAX: Final = 128 << 10
RISK_CACHE_MAX: Final = 32 << 10


def _trim(cache: dict[bytes, T], limit: int) -> None:
    """Above ``limit`` entries drop the oldest-loaded half (amortised O(1) per insert)."""
    if len(cache) > limit:
        for key in list(islice(cache, len(cache) - limit // 2)):
            del cache[key]


@dataclass(slots=True)
class Committed:
    """Caches of committed state (safe to fill from the store while a block is open).

    Bounded (``trim`` after each committed block): every entry equals what the store holds once the
    block is committed, so an evicted entry is simply read back — results never depend on it.

    Risk states: with the native engine, ``table`` (a C RiskTable, ledger/_native/risk_table.c) holds
    the committed states and pair lookups, with the states the C rules hook changed in the open block
    (their committed values saved for an abort); ``risk`` is the Python paths' cache
    (``SOVLEDGER_ENGINE=python``: no table at all).

    The risk journal (ledger/risk_log.py): committed risk = the store's ``risk`` / stored pairs (``pairs``:
    the runs of ledger/pair_runs.py and the legacy ``risk_pairs``, with a per-process filter per run)
    overridden by the ``risk_log`` rows. ``journal`` counts its rows for the fold rule; the table pins
    the journaled entries (loaded from ``risk_log`` before its first block: ``table_loaded``); the
    Python paths read ``overlay``, built from the block's transaction when one first needs it. All three
    are read lazily from the store, so a fresh ``Committed`` (a restart, a snapshot) is right."""

    accounts: dict[bytes, AccountState] = field(default_factory=dict)
    scales: dict[int, int] = field(default_factory=dict)
    risk: dict[bytes, list[int]] = field(default_factory=dict)
    table: Any = field(default_factory=new_table)
    journal: risk_log.Counts | None = None
    overlay: risk_log.Overlay | None = None
    table_loaded: bool = False
    pairs: pair_runs.PairRuns | None = None

    def trim(self) -> None:
        _trim(self.accounts, ACCOUNTS_CACHE_MAX)
        _trim(self.risk, RISK_CACHE_MAX)

    def begin(self, txn: WriteTxn) -> Any:
        """The risk table opened over this block's transaction, or None: this block keeps risk in Python
        (no table, or the engine was switched to python in this process)."""
        table = self.table
        if table is None or native.active() != "native":
            return None
        if not self.table_loaded:  # its journaled (pinned) entries: what `risk` / `risk_pairs` lack
            table.forget()
            table.load([value for _, value in risk_log.rows(txn)])
            self.table_loaded = True
        table.begin(txn.getter(Table.RISK), self.pair_runs_of(txn).getter(txn),
                    functools.partial(txn.get_many, Table.RISK))
        return table

    def pair_runs_of(self, txn: WriteTxn) -> pair_runs.PairRuns:
        """The committed pair runs with their per-process filters (read from ``txn`` the first time; a fold
        replaces them when its block commits, ``publish_risk``: an aborted fold leaves them as they were)."""
        if self.pairs is None:
            self.pairs = pair_runs.PairRuns.read(txn)
        return self.pairs

    def counts(self, txn: WriteTxn) -> risk_log.Counts:
        """The journal's counts (read from ``txn`` the first time)."""
        if self.journal is None:
            self.journal = risk_log.Counts.read(txn)
        return self.journal

    def overlay_of(self, txn: WriteTxn) -> risk_log.Overlay:
        """The journal's committed states and pairs for the Python paths (read from ``txn`` the first time)."""
        if self.overlay is None:
            self.overlay = risk_log.Overlay.read(txn)
        return self.overlay

    def publish_risk(self, side: SideState) -> None:
        """The block committed: its risk states (and pairs) become committed state."""
        self._publish_journal(side)
        if side.table is not None:
            try:  # with the Python paths' states and pairs (disjoint keys)
                side.table.commit(side.risk, side.paid, side.folded)
            except BaseException:
                self.table_loaded = False  # the table forgot everything: reload the journal
                raise
            if self.risk:
                self.risk.clear()  # filled by a block without the table: stale now
            self.overlay = None  # not kept up to date by blocks with the table: read again when needed
            return
        if side.risk or side.paid:
            self.risk.update(side.risk)
            if self.table is not None:
                self.table.forget()  # a block without the table changed states it caches
                self.table_loaded = False
            if self.overlay is not None and not side.folded:
                self.overlay.states.update(side.risk)
                self.overlay.pairs.update(side.paid)

    def _publish_journal(self, side: SideState) -> None:
        if side.runs_after is not None:
            self.pairs = side.runs_after
        if side.folded:
            self.journal = risk_log.Counts()
            self.overlay = risk_log.Overlay()
        elif side.journal is not None and self.journal is not None:
            self.journal.add(side.journal)

@dataclass(slots=True)
class Event:
    """One evaluated event waiting for its leaf: what to log and what to index."""

    kind: int
    result: int
    body: bytes
    aux: bytes
    touched: tuple[bytes, ...]  # ids of accounts with the HISTORY flag that this leaf changed
    ref: TransferRef | None = None  # new transfer to store (leaf index filled at numbering)
    ref_id: bytes = b""
    existing: TransferRef | None = None  # for *EXISTS: the original entry (no new leaf)
    account: AccountState | None = None  # for a created account: gets the leaf timestamp
    follow: Event | None = None  # a ledger-written leaf right after this one (adjustment, residual)
    exception: bytes | None = None  # an exception record for review, keyed by this leaf's index
    ruleset: bytes | None = None  # a deployed rule set's canonical bytes (stored keyed by its hash)


@dataclass(slots=True)
class SideState(RiskView):
    """Rules and reconciliation scratch of one block; also the risk view over block-then-committed state."""

    txn: WriteTxn
    committed: Committed
    new_rules: CompiledRuleSet | None = None  # deployed in this block: effective from the next block
    risk: dict[bytes, list[int]] = field(default_factory=dict)  # risk states changed in this block
    pairs: set[bytes] = field(default_factory=set)  # pairs first seen in this block (by Python; the C hook's: table)
    paid: set[bytes] = field(default_factory=set)  # every pair Python paid in this block (journaled; C: the table)
    pairs_committed: dict[bytes, bool] = field(default_factory=dict)  # committed lookups of this block
    risk_absent: set[bytes] = field(default_factory=set)  # risk keys the store lacks (read once per block)
    extrefs: dict[bytes, bytes] = field(default_factory=dict)
    callbacks: dict[bytes, TransferRef] = field(default_factory=dict)
    callback_bodies: dict[bytes, bytes] = field(default_factory=dict)
    reconciled: dict[bytes, TransferRef] = field(default_factory=dict)
    rounding: dict[bytes, list[int]] = field(default_factory=dict)  # account ‖ day -> [debits, credits, count]
    table: Any = None  # the C RiskTable opened for this block (Committed.begin), None on the Python paths
    journal: bytes | None = None  # the block's risk_log row (seal), None: it changed no risk state
    folded: bool = False  # the block folded the journal (seal)
    runs_after: pair_runs.PairRuns | None = None  # the runs after the block's fold (seal), published at commit

    def state(self, key: bytes) -> list[int] | None:
        st = self.risk.get(key)
        if st is not None:
            return st
        if self.table is not None:  # the block's C changes, committed, the store (a new list: read only)
            got: list[int] | None = self.table.state(key)
            return got
        st = self.committed.risk.get(key)  # inline of _committed: this runs for most transfers under rules
        if st is not None:
            return st
        if key in self.risk_absent:  # the rule inputs and the risk update both ask for a new key
            return None
        st = self.committed.overlay_of(self.txn).states.get(key)  # journaled, not folded into `risk` yet
        if st is not None:
            return st
        st = _committed(self.committed.risk, self.txn, Table.RISK, key, decode_state)
        if st is None:
            self.risk_absent.add(key)  # the store gets the key only when this block commits
        return st

    def block_state(self, key: bytes) -> list[int] | None:
        """The block's own state of ``key`` to change in place, or None (the block has not changed it).

        A state the C rules hook changed moves from the C table into ``risk`` here, so a key's in-block
        state lives in exactly one of the two, and the undo log of a linked chain can restore it."""
        st = self.risk.get(key)
        if st is None and self.table is not None:
            st = self.table.take(key)
            if st is not None:
                self.risk[key] = st
        return st

    def seen(self, debit_id: bytes, credit_id: bytes) -> bool:
        """Whether the payer has paid this payee before (in this block or committed)."""
        pk = debit_id + credit_id
        if pk in self.pairs:
            return True
        if self.table is not None:  # the pairs the C hook added or touched in this block, or a cached store lookup
            seen: bool = self.table.seen(pk)
            return seen
        known = self.pairs_committed.get(pk)
        if known is None:  # read once per block: the rule inputs and the risk update both ask
            known = self.pairs_committed[pk] = self.pair_committed(pk)
        return known

    def pair_committed(self, pk: bytes) -> bool:
        """Whether a pair is committed (journaled, in a run or in the legacy ``risk_pairs``): a lookup for the
        Python paths."""
        committed = self.committed
        return pk in committed.overlay_of(self.txn).pairs or committed.pair_runs_of(self.txn).has(self.txn, pk)


@dataclass(slots=True)
class Block:
    """The ledger scratch state of one block (see the module doc)."""

    txn: WriteTxn
    height: int
    ts0: int
    committed: Committed
    rules: CompiledRuleSet | None  # the rule set this block is evaluated under
    side: SideState
    accounts: dict[bytes, AccountState] = field(default_factory=dict)
    new_accounts: set[bytes] = field(default_factory=set)
    saved: dict[bytes, tuple[int, int, int, int]] = field(default_factory=dict)  # balances before the block
    transfers: dict[bytes, TransferRef] = field(default_factory=dict)
    account_refs: dict[bytes, TransferRef] = field(default_factory=dict)  # created accounts' leaves
    expiry_puts: list[bytes] = field(default_factory=list)
    expiry_dels: list[bytes] = field(default_factory=list)
    scales: dict[int, int] = field(default_factory=dict)
    bodies: dict[bytes, bytes] = field(default_factory=dict)  # records of transfers created in this block
    undo: list[Callable[[], None]] | None = None  # set while inside a linked chain
    first_index: int = 0  # tree size before the block: the first leaf index it numbers

    def next_leaf_index(self, events: list[Event]) -> int:
        """The index the next event appended to ``events`` will get (seal numbers them in this order)."""
        n = self.first_index
        for ev in events:
            if ev.existing is None:
                e: Event | None = ev
                while e is not None:
                    n += 1
                    e = e.follow
        return n

    def account(self, aid: bytes) -> AccountState | None:
        # mirrored for the native engine by gather_accounts in ledger/_native/seal.c: change both
        a = self.accounts.get(aid)
        if a is not None:
            return a
        a = self.committed.accounts.get(aid)
        if a is None:
            a = _committed(self.committed.accounts, self.txn, Table.ACCOUNTS, aid, AccountState.decode)
            if a is None:
                return None
        self.saved[aid] = (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)
        self.accounts[aid] = a
        return a

    def transfer(self, tid: bytes) -> TransferRef | None:
        ref = self.transfers.get(tid)
        if ref is not None:
            return ref
        raw = self.txn.get(Table.TRANSFERS, id_key(tid))
        return TransferRef.decode(raw) if raw is not None else None

    def leaf_body(self, tid: bytes, ref: TransferRef, bodies: dict[bytes, bytes] | None = None) -> bytes:
        """The record logged for ``tid`` (a transfer; with ``bodies`` given, a callback)."""
        if ref.block == self.height:  # created in this very block: not stored yet
            body = (self.bodies if bodies is None else bodies).get(tid)
            invariant(body is not None, "an entry of the current block has no body")
            assert body is not None
            return body
        raw = self.txn.get(Table.LEAVES, index_key(ref.leaf_index))
        invariant(raw is not None, f"leaf {ref.leaf_index} of a stored entry is missing")
        assert raw is not None
        return decode_leaf(raw).body

    def on_undo(self, action: Callable[[], None]) -> None:
        if self.undo is not None:
            self.undo.append(action)


def _committed(cache: dict[bytes, T], txn: WriteTxn, table: str, key: bytes,
               decode: Callable[[bytes], T]) -> T | None:
    """Committed state from the cache, or from the store into the cache (safe before the block commits)."""
    value = cache.get(key)
    if value is None:
        raw = txn.get(table, key)
        if raw is None:
            return None
        value = decode(raw)
        cache[key] = value
    return value


def popper(d: dict[bytes, Any], key: bytes) -> Callable[[], None]:
    def pop() -> None:
        d.pop(key, None)

    return pop


def balance_restorer(a: AccountState) -> Callable[[], None]:
    saved = a.balances()
    return lambda: a.set_balances(saved)


def restore_key(d: dict[bytes, bytes], key: bytes, previous: bytes | None) -> None:
    if previous is None:
        d.pop(key, None)
    else:
        d[key] = previous
