"""The real ledger as the simulator's replicated state machine, and a client workload for it.

``LedgerApp`` has the interface of the simulator's toy ``App`` (``conf_state``, ``applied``, ``head``,
``apply``, ``snapshot_data``, ``install``) but applies every normal entry as one block through
``ledger.state.LedgerState`` over a ``MemoryStore``: the entry data is an encoded ``Proposal`` (the
node frames it with its ENTRY_HEADER; the simulator replicates the proposal bytes as they are).
``head`` is the ledger's block hash after the last applied block (it commits to the header: previous
block, Merkle root, chain head, state hash, timestamp), so "identical heads at equal applied index"
compares real ledger state.

Durability: one ``apply_block`` is one atomic store transaction, as the LMDB transaction is in the
node; the simulator keeps the app across a crash (like the toy app) and ``recover()`` re-reads the
store on restart, as a restarting node does.

Snapshots: ``snapshot_data()`` serializes every store table deterministically (public read API, key
order), prefixed with the applied index and head; ``install()`` rebuilds a MemoryStore from those
bytes and ``LedgerState.reload()``s over it.

``LedgerWorkload`` derives everything from one ``random.Random``: a block creating the accounts, then
blocks of a few transfers (single-phase, retries of earlier ids, limit failures, pending with
timeouts, post/void, linked chains, invalid records).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import replace
from typing import Final

from consensus.types import ConfState, Snapshot
from ledger.codec import (
    Batch,
    Proposal,
    decode_account_state,
    decode_proposal,
    encode_account,
    encode_proposal,
    encode_transfer,
    validate_batch,
)
from ledger.state import BlockOutcome, LedgerState
from ledger.store import TABLES, MemoryStore
from ledger.types import U128_MAX, Account, AccountFlags, EventKind, Transfer, TransferFlags

_U32: Final = struct.Struct("<I")
_U64: Final = struct.Struct("<Q")
SNAPSHOT_MAGIC: Final = b"SIMLEDG1"


def dump_tables(store: MemoryStore, tables: tuple[str, ...] = TABLES) -> bytes:
    """Every item of ``tables``, in table order then key order: a canonical byte image of the store."""
    parts: list[bytes] = []
    with store.read() as txn:
        for name in tables:
            items = list(txn.range(name))
            parts.append(bytes((len(name),)) + name.encode() + _U32.pack(len(items)))
            for k, v in items:
                parts.append(_U32.pack(len(k)) + k + _U32.pack(len(v)) + v)
    return b"".join(parts)


def load_tables(raw: bytes) -> MemoryStore:
    store = MemoryStore()
    pos = 0
    with store.write() as txn:
        while pos < len(raw):
            n = raw[pos]
            name = raw[pos + 1 : pos + 1 + n].decode()
            pos += 1 + n
            (count,) = _U32.unpack_from(raw, pos)
            pos += 4
            items = []
            for _ in range(count):
                (klen,) = _U32.unpack_from(raw, pos)
                k = raw[pos + 4 : pos + 4 + klen]
                pos += 4 + klen
                (vlen,) = _U32.unpack_from(raw, pos)
                v = raw[pos + 4 : pos + 4 + vlen]
                pos += 4 + vlen
                items.append((k, v))
            if items:
                txn.put_many(name, items, append=True)
    return store


class LedgerApp:
    """The ledger state machine of one simulated node. ``local_clock`` is a deliberate bug (tests only):
    when set, blocks are applied with this replica's own clock instead of the proposal's timestamp."""

    def __init__(self, conf_state: ConfState, local_clock: Callable[[], int] | None = None) -> None:
        self.conf_state = conf_state
        self.applied = 0
        self.store = MemoryStore()
        self.state = LedgerState(self.store)
        self.head: bytes = self.state.head.block_hash
        self.last_outcome: BlockOutcome | None = None
        self._local_clock = local_clock

    def apply(self, index: int, data: bytes, normal: bool = True) -> None:
        """Apply one committed entry. Conf changes and the leader's empty entry are not blocks."""
        self.last_outcome = None
        if normal and data:
            proposal = decode_proposal(data)
            if self._local_clock is not None:
                proposal = Proposal(self._local_clock(), proposal.batches)
            self.last_outcome = self.state.apply_block(proposal, applied_index=index)
            self.head = self.state.head.block_hash
        self.applied = index

    def recover(self) -> None:
        """A restart: the process forgets its caches and re-reads the (durable) store."""
        self.state.reload()
        self.head = self.state.head.block_hash

    def snapshot_data(self) -> bytes:
        return SNAPSHOT_MAGIC + _U64.pack(self.applied) + self.head + dump_tables(self.store)

    def install(self, snap: Snapshot) -> None:
        raw = snap.data
        if raw[:8] != SNAPSHOT_MAGIC:
            raise ValueError("not a ledger snapshot")
        (applied,) = _U64.unpack_from(raw, 8)
        head = raw[16:48]
        self.store = load_tables(raw[48:])
        self.state.store = self.store
        self.state.reload()
        if self.state.head.block_hash != head:
            raise ValueError(f"ledger snapshot at {applied}: rebuilt head differs from the one it was taken at")
        self.head = self.state.head.block_hash
        self.applied = applied
        self.conf_state = snap.metadata.conf_state
        self.last_outcome = None

    # -- inspection (checkers) ------------------------------------------------------------------

    def accounts_bytes(self) -> bytes:
        return dump_tables(self.store, ("accounts",))

    def totals(self) -> tuple[int, int, int, int]:
        """(debits pending, credits pending, debits posted, credits posted) summed over all accounts."""
        dp = cp = dpo = cpo = 0
        with self.store.read() as txn:
            for _, v in txn.range("accounts"):
                b = decode_account_state(v)
                dp += b.debits_pending
                cp += b.credits_pending
                dpo += b.debits_posted
                cpo += b.credits_posted
        return dp, cp, dpo, cpo

    def has_account(self, account_id: int) -> bool:
        with self.store.read() as txn:
            return txn.get("accounts", account_id.to_bytes(16, "little")) is not None

    def transfer_statuses(self) -> dict[int, int]:
        """status -> how many stored transfers have it."""
        out: dict[int, int] = {}
        with self.store.read() as txn:
            for _, v in txn.range("transfers"):
                status = v[24]  # TRANSFER_REF: leaf index, block, timestamp (3 x u64), then status
                out[status] = out.get(status, 0) + 1
        return out


# -- the client workload ----------------------------------------------------------------------------

LEDGER: Final = 1
OTHER_LEDGER: Final = 2
CODE: Final = 10
_DMNEC: Final = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
_CMNED: Final = int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)
_HIST: Final = int(AccountFlags.HISTORY)
_LINKED_A: Final = int(AccountFlags.LINKED)
_LINKED: Final = int(TransferFlags.LINKED)
_PENDING: Final = int(TransferFlags.PENDING)
_POST: Final = int(TransferFlags.POST_PENDING_TRANSFER)
_VOID: Final = int(TransferFlags.VOID_PENDING_TRANSFER)


class LedgerWorkload:
    """Block proposals from one seeded generator. Account 0 funds the others (no limit flag)."""

    def __init__(self, rng: random.Random, accounts: int = 16) -> None:
        self.rng = rng
        self.accounts: list[Account] = []
        for i in range(accounts):
            flags = 0
            if i and i % 3 != 0:
                flags |= _DMNEC  # most accounts cannot overdraw
            if i % 5 == 4:
                flags |= _HIST
            if i == accounts - 1:
                flags = _CMNED  # credits must not exceed debits
            if i in (accounts - 4, accounts - 3):  # a linked pair of account creations
                flags |= _LINKED_A if i == accounts - 4 else 0
            ledger = OTHER_LEDGER if i == accounts - 2 else LEDGER
            self.accounts.append(Account(id=self._new_id(), ledger=ledger, code=CODE + i, flags=flags))
        self.funding = self.accounts[0].id
        self.main = [a.id for a in self.accounts if a.ledger == LEDGER]
        self.other = [a.id for a in self.accounts if a.ledger != LEDGER]
        self.sent: list[Transfer] = []
        self.pending: list[Transfer] = []
        self.marker_id = self._new_id()

    def _new_id(self) -> int:
        while True:
            x = self.rng.getrandbits(128)
            if 0 < x < U128_MAX:
                return x

    def setup(self, timestamp_ns: int) -> bytes:
        """The accounts block (proposed again until it is applied: retries answer EXISTS)."""
        records = b"".join(encode_account(a) for a in self.accounts)
        return encode_proposal(Proposal(timestamp_ns, (validate_batch(EventKind.CREATE_ACCOUNT, records, b"", b""),)))

    def marker(self, timestamp_ns: int) -> bytes:
        """The liveness phase's entry: one fixed transfer (re-proposed byte-identically if lost)."""
        t = Transfer(self.marker_id, self.funding, self.main[1], 1, LEDGER, 1)
        return self._proposal(timestamp_ns, [[t]])

    def block(self, timestamp_ns: int) -> bytes:
        rng = self.rng
        batches: list[list[Transfer]] = [[]]
        for _ in range(rng.randint(1, 4)):
            batch = batches[-1]
            batch.extend(self._item())
            if rng.random() < 0.15:
                batches.append([])
        return self._proposal(timestamp_ns, [b for b in batches if b])

    def _proposal(self, timestamp_ns: int, batches: list[list[Transfer]]) -> bytes:
        out: list[Batch] = []
        for b in batches:
            records = b"".join(encode_transfer(t) for t in b)
            out.append(validate_batch(EventKind.CREATE_TRANSFER, records, b"", b""))
        return encode_proposal(Proposal(timestamp_ns, tuple(out)))

    def _pair(self) -> tuple[int, int]:
        rng = self.rng
        dr = self.funding if rng.random() < 0.4 else rng.choice(self.main)
        cr = rng.choice([a for a in self.main if a != dr])
        return dr, cr

    def _plain(self, flags: int = 0) -> Transfer:
        dr, cr = self._pair()
        rng = self.rng
        amount = rng.randint(100, 10_000) if dr == self.funding else rng.randint(1, 800)
        t = Transfer(self._new_id(), dr, cr, amount, LEDGER, 1 + rng.randrange(3), flags=flags,
                     user_data=rng.getrandbits(64))
        self.sent.append(t)
        return t

    def _item(self) -> list[Transfer]:
        rng = self.rng
        x = rng.random()
        if x < 0.45:
            return [self._plain()]
        if x < 0.57 and self.sent:  # a client retry: same id, usually the same record
            t = rng.choice(self.sent)
            if rng.random() < 0.25:
                t = replace(t, amount=t.amount + 1)  # same id, other content: EXISTS_WITH_DIFFERENT_AMOUNT
            return [t]
        if x < 0.69:  # pending, usually with a timeout that the fake clock reaches
            dr, cr = self._pair()
            t = Transfer(self._new_id(), dr, cr, rng.randint(1, 2_000), LEDGER, 7, flags=_PENDING,
                         timeout_s=rng.choice((0, 1, 2, 3)))
            self.pending.append(t)
            self.sent.append(t)
            return [t]
        if x < 0.79 and self.pending:  # post (full or partial) or void an earlier pending transfer
            p = rng.choice(self.pending)
            post = rng.random() < 0.6
            amount = (rng.choice((0, p.amount, max(1, p.amount // 2))) if post
                      else rng.choice((0, p.amount)))
            t = Transfer(self._new_id(), 0, 0, amount, 0, 0, flags=_POST if post else _VOID, pending_id=p.id)
            self.sent.append(t)
            return [t]
        if x < 0.87:  # a linked chain; sometimes one link fails and the whole chain is undone
            chain = [self._plain(_LINKED) for _ in range(rng.randint(1, 2))]
            last = self._plain()
            if rng.random() < 0.3:  # a link that overdraws a limited account: the chain fails as a whole
                capped = rng.choice([a.id for a in self.accounts[1:] if a.flags & _DMNEC and a.ledger == LEDGER])
                last = replace(last, debit_account_id=capped, credit_account_id=self.funding, amount=10**12)
            return [*chain, last]
        if x < 0.95:  # overdraw a limited account: fails on its limit (EXCEEDS_CREDITS / _DEBITS)
            limited = [a.id for a in self.accounts if a.flags & (_DMNEC | _CMNED) and a.ledger == LEDGER]
            a = rng.choice(limited)
            other = self.funding
            dr, cr = (a, other) if rng.random() < 0.7 else (other, a)
            return [Transfer(self._new_id(), dr, cr, rng.randint(10_000, 10**9), LEDGER, 3)]
        # invalid on purpose: zero amount, same account, or across ledgers
        dr, cr = self._pair()
        kind = rng.randrange(3)
        if kind == 0:
            return [Transfer(self._new_id(), dr, cr, 0, LEDGER, 1)]
        if kind == 1:
            return [Transfer(self._new_id(), dr, dr, 5, LEDGER, 1)]
        return [Transfer(self._new_id(), dr, self.other[0], 5, LEDGER, 1)]

