"""What a certificate may put into the log and read back: the request-level half of authorization.

The role check (node/authz.py) already ran. Here, per batch:

- an operator may submit rule deploys only (the deploy record carries the operator signature too);
- a PSP may submit accounts, transfers and settlement callbacks, never rule deploys;
- every transfer and callback record must carry the caller's ``psp_id``;
- **account ownership** (ledger/ownership.py): the owner of an account is the PSP whose id is in
  the account id's top 32 bits. A PSP may create only accounts it owns and debit only accounts it
  owns (crediting any account is allowed: that is how money reaches another PSP's customer).
  A post/void of a pending transfer (debit id zero) is checked against the pending transfer's
  psp_id when that transfer is already committed.

Refusals are PERMISSION_DENIED naming the record (index in the batch and its id).
Reads: a PSP's lookups and history may name only its own transfers and accounts.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Iterable
from typing import Any, Final

from ledger.codec import (
    ACCOUNT_SIZE,
    LEAF_HEADER_SIZE,
    TRANSFER_SIZE,
    Batch,
)
from ledger.netting import is_region_account
from ledger.ownership import owner_of
from ledger.reader import LedgerReader
from ledger.types import EventKind, TransferFlags
from node.authz import OPERATOR, PSP
from node.errors import Unauthorised
from node.fair_share import FairShare
from node.tls import Identity

# transfer: id, debit and credit account ids (16 bytes each), psp_id (u32 at 164), flags (u16 at 174)
_TRANSFER_FIELDS: Final = struct.Struct("<16s16s16s116xI6xH")
_PENDING_ID_AT: Final = 64
_PSP_ID_AT: Final = 164
_DEBIT_OWNER_AT: Final = 16 + 12  # the debit account id's top 32 bits
_CALLBACK_PSP: Final = struct.Struct("<80xI12x")
_OBLIGATION_FIELDS: Final = struct.Struct("<100xI8x16s16x")  # psp_id at 100, payer at 112 (144 bytes)
_ZERO_ID: Final = bytes(16)
_SETTLE: Final = TransferFlags.POST_PENDING_TRANSFER | TransferFlags.VOID_PENDING_TRANSFER


def check_batch(who: Identity | None, batch: Batch) -> list[bytes]:
    """Raise Unauthorised for a record the caller may not submit. Returns the pending ids of
    post/void records, whose owner the caller should confirm with ``check_pending``."""
    if who is None:  # an --insecure node: no identities, no checks (docs/security.md)
        return []
    if batch.kind == EventKind.DEPLOY_RULESET:
        if who.role != OPERATOR:
            raise Unauthorised(f"rule deploys are for operators; your certificate is {who}")
        return []
    if batch.kind == EventKind.CREATE_ACCOUNT and who.role == OPERATOR:
        _check_region_accounts(batch.records)
        return []
    if who.role != PSP:
        raise Unauthorised(f"{batch.kind.name} batches are for PSPs; your certificate is {who}")
    if batch.kind == EventKind.CREATE_ACCOUNT:
        _check_accounts(who, batch.records)
        return []
    if batch.kind == EventKind.SETTLEMENT_CALLBACK:
        for i, (psp,) in enumerate(_CALLBACK_PSP.iter_unpack(batch.records)):
            if psp != who.psp_id:
                raise Unauthorised(f"callback #{i} has psp_id {psp} but your certificate is PSP {who.psp_id}")
        return []
    if batch.kind == EventKind.OBLIGATION:
        _check_obligations(who, batch.records)
        return []
    return _check_transfers(who, batch.records)


def _check_obligations(who: Identity, records: bytes) -> None:
    """A cross-region payment (INITIATE, docs/formats.md §16.2): own psp_id, and it debits an own account."""
    for i, (psp, payer) in enumerate(_OBLIGATION_FIELDS.iter_unpack(records)):
        if psp != who.psp_id or owner_of(payer) != who.psp_id:
            raise Unauthorised(f"obligation #{i} has psp_id {psp} and payer {int.from_bytes(payer, 'little')} of PSP "
                               f"{owner_of(payer)}; PSP {who.psp_id} pays only from its own accounts")


def _check_region_accounts(records: bytes) -> None:
    """Operators create only the region's clearing and settlement accounts (docs/federation.md §8)."""
    for i in range(len(records) // ACCOUNT_SIZE):
        if not is_region_account(records[i * ACCOUNT_SIZE : (i + 1) * ACCOUNT_SIZE]):
            raise Unauthorised(f"account #{i}: an operator creates only clearing and settlement accounts (ids "
                               "derived as in docs/formats.md §16.3, the counterparty region in user_data); "
                               "creating any other account is for PSPs")


def _check_accounts(who: Identity, records: bytes) -> None:
    for i in range(len(records) // ACCOUNT_SIZE):
        aid = records[i * ACCOUNT_SIZE: i * ACCOUNT_SIZE + 16]
        if owner_of(aid) != who.psp_id:
            raise Unauthorised(
                f"account #{i} (id {int.from_bytes(aid, 'little')}) belongs to PSP {owner_of(aid)} by its id's "
                f"top 32 bits; PSP {who.psp_id} creates ids from account_id_for({who.psp_id}, n)")


def _all_own(records: bytes, own: bytes) -> bool:
    """Fast path: every record's psp_id (bytes 164..167) and debit owner (bytes 28..31) are ``own``,
    compared a byte column at a time (C-speed slicing instead of a Python loop per record)."""
    n = len(records) // TRANSFER_SIZE
    return all(records[at + k::TRANSFER_SIZE] == own[k:k + 1] * n
               for at in (_PSP_ID_AT, _DEBIT_OWNER_AT) for k in range(4))


def _check_transfers(who: Identity, records: bytes) -> list[bytes]:
    mine = who.psp_id
    own = mine.to_bytes(4, "little")
    if _all_own(records, own):
        return []
    pendings: list[bytes] = []  # the slow path names the first bad record, or collects post/voids
    for i, (tid, debit, _credit, psp, flags) in enumerate(_TRANSFER_FIELDS.iter_unpack(records)):
        if psp != mine:
            raise Unauthorised(f"transfer #{i} (id {int.from_bytes(tid, 'little')}) has psp_id {psp} "
                                   f"but your certificate is PSP {mine}")
        if debit[12:] == own:
            continue
        if debit == _ZERO_ID and flags & _SETTLE:
            at = i * TRANSFER_SIZE + _PENDING_ID_AT
            pendings.append(records[at: at + 16])
            continue
        raise Unauthorised(f"transfer #{i} (id {int.from_bytes(tid, 'little')}) debits account "
                               f"{int.from_bytes(debit, 'little')} of PSP {owner_of(debit)}; "
                               f"PSP {mine} may debit only its own accounts")
    return pendings


def check_pending(who: Identity | None, pending_ids: list[bytes], leaves: Iterable[bytes | None]) -> None:
    """A post/void may settle only the caller's own pending transfers (those already committed)."""
    if who is None:
        return
    for pid, leaf in zip(pending_ids, leaves, strict=True):
        if leaf is None:
            continue
        psp = _psp_of_transfer(leaf[LEAF_HEADER_SIZE: LEAF_HEADER_SIZE + TRANSFER_SIZE])
        if psp != who.psp_id:
            raise Unauthorised(f"pending transfer {int.from_bytes(pid, 'little')} belongs to PSP {psp}; "
                                   f"PSP {who.psp_id} may post or void only its own")


def _psp_of_transfer(record: bytes) -> int:
    return int(_TRANSFER_FIELDS.unpack(record)[3])


def check_read_accounts(who: Identity | None, ids: list[bytes]) -> None:
    if who is None or who.role != PSP:
        return
    for aid in ids:
        if owner_of(aid) != who.psp_id:
            raise Unauthorised(f"account {int.from_bytes(aid, 'little')} belongs to PSP {owner_of(aid)}; "
                                   f"PSP {who.psp_id} may read only its own accounts")


def check_read_transfers(who: Identity | None, ids: list[bytes], leaves: Iterable[bytes | None]) -> None:
    if who is None or who.role != PSP:
        return
    for tid, leaf in zip(ids, leaves, strict=True):
        if leaf is not None:
            psp = _psp_of_transfer(leaf[LEAF_HEADER_SIZE: LEAF_HEADER_SIZE + TRANSFER_SIZE])
            if psp != who.psp_id:
                raise Unauthorised(f"transfer {int.from_bytes(tid, 'little')} belongs to PSP {psp}; "
                                       f"PSP {who.psp_id} may read only its own transfers")

class SubmitGate:
    """Called by the Submit handler: record-level authorization before signature checks, fair share
    around the ingest submit (the in-flight slot is freed when the batch is answered)."""

    def __init__(self, reader: LedgerReader, fair_share: FairShare | None) -> None:
        self._reader = reader
        self._fair = fair_share

    def check(self, who: Identity | None, batch: Batch) -> None:
        pendings = check_batch(who, batch)
        if pendings:
            check_pending(who, pendings, [f.leaf if f else None for f in self._reader.transfers(pendings)])

    def submit(self, who: Identity | None, batch: Batch, submit: Callable[[Batch], asyncio.Future[Any]],
               ) -> asyncio.Future[Any]:
        if self._fair is None or who is None or who.role != PSP:
            return submit(batch)
        release = self._fair.admit(who.psp_id, batch.count)
        try:
            fut = submit(batch)
        except BaseException:
            release(None)
            raise
        fut.add_done_callback(release)
        return fut
