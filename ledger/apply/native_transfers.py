"""The compiled transfer engine's side of ``apply_transfers`` (ledger/_native/apply.c).

``takes(blk, batch)`` is the one place that decides, per batch, whether the native engine applies a
transfer batch: the native engine is active, and either the block runs under no rule set, or the
batch has no linked chain (a chain under rules stays on the Python reference, whose undo log also
takes back the risk and external-ref effects of a failed chain). Everything else about transfers —
plain, pending, post, void, linked chains, every result code — is native and byte-identical.

Under a rule set the C engine calls ``hook(i, debit_state, credit_state)`` for each new transfer that
passed every built-in check, before any effect (the rules hook in apply.c). No matching rule (the
common case): the hook records what ``after_success`` records (risk windows, payer–payee pairs, the
external-ref index) and the engine applies the transfer. A rule decides it (reject, hold, flag,
adjust, rule error, evaluation failure): the engine stops before that record, and the reference
``create_transfer`` applies it with the verdict already computed, so each rule is evaluated once and
everything it records (result, rule aux, exception, adjustment leaf, pending hold) is the
reference's by construction; the rest of the batch goes back to the engine.

``apply(blk, batch, events)`` gathers what the batch refers to in one pass (accounts through
``blk.account``, transfers already in the block or the store with their records), hands it to one C
call that decides every record with the GIL released, and lets that call write the outcome into the
block's scratch state exactly as ``ledger/apply/transfers.py`` would (events, transfer refs, bodies,
expiry keys, balances).

``bind()`` (run at import) hands the C the ``__slots__`` offsets of ``AccountState``, ``TransferRef``
and ``Event`` so it reads and writes them without the attribute protocol and creates refs and
events without the dataclass ``__init__`` frame (ledger/_native/slots.h); anything unbound takes
the generic path with the same results (tests/engine/test_native_glue.py).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Final, cast

from ledger import native
from ledger import risk as risk_features
from ledger.apply.batches import signature_auxes
from ledger.apply.scratch import Block, Event
from ledger.codec import TRANSFER_SIZE, TRANSFER_STRUCT, ZERO32, Batch
from ledger.invariant import fail
from ledger.risk import KEY_IN, KEY_OUT, KEY_PSP, new_state
from ledger.rules.compiler import NO_MATCH, Verdict
from ledger.schema import AccountState, Table, TransferRef
from ledger.types import EventKind, Result, TransferFlags

_RESULTS: Final[list[Result | None]] = [None] * 256
for _r in Result:
    if _r.value < 256:
        _RESULTS[_r.value] = _r
_DR: Final = slice(16, 32)
_CR: Final = slice(32, 48)
_FLAGS_AT: Final = 87  # a record's flags as the 87th of its 88 u16 (offset 174)
_LINKED: Final = int(TransferFlags.LINKED)
# the flags' low byte of every record sliced out at C speed; the bytes without the LINKED bit deleted
_NOT_LINKED: Final = bytes(b for b in range(256) if not b & _LINKED)
# a segment's uncached risk states in one get_many before the hook (pairs: never). Off: once pairs are not
# prefetched, the states' prefetch cost more than it saved on bench.rules (warm cache; bench/README sixth pass)
PREFETCH: Final = False
SPLITS_MAX: Final = 16  # rule-decided records per batch that resume the engine; later ones: the reference


def _constructible(cls: type, fields: tuple[str, ...]) -> bool:
    """Whether the C engine may create ``cls`` by setting its slots (ledger/_native/slots.h): a slotted
    dataclass whose fields are exactly ``fields`` and whose generated ``__init__`` does nothing else."""
    names = tuple(f.name for f in dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else ()
    return names == fields and not hasattr(cls, "__post_init__")


REF_FIELDS: Final = ("leaf_index", "block", "timestamp_ns", "status", "expires_at_ns")
EVENT_FIELDS: Final = ("kind", "result", "body", "aux", "touched", "ref", "ref_id", "existing", "account", "follow",
                       "exception", "ruleset")


def bind() -> tuple[bool, bool, bool]:
    """Give the C engine the slot offsets of the classes it reads and writes (which were bound)."""
    bound: tuple[bool, bool, bool] = native.engine().bind_types(
        AccountState, TransferRef, Event, _constructible(TransferRef, REF_FIELDS), _constructible(Event, EVENT_FIELDS))
    return bound


if native.available() and hasattr(native.engine(), "bind_types"):
    bind()


def takes(blk: Block, batch: Batch) -> bool:
    """Whether the native engine applies this transfer batch (see the module doc)."""
    if not native.transfers_native():
        return False
    if blk.rules is None or len(batch.records) % TRANSFER_SIZE:
        return True  # (a torn batch: the engine refuses it, as without rules)
    low = batch.records[2 * _FLAGS_AT::TRANSFER_SIZE]  # u16 little endian: LINKED (bit 0) is in the low byte
    return not low.translate(None, _NOT_LINKED)


def apply(blk: Block, batch: Batch, events: list[Event]) -> None:
    """Apply a transfer batch; under a rule set in segments split at rule-decided records."""
    sigs = signature_auxes(batch)
    if blk.rules is None:
        _apply_native(blk, batch.records, sigs, events, None)
        return
    from ledger.apply.transfers import create_transfer  # transfers imports this module

    records = batch.records
    count = len(records) // TRANSFER_SIZE
    start = 0
    decided: list[Verdict] = []
    for _split in range(SPLITS_MAX + 1):
        seg = records[start * TRANSFER_SIZE:]
        before = len(events)
        hook = _hook(blk, seg, decided)
        _apply_native(blk, seg, sigs[start:] if sigs else [], events, hook)
        start += len(events) - before
        if start == count:
            return
        raw = records[start * TRANSFER_SIZE:(start + 1) * TRANSFER_SIZE]
        events.append(create_transfer(blk, TRANSFER_STRUCT.unpack(raw), raw, sigs[start] if sigs else b"",
                                      decided.pop()))
        start += 1
        if start == count:
            return
    for i in range(start, count):  # many rule-decided records: the reference, without re-gathering
        raw = records[i * TRANSFER_SIZE:(i + 1) * TRANSFER_SIZE]
        events.append(create_transfer(blk, TRANSFER_STRUCT.unpack(raw), raw, sigs[i] if sigs else b""))


def _hook(blk: Block, records: bytes, decided: list[Verdict]) -> Callable[[int, AccountState, AccountState], bool]:
    """The engine's rules hook over this segment: the C one (ledger/_native/rules.c) when it is built."""
    rules = blk.rules
    assert rules is not None and blk.undo is None
    side = blk.side
    if risk_features.Hook is None or side.table is None:
        return _python_hook(blk, records, decided)
    decide = rules.decide
    unpack = TRANSFER_STRUCT.unpack_from
    ts0, height = blk.ts0, blk.height

    def fallback(i: int, dra: AccountState, cra: AccountState) -> Verdict:  # a rule C leaves to Python
        return decide(unpack(records, i * TRANSFER_SIZE), dra, cra, ts0, height, side)

    tracks = rules.track_out | rules.track_in << 1 | rules.track_psp << 2 | rules.track_pairs << 3
    if PREFETCH:
        side.table.prefetch(records, tracks)  # the segment's uncached risk states: one store call
    hook: Callable[[int, AccountState, AccountState], bool] = risk_features.Hook(
        rules.program, records, ts0, height, rules.active, tracks, side.risk, side.table, side.pairs, side.extrefs,
        decided, fallback)
    return hook


def _python_hook(blk: Block, records: bytes,
                 decided: list[Verdict]) -> Callable[[int, AccountState, AccountState], bool]:
    """The engine's rules hook over this segment in Python (see the module doc).

    After no rule matched it records exactly what ``effects.after_success`` records outside a linked
    chain (no undo log), inlined: this runs once per transfer under a rule set."""
    rules = blk.rules
    assert rules is not None and blk.undo is None
    decide = rules.decide if rules.active else None
    unpack = TRANSFER_STRUCT.unpack_from
    ts0, height, side = blk.ts0, blk.height, blk.side
    risk, state, pairs, pairs_committed, extrefs = side.risk, side.state, side.pairs, side.pairs_committed, side.extrefs
    paid, pair_committed = side.paid, side.pair_committed  # journaled pairs count as committed (risk_log)
    record = risk_features.record
    track_out, track_in, track_psp, track_pairs = rules.track_out, rules.track_in, rules.track_psp, rules.track_pairs

    def hook(i: int, dra: AccountState, cra: AccountState) -> bool:
        rec = unpack(records, i * TRANSFER_SIZE)
        if decide is not None:
            verdict = decide(rec, dra, cra, ts0, height, side)
            if verdict[0] != NO_MATCH:
                decided.append(verdict)
                return False
        amount = rec[3] | rec[4] << 64
        for key in (KEY_OUT + rec[1] if track_out else None, KEY_IN + rec[2] if track_in else None,
                    KEY_PSP + rec[10].to_bytes(4, "big") if track_psp else None):
            if key is not None:
                st = risk.get(key)
                if st is None:  # first touch in this block: a copy (the cache keeps the committed state)
                    base = state(key)
                    st = risk[key] = list(base) if base is not None else new_state()
                record(st, ts0, amount)
        if track_pairs:
            pk = rec[1] + rec[2]  # SideState.seen, inlined; its per-block cache of store lookups is shared
            paid.add(pk)
            if pk not in pairs:
                known = pairs_committed.get(pk)
                if known is None:
                    known = pairs_committed[pk] = pair_committed(pk)
                if not known:
                    pairs.add(pk)
        if rec[7] != ZERO32:
            extrefs[rec[10].to_bytes(4, "big") + rec[7]] = rec[0]
        return True

    return hook


def _apply_native(blk: Block, records: bytes, sigs: list[bytes], events: list[Event],
                  hook: Callable[[int, AccountState, AccountState], bool] | None) -> None:
    engine = native.engine()
    xids, aids = engine.transfer_ids(records)
    known: list[tuple[bytes, TransferRef, bytes]] = []
    found: list[tuple[bytes, TransferRef | None, bytes | None]] = engine.find_transfers(  # in the block, else
        xids, blk.transfers, functools.partial(blk.txn.get_many, Table.TRANSFERS), True)  # stored, one store call
    for tid, in_block, raw in found:
        ref = in_block if in_block is not None else TransferRef.decode(cast(bytes, raw))  # one of the two is set
        body = blk.leaf_body(tid, ref)
        known.append((tid, ref, body))
        aids.append(body[_DR])  # a pending transfer's accounts: a post or void settles them
        aids.append(body[_CR])
    accounts: list[tuple[bytes, AccountState]] = engine.gather_accounts(  # Block.account, per distinct id
        aids, blk.accounts, blk.committed.accounts, blk.saved, blk.account, not known)  # unique unless appended
    broken = engine.apply_transfers(
        records, accounts, known, blk.ts0, blk.height, sigs or None, events, blk.transfers,
        blk.bodies, blk.expiry_puts, blk.expiry_dels, Event, TransferRef, EventKind.CREATE_TRANSFER, _RESULTS,
        hook,
    )
    if broken is not None:
        fail(broken)
