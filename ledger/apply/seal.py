"""Sealing a block: number the events into leaves, extend the tree and the chain, build the header,
and write everything the block changed in its one write transaction."""

from __future__ import annotations

from dataclasses import dataclass

from ledger import native, risk_log
from ledger.apply.scratch import Block, Event
from ledger.codec import AUX_LEN, FORMAT_VERSION, LEAF_HEADER, BlockHeader
from ledger.hashing import block_hash, ruleset_hash
from ledger.merkle import CompactRange
from ledger.reconcile import decode_rounding, encode_rounding
from ledger.risk import RISK_STRUCT
from ledger.schema import (
    META_APPLIED,
    META_HEAD,
    META_RANGE,
    Head,
    Table,
    history_key,
    id_key,
    index_key,
    scale_key,
)


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    results: list[int]
    log_indexes: list[int]
    blocks: list[int]


@dataclass(frozen=True, slots=True)
class BlockOutcome:
    header: BlockHeader
    block_hash: bytes
    batches: list[BatchOutcome]


# the Event fields ledger/_native/seal.c number_leaves knows; a new field keeps numbering in Python
NATIVE_EVENT_FIELDS = frozenset(("kind", "result", "body", "aux", "touched", "ref", "ref_id", "existing", "account",
                                 "follow", "exception", "ruleset"))
_NATIVE_NUMBERING = frozenset(Event.__dataclass_fields__) == NATIVE_EVENT_FIELDS
pack_header = LEAF_HEADER.pack
pack_aux = AUX_LEN.pack


class _Leaves:
    """Numbers events into leaves (index, timestamp) and collects what they index."""

    __slots__ = ("exceptions", "history", "index", "leaves", "rulesets", "ts")

    def __init__(self, head: Head, ts0: int) -> None:
        self.index = head.tree_size
        self.ts = ts0
        self.leaves: list[tuple[bytes, bytes]] = []
        self.history: list[tuple[bytes, bytes]] = []
        self.exceptions: list[tuple[bytes, bytes]] = []
        self.rulesets: list[tuple[int, bytes]] = []  # (deploy leaf index, canonical rule set)

    def add(self, ev: Event) -> int:
        """The one leaf builder: log ``ev`` (and the ledger-written leaf that follows it); its index."""
        index = self.index
        ts = self.ts
        body = ev.body
        aux = ev.aux
        leaf = b"".join((pack_header(FORMAT_VERSION, ev.kind, ev.result, index, ts, len(body)), body,
                         pack_aux(len(aux)), aux))  # encode_leaf (ledger/codec.py), inlined for speed
        key = index_key(index)
        self.leaves.append((key, leaf))
        for aid in ev.touched:
            self.history.append((history_key(aid, key), b""))
        if ev.ref is not None:
            ev.ref.leaf_index = index
            ev.ref.timestamp_ns = ts
        if ev.account is not None:
            ev.account.ts = ts
        if ev.exception is not None:
            self.exceptions.append((key, ev.exception))
        if ev.ruleset is not None:
            self.rulesets.append((index, ev.ruleset))
        self.index = index + 1
        self.ts = ts + 1
        if ev.follow is not None:  # a ledger-written leaf right after its cause (adjustment, residual)
            self.add(ev.follow)
        return index


def seal(blk: Block, head: Head, tree: CompactRange, events: list[Event], spans: list[tuple[int, int]],
         applied_index: int) -> tuple[BlockOutcome, Head, CompactRange]:
    """Number, hash and write the block; returns its outcome, the new head and the new compact range."""
    numbering, log_indexes, blocks = _number(blk, head, events)
    # the engine hook (ledger/native.py): leaf hashes, chain, tree nodes, state hash in C when built
    new_range = tree.copy()
    link, node_items = native.seal_hashes(head.chain_head, numbering.leaves, new_range)
    changed = _changed_accounts(blk)
    header = BlockHeader(
        height=blk.height, timestamp_ns=blk.ts0, first_index=head.tree_size, leaf_count=len(numbering.leaves),
        tree_size=numbering.index, prev_block_hash=head.block_hash, merkle_root=new_range.root(),
        chain_head=link, state_hash=native.state_hash(head.state_hash, changed),
        ruleset_hash=head.ruleset_hash,  # the rule set this block ran under
    )
    header_raw = header.encode()
    bhash = block_hash(header_raw)
    last_ts = numbering.ts - 1 if numbering.leaves else blk.ts0
    new_rules = blk.side.new_rules
    next_ruleset = new_rules.hash if new_rules is not None else head.ruleset_hash
    new_head = Head(blk.height, numbering.index, last_ts, bhash, link, header.state_hash, next_ruleset)
    _write_ledger(blk, numbering, node_items, changed)
    _write_side(blk, numbering)  # also without a rule set: callbacks consume their ids and index what they reconciled
    txn = blk.txn
    txn.put(Table.BLOCKS, index_key(blk.height), header_raw)
    txn.put(Table.META, META_HEAD, new_head.encode())
    txn.put(Table.META, META_RANGE, new_range.to_bytes())
    if applied_index:
        txn.put(Table.META, META_APPLIED, index_key(applied_index))
    outcomes = [
        BatchOutcome([events[i].result for i in range(a, b)], log_indexes[a:b], blocks[a:b])
        for a, b in spans
    ]
    return BlockOutcome(header, bhash, outcomes), new_head, new_range


def _number(blk: Block, head: Head, events: list[Event]) -> tuple[_Leaves, list[int], list[int]]:
    """Number the events into leaves: in C when the native engine is active (``None`` back: an event
    needs the Python numbering — a follow-up leaf, an exception record or a rule set)."""
    numbering = _Leaves(head, blk.ts0)
    if _NATIVE_NUMBERING and native.transfers_native():
        done = native.engine().number_leaves(events, numbering.index, numbering.ts, blk.height, FORMAT_VERSION)
        if done is not None:
            numbering.leaves, numbering.history, log_indexes, blocks, numbering.index, numbering.ts = done
            return numbering, log_indexes, blocks
    log_indexes = [0] * len(events)
    blocks = [blk.height] * len(events)
    for n, ev in enumerate(events):
        if ev.existing is not None:  # an exact retry: the original entry, no new leaf
            log_indexes[n] = ev.existing.leaf_index
            blocks[n] = ev.existing.block
        else:
            log_indexes[n] = numbering.add(ev)
    return numbering, log_indexes, blocks


def _write_ledger(blk: Block, numbering: _Leaves, node_items: list[tuple[bytes, bytes]],
                  changed: list[tuple[bytes, bytes]]) -> None:
    txn = blk.txn
    txn.put_many(Table.LEAVES, numbering.leaves, append=True)
    if node_items:  # end-major keys (schema.node_key): ascending and beyond every stored node
        txn.put_many(Table.NODES, node_items, append=True)
    if numbering.history:
        txn.put_many(Table.HISTORY, sorted(numbering.history))
    txn.put_many(Table.ACCOUNTS, changed)
    if native.transfers_native():
        rows: list[tuple[bytes, bytes]] = native.engine().transfer_rows(blk.transfers)
    else:
        rows = sorted((id_key(tid), ref.encode()) for tid, ref in blk.transfers.items())
    if rows:  # time-ordered ids: a block of new transfers usually lands beyond the last stored id
        last = txn.last(Table.TRANSFERS)
        txn.put_many(Table.TRANSFERS, rows, append=last is None or rows[0][0] > last[0])
    if blk.account_refs:
        txn.put_many(Table.ACCOUNT_REFS, sorted((aid, ref.encode()) for aid, ref in blk.account_refs.items()))
    for key in blk.expiry_dels:
        txn.delete(Table.EXPIRY, key)
    if blk.expiry_puts:
        txn.put_many(Table.EXPIRY, sorted((k, b"") for k in blk.expiry_puts))
    for ledger, scale in blk.scales.items():
        txn.put(Table.META, scale_key(ledger), bytes((scale,)))


def _write_side(blk: Block, numbering: _Leaves) -> None:
    """Rules and reconciliation tables, in the block's one write transaction."""
    txn = blk.txn
    side = blk.side
    for leaf_index, canonical in numbering.rulesets:
        meta = index_key(leaf_index) + index_key(blk.height + 1)
        txn.put(Table.RULESETS, ruleset_hash(canonical), meta + canonical)
    _write_risk(blk)
    if side.extrefs:
        txn.put_many(Table.EXTREFS, sorted(side.extrefs.items()))
    if side.callbacks:
        txn.put_many(Table.CALLBACKS, sorted((id_key(cid), ref.encode()) for cid, ref in side.callbacks.items()))
    if side.reconciled:
        txn.put_many(Table.RECONCILED, sorted((id_key(tid), index_key(ref.leaf_index))
                                              for tid, ref in side.reconciled.items()))
    if numbering.exceptions:
        txn.put_many(Table.EXCEPTIONS, numbering.exceptions)
    for key, (debits, credits, count) in sorted(side.rounding.items()):
        old = txn.get(Table.ROUNDING, key)
        d0, c0, n0 = decode_rounding(old) if old is not None else (0, 0, 0)
        txn.put(Table.ROUNDING, key, encode_rounding(d0 + debits, c0 + credits, n0 + count))


def _write_risk(blk: Block) -> None:
    """The block's risk states and paid pairs as one journal row, or the journal folded with it into
    ``risk`` / a pair run (ledger/risk_log.py, ledger/pair_runs.py). The row is built by the C table when it ran (its
    states and pairs merged with the Python paths': disjoint keys, ledger/apply/scratch.py
    SideState.block_state), else in Python; both give the same bytes."""
    side = blk.side
    table = side.table
    if table is not None:
        value: bytes | None = table.journal(side.risk, side.paid)
    else:
        pack = RISK_STRUCT.pack  # encode_state, inline: one row per risk key the block touched
        value = risk_log.encode([(k, pack(*v)) for k, v in side.risk.items()], side.paid)
    if value is None:
        return
    due = blk.committed.counts(blk.txn).due(value)
    side.runs_after = risk_log.write(blk.txn, blk.height, value, due, table.fold if table is not None else None,
                                     blk.committed.pair_runs_of(blk.txn) if due else None)
    side.journal = value
    side.folded = due


def _changed_accounts(blk: Block) -> list[tuple[bytes, bytes]]:
    """(id, encoded state) of accounts this block created or changed, sorted by id."""
    if native.transfers_native():
        changed: list[tuple[bytes, bytes]] = native.engine().changed_accounts(blk.accounts, blk.saved)
        return changed
    saved = blk.saved
    changed = []
    for aid in sorted(blk.accounts):
        a = blk.accounts[aid]
        if saved.get(aid) != (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted):  # new: no entry
            changed.append((aid, a.encode()))
    return changed
