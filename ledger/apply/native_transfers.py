"""The compiled transfer engine's side of ``apply_transfers`` (ledger/_native/apply.c).

``takes(blk)`` is the one place that decides, per batch, whether the native engine applies a
transfer batch: the native engine is active and the block runs under no rule set (rules,
reconciliation and risk tracking stay on the Python reference). Everything else about transfers —
plain, pending, post, void, linked chains, every result code — is native and byte-identical.

``apply(blk, batch, events)`` gathers what the batch refers to in one pass (accounts through
``blk.account``, transfers already in the block or the store with their records), hands it to one C
call that decides every record with the GIL released, and lets that call write the outcome into the
block's scratch state exactly as ``ledger/apply/transfers.py`` would (events, transfer refs, bodies,
expiry keys, balances).
"""

from __future__ import annotations

import dataclasses
from typing import Final, cast

from ledger import native
from ledger.apply.batches import signature_auxes
from ledger.apply.scratch import Block, Event
from ledger.codec import Batch
from ledger.invariant import fail
from ledger.schema import AccountState, Table, TransferRef
from ledger.types import EventKind, Result

_RESULTS: Final[list[Result | None]] = [None] * 256
for _r in Result:
    if _r.value < 256:
        _RESULTS[_r.value] = _r
_DR: Final = slice(16, 32)
_CR: Final = slice(32, 48)


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


def takes(blk: Block) -> bool:
    """Whether the native engine applies this block's transfer batches (no rule set: see the module doc)."""
    return blk.rules is None and native.transfers_native()


def apply(blk: Block, batch: Batch, events: list[Event]) -> None:
    records = batch.records
    engine = native.engine()
    xids, aids = engine.transfer_ids(records)
    known: list[tuple[bytes, TransferRef, bytes]] = []
    found: list[tuple[bytes, TransferRef | None, bytes | None]] = engine.find_transfers(
        xids, blk.transfers, blk.txn.getter(Table.TRANSFERS))  # in the block, else stored under id_key
    for tid, in_block, raw in found:
        ref = in_block if in_block is not None else TransferRef.decode(cast(bytes, raw))  # one of the two is set
        body = blk.leaf_body(tid, ref)
        known.append((tid, ref, body))
        aids.append(body[_DR])  # a pending transfer's accounts: a post or void settles them
        aids.append(body[_CR])
    accounts: list[tuple[bytes, AccountState]] = engine.gather_accounts(  # Block.account, per distinct id
        aids, blk.accounts, blk.committed.accounts, blk.saved, blk.account, not known)  # unique unless appended
    sigs = signature_auxes(batch)
    broken = engine.apply_transfers(
        records, accounts, known, blk.ts0, blk.height, sigs or None, events, blk.transfers,
        blk.bodies, blk.expiry_puts, blk.expiry_dels, Event, TransferRef, EventKind.CREATE_TRANSFER, _RESULTS,
    )
    if broken is not None:
        fail(broken)
