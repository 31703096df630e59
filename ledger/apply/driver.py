"""The deterministic ledger state machine: apply one block proposal in one write transaction.

Given the same sequence of proposals, every replica computes byte-identical leaves, chain links,
Merkle roots, block headers, state hashes and balances: nothing here reads a clock, a random
source, the environment or anything but the store and the proposal. Timestamps come from the
proposal (leader-assigned) and are made strictly increasing here, deterministically.

Exactly-once: the block's ledger changes, leaves, tree nodes, chain head and applied index are
written in one store transaction. In-memory caches are only updated after that commit succeeds,
so a failed commit (map full, disk full) leaves both the store and the caches at the previous
block.

This module is the block driver; each batch kind has its own module (``APPLIERS``), so a new
record kind is one entry there and one module.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from typing import Any, Final

from ledger.apply.accounts import apply_accounts, history_of
from ledger.apply.aggregates import apply_aggregates
from ledger.apply.callbacks import apply_callbacks, expiry_exception
from ledger.apply.effects import deploy, operator_map
from ledger.apply.erasure import apply_erasures
from ledger.apply.obligations import apply_obligations, apply_settlements, index_obligations
from ledger.apply.rotation import apply_rotations, decode_node_key, node_key_meta
from ledger.apply.scratch import Block, Committed, Event, SideState
from ledger.apply.seal import BlockOutcome, seal
from ledger.apply.transfers import apply_transfers
from ledger.codec import T_AMOUNT_HI, T_AMOUNT_LO, T_CREDIT, T_DEBIT, TRANSFER_STRUCT, ZERO32, Batch, Proposal
from ledger.invariant import invariant
from ledger.merkle import CompactRange
from ledger.note import Verifier
from ledger.rules.compiler import CompiledRuleSet, compile_ruleset
from ledger.rules.model import parse_canonical
from ledger.schema import (
    LEGACY_NODES_FROM,
    META_APPLIED,
    META_HEAD,
    META_RANGE,
    META_SCALE_PREFIX,
    AccountState,
    Head,
    Table,
    decode_index,
    expiry_transfer_id,
    index_key,
    node_from_legacy_key,
    scale_ledger,
)
from ledger.store import Store
from ledger.types import EventKind, Result, TransferStatus

Applier = Callable[[Block, Batch, list[Event]], None]
APPLIERS: Final[dict[int, Applier]] = {
    EventKind.CREATE_TRANSFER: apply_transfers,
    EventKind.CREATE_ACCOUNT: apply_accounts,
    EventKind.SETTLEMENT_CALLBACK: apply_callbacks,
    EventKind.ERASE_SUBJECT: apply_erasures,  # PII erasure (docs/privacy.md)
    EventKind.KEY_ROTATION: apply_rotations,  # checkpoint key rotation (docs/security.md)
    EventKind.AGGREGATE: apply_aggregates,  # regional aggregates (docs/federation.md)
    EventKind.OBLIGATION: apply_obligations,  # a cross-region payment's leg (docs/federation.md)
    EventKind.SETTLEMENT: apply_settlements,  # a settlement batch this region joined (docs/federation.md)
}
DEPLOY_OFFSET: Final = 16  # a stored rule set: deploy leaf index (u64) ‖ effective height (u64) ‖ canonical


NODE_MIGRATION_CHUNK: Final = 1 << 16  # tree nodes rewritten per write transaction (bounded dirty pages)


def migrate_node_keys(store: Store) -> int:
    """Rewrite the tree nodes a store holds under the legacy key layout (``schema.legacy_node_key``) under
    ``schema.node_key``; the number rewritten (0 on a current store: one read). One write transaction per
    chunk: the two layouts' key spaces are disjoint, so at every commit each node is stored under exactly
    one of its keys, readers find it under either (``schema.node_at``) and a crash mid-way resumes here."""
    moved = 0
    while True:
        with store.read() as rtxn:
            last = rtxn.last(Table.NODES)
        if last is None or last[0] < LEGACY_NODES_FROM:
            return moved
        with store.write() as txn:
            rows = list(txn.range(Table.NODES, LEGACY_NODES_FROM, None, NODE_MIGRATION_CHUNK))
            for key, _ in rows:
                txn.delete(Table.NODES, key)
            txn.put_many(Table.NODES, sorted((node_from_legacy_key(k), v) for k, v in rows))
        moved += len(rows)


class LedgerState:
    """Applies block proposals to a store. Single writer; readers use ``LedgerReader``."""

    def __init__(self, store: Store, operator_keys: Sequence[Verifier] = ()) -> None:
        """``operator_keys``: verifiers allowed to deploy rule sets (node config). Replay needs the same keys."""
        self.store = store
        self._operators = operator_map(operator_keys)
        self._load()

    def reload(self) -> None:
        """Forget every cache and re-read the store (a replica snapshot was installed underneath)."""
        self._load()

    def _load(self) -> None:
        self.migrated_nodes = migrate_node_keys(self.store)  # a store written before the end-major node keys
        self.indexed_obligations = index_obligations(self.store)  # a store written before the status index
        self._committed = Committed()
        self.rules: CompiledRuleSet | None = None
        with self.store.read() as txn:
            raw = txn.get(Table.META, META_HEAD)
            self.head = Head.decode(raw) if raw else Head()
            rng = txn.get(Table.META, META_RANGE)
            self.range = CompactRange.from_bytes(rng) if rng else CompactRange()
            applied = txn.get(Table.META, META_APPLIED)
            self.applied_index = decode_index(applied) if applied else 0
            for k, v in txn.range(Table.META, META_SCALE_PREFIX, META_SCALE_PREFIX + b"\xff"):
                self._committed.scales[scale_ledger(k)] = v[0]
            if self.head.ruleset_hash != ZERO32:
                stored = txn.get(Table.RULESETS, self.head.ruleset_hash)
                invariant(stored is not None, "the head's rule set is not stored")
                assert stored is not None
                self.rules = compile_ruleset(parse_canonical(stored[DEPLOY_OFFSET:]))
        invariant(self.range.size == self.head.tree_size, "compact range size disagrees with head")

    def apply_block(self, proposal: Proposal, applied_index: int = 0) -> BlockOutcome:
        """Apply one proposal as one block; durable when this returns.

        The cyclic garbage collector is paused for the block: its thousands of short-lived objects
        (events, refs, rows) would otherwise be promoted to the old generations by collections in
        mid-block and trigger full collections of the whole heap; freed by reference counting when
        the block ends, they never reach the collector. Results do not depend on it."""
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._apply_block(proposal, applied_index)
        finally:
            if collecting:
                gc.enable()

    def _apply_block(self, proposal: Proposal, applied_index: int) -> BlockOutcome:
        head = self.head
        ts0 = max(proposal.timestamp_ns, head.last_timestamp_ns + 1)
        blk: Block | None = None
        try:
            with self.store.write() as txn:
                side = SideState(txn, self._committed, table=self._committed.begin(txn))
                blk = Block(txn, head.height + 1, ts0, self._committed, self.rules, side, first_index=head.tree_size)
                events: list[Event] = []
                self._expire_pending(blk, events)
                spans: list[tuple[int, int]] = []
                for batch in proposal.batches:
                    start = len(events)
                    self._apply_batch(blk, batch, events)
                    spans.append((start, len(events)))
                outcome, new_head, new_range = seal(blk, head, self.range, events, spans, applied_index)
        except BaseException:
            if blk is not None:  # nothing was committed: put cached balances back and the risk table's
                for aid, balances in blk.saved.items():
                    self._committed.accounts[aid].set_balances(balances)
                if blk.side.table is not None:
                    blk.side.table.abort()
            raise
        self._publish(blk, new_head, new_range, applied_index)
        return outcome

    def _apply_batch(self, blk: Block, batch: Batch, events: list[Event]) -> None:
        applier = APPLIERS.get(batch.kind)
        if applier is not None:
            applier(blk, batch, events)
        elif batch.kind == EventKind.DEPLOY_RULESET:
            events.append(deploy(blk, batch.records, self._operators))
        else:
            invariant(False, f"batch of kind {batch.kind} cannot be applied")

    def _publish(self, blk: Block, new_head: Head, new_range: CompactRange, applied_index: int) -> None:
        """Committed: publish new accounts into the cache (existing ones were updated in place)."""
        committed = self._committed
        for aid in blk.new_accounts:
            committed.accounts[aid] = blk.accounts[aid]
        committed.scales.update(blk.scales)
        committed.publish_risk(blk.side)
        committed.trim()  # bounded caches (ledger/apply/scratch.py)
        if blk.side.new_rules is not None:
            self.rules = blk.side.new_rules
        self.head = new_head
        self.range = new_range
        if applied_index:
            self.applied_index = applied_index

    def pair_filters(self) -> dict[int, Any] | None:
        """The per-process filters of the committed pair runs (ledger/pair_runs.py), for read-side lookups
        (dry runs); None before the first block read them."""
        pairs = self._committed.pairs
        return pairs.filters if pairs is not None else None

    def node_key(self, node: int) -> tuple[bytes, bytes, int, int] | None:
        """A node's last announced checkpoint key: (key id, public key, takeover size, rotation leaf index)."""
        with self.store.read() as txn:
            raw = txn.get(Table.META, node_key_meta(node))
        return decode_node_key(raw) if raw is not None else None

    def account(self, account_id: bytes) -> AccountState | None:
        a = self._committed.accounts.get(account_id)
        if a is None:
            with self.store.read() as txn:
                raw = txn.get(Table.ACCOUNTS, account_id)
            if raw is None:
                return None
            a = AccountState.decode(raw)
            self._committed.accounts[account_id] = a
        return a

    @staticmethod
    def _expire_pending(blk: Block, events: list[Event]) -> None:
        """Pending transfers whose timeout is at or before the block time expire first, in key order."""
        due = list(blk.txn.range(Table.EXPIRY, b"", index_key(blk.ts0 + 1)))
        for key, _ in due:
            pid = expiry_transfer_id(key)
            blk.expiry_dels.append(key)
            pref = blk.transfer(pid)
            invariant(pref is not None, "expiry index points to a missing transfer")
            assert pref is not None
            if pref.status != TransferStatus.PENDING:
                continue
            p = TRANSFER_STRUCT.unpack(blk.leaf_body(pid, pref))
            amount = p[T_AMOUNT_LO] | (p[T_AMOUNT_HI] << 64)
            dra = blk.account(p[T_DEBIT])
            cra = blk.account(p[T_CREDIT])
            assert dra is not None and cra is not None
            invariant(dra.debits_pending >= amount and cra.credits_pending >= amount, "expiring more than is pending")
            dra.debits_pending -= amount
            cra.credits_pending -= amount
            pref.status = TransferStatus.EXPIRED
            blk.transfers[pid] = pref
            ev = Event(EventKind.EXPIRE_PENDING, Result.OK, pid, b"", history_of(p[T_DEBIT], dra, p[T_CREDIT], cra))
            if blk.rules is not None and blk.rules.flag_expiry:
                ev.exception = expiry_exception(pid, amount, blk.ts0)
            events.append(ev)
