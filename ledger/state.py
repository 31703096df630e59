"""The deterministic ledger state machine: apply one block proposal in one write transaction.

Given the same sequence of proposals, every replica computes byte-identical leaves, chain links,
Merkle roots, block headers, state hashes and balances: nothing here reads a clock, a random
source, the environment or anything but the store and the proposal. Timestamps come from the
proposal (leader-assigned) and are made strictly increasing here, deterministically.

Exactly-once: the block's ledger changes, leaves, tree nodes, chain head and applied index are
written in one store transaction. In-memory caches are only updated after that commit succeeds,
so a failed commit (map full, disk full) leaves both the store and the caches at the previous
block.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import blake3

from ledger.codec import (
    ACCOUNT_SIZE,
    ACCOUNT_STATE_STRUCT,
    ACCOUNT_STRUCT,
    AUX_LEN,
    FORMAT_VERSION,
    LEAF_HEADER,
    MAX16,
    NO_AUX,
    TRANSFER_SIZE,
    TRANSFER_STRUCT,
    ZERO16,
    ZERO32,
    Batch,
    BlockHeader,
    Proposal,
    decode_account_state,
    decode_leaf,
    psp_signature_aux,
)
from ledger.hashing import GENESIS_LINK, block_hash
from ledger.invariant import invariant
from ledger.merkle import CompactRange
from ledger.store import ReadTxn, Store, WriteTxn
from ledger.types import (
    ACCOUNT_FLAGS_KNOWN,
    TRANSFER_FLAGS_KNOWN,
    U64_MAX,
    U128_MAX,
    AccountFlags,
    EventKind,
    Result,
    TransferFlags,
    TransferStatus,
)

R = Result
_LINKED_T: Final = int(TransferFlags.LINKED)
_PENDING: Final = int(TransferFlags.PENDING)
_POST: Final = int(TransferFlags.POST_PENDING_TRANSFER)
_VOID: Final = int(TransferFlags.VOID_PENDING_TRANSFER)
_LINKED_A: Final = int(AccountFlags.LINKED)
_DMNEC: Final = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
_CMNED: Final = int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)
_HIST: Final = int(AccountFlags.HISTORY)
_NOT_T_FLAGS: Final = 0xFFFF & ~TRANSFER_FLAGS_KNOWN
_NOT_A_FLAGS: Final = 0xFFFF & ~ACCOUNT_FLAGS_KNOWN
_RESERVED23: Final = bytes(23)
_NS: Final = 1_000_000_000

# transfers table value: leaf_index, block, timestamp_ns, status, expires_at_ns
TRANSFER_REF: Final = struct.Struct("<QQQBQ")
# meta "head": height, tree_size, last_timestamp_ns, block_hash, chain_head, state_hash, ruleset_hash
HEAD: Final = struct.Struct("<QQQ32s32s32s32s")
_U64BE: Final = struct.Struct(">Q")
_NODE_KEY: Final = struct.Struct(">BQ")
_STATE_DOMAIN: Final = b"\x04"

META_HEAD: Final = b"head"
META_RANGE: Final = b"range"
META_APPLIED: Final = b"applied"
META_SCALE_PREFIX: Final = b"scale:"


class AccountState:
    """Mutable hot state of one account (the cache's value). Balances are u128 Python ints."""

    __slots__ = ("code", "cp", "cpo", "dp", "dpo", "flags", "ledger", "record", "scale", "ts")

    def __init__(self, record: bytes, dp: int, dpo: int, cp: int, cpo: int, ts: int) -> None:
        _id, _ud, ledger, code, flags, scale, _res = ACCOUNT_STRUCT.unpack(record)
        self.record = record
        self.ledger: int = ledger
        self.code: int = code
        self.flags: int = flags
        self.scale: int = scale
        self.dp = dp
        self.dpo = dpo
        self.cp = cp
        self.cpo = cpo
        self.ts = ts

    def copy(self) -> AccountState:
        return AccountState(self.record, self.dp, self.dpo, self.cp, self.cpo, self.ts)

    def encode(self) -> bytes:
        m = U64_MAX
        return ACCOUNT_STATE_STRUCT.pack(
            self.record, self.dp & m, self.dp >> 64, self.dpo & m, self.dpo >> 64,
            self.cp & m, self.cp >> 64, self.cpo & m, self.cpo >> 64, self.ts,
        )

    @staticmethod
    def decode(raw: bytes) -> AccountState:
        b = decode_account_state(raw)
        return AccountState(
            raw[:ACCOUNT_SIZE], b.debits_pending, b.debits_posted, b.credits_pending,
            b.credits_posted, b.timestamp_ns,
        )


@dataclass(slots=True)
class TransferRef:
    leaf_index: int
    block: int
    timestamp_ns: int
    status: int
    expires_at_ns: int = 0

    def encode(self) -> bytes:
        return TRANSFER_REF.pack(self.leaf_index, self.block, self.timestamp_ns, self.status, self.expires_at_ns)

    @staticmethod
    def decode(raw: bytes) -> TransferRef:
        return TransferRef(*TRANSFER_REF.unpack(raw))


@dataclass(frozen=True, slots=True)
class Head:
    """The ledger's position after the last applied block."""

    height: int = 0
    tree_size: int = 0
    last_timestamp_ns: int = 0
    block_hash: bytes = ZERO32
    chain_head: bytes = GENESIS_LINK
    state_hash: bytes = ZERO32
    ruleset_hash: bytes = ZERO32

    def encode(self) -> bytes:
        return HEAD.pack(
            self.height, self.tree_size, self.last_timestamp_ns, self.block_hash, self.chain_head,
            self.state_hash, self.ruleset_hash,
        )

    @staticmethod
    def decode(raw: bytes) -> Head:
        return Head(*HEAD.unpack(raw))


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


@dataclass(slots=True)
class _Event:
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


@dataclass(slots=True)
class _Block:
    """Everything one block changes, kept aside until its transaction commits."""

    txn: WriteTxn
    height: int
    ts0: int
    accounts: dict[bytes, AccountState] = field(default_factory=dict)
    new_accounts: set[bytes] = field(default_factory=set)
    saved: dict[bytes, tuple[int, int, int, int]] = field(default_factory=dict)  # balances before the block
    transfers: dict[bytes, TransferRef] = field(default_factory=dict)
    expiry_puts: list[bytes] = field(default_factory=list)
    expiry_dels: list[bytes] = field(default_factory=list)
    scales: dict[int, int] = field(default_factory=dict)
    bodies: dict[bytes, bytes] = field(default_factory=dict)  # records of transfers created in this block
    undo: list[Callable[[], None]] | None = None  # set while inside a linked chain


class LedgerState:
    """Applies block proposals to a store. Single writer; readers use ``LedgerReader``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._accounts: dict[bytes, AccountState] = {}
        self._scales: dict[int, int] = {}
        with store.read() as txn:
            raw = txn.get("meta", META_HEAD)
            self.head = Head.decode(raw) if raw else Head()
            rng = txn.get("meta", META_RANGE)
            self.range = CompactRange.from_bytes(rng) if rng else CompactRange()
            applied = txn.get("meta", META_APPLIED)
            self.applied_index = _U64BE.unpack(applied)[0] if applied else 0
            for k, v in txn.range("meta", META_SCALE_PREFIX, META_SCALE_PREFIX + b"\xff"):
                self._scales[int.from_bytes(k[len(META_SCALE_PREFIX):], "big")] = v[0]
        invariant(self.range.size == self.head.tree_size, "compact range size disagrees with head")

    # -- public --------------------------------------------------------------------------------

    def apply_block(self, proposal: Proposal, applied_index: int = 0) -> BlockOutcome:
        """Apply one proposal as one block; durable when this returns."""
        head = self.head
        ts0 = max(proposal.timestamp_ns, head.last_timestamp_ns + 1)
        height = head.height + 1
        blk: _Block | None = None
        try:
            with self.store.write() as txn:
                blk = _Block(txn, height, ts0)
                events: list[_Event] = []
                self._expire_pending(blk, events)
                spans: list[tuple[int, int]] = []
                for batch in proposal.batches:
                    start = len(events)
                    if batch.kind == EventKind.CREATE_TRANSFER:
                        self._apply_transfers(blk, batch, events)
                    else:
                        self._apply_accounts(blk, batch, events)
                    spans.append((start, len(events)))
                outcome, new_head, new_range = self._seal(blk, events, spans, applied_index)
        except BaseException:
            if blk is not None:  # nothing was committed: put cached balances back
                for aid, (dp, dpo, cp, cpo) in blk.saved.items():
                    a = self._accounts[aid]
                    a.dp, a.dpo, a.cp, a.cpo = dp, dpo, cp, cpo
            raise
        # committed: publish new accounts into the cache (existing ones were updated in place)
        for aid in blk.new_accounts:
            self._accounts[aid] = blk.accounts[aid]
        self._scales.update(blk.scales)
        self.head = new_head
        self.range = new_range
        if applied_index:
            self.applied_index = applied_index
        return outcome

    def account(self, account_id: bytes) -> AccountState | None:
        a = self._accounts.get(account_id)
        if a is None:
            with self.store.read() as txn:
                raw = txn.get("accounts", account_id)
            if raw is None:
                return None
            a = AccountState.decode(raw)
            self._accounts[account_id] = a
        return a

    # -- accounts -------------------------------------------------------------------------------

    def _get_account(self, blk: _Block, aid: bytes) -> AccountState | None:
        a = blk.accounts.get(aid)
        if a is not None:
            return a
        a = self._accounts.get(aid)
        if a is None:
            raw = blk.txn.get("accounts", aid)
            if raw is None:
                return None
            a = AccountState.decode(raw)  # committed state: safe to cache before this block commits
            self._accounts[aid] = a
        blk.saved[aid] = (a.dp, a.dpo, a.cp, a.cpo)
        blk.accounts[aid] = a
        return a

    def _apply_accounts(self, blk: _Block, batch: Batch, events: list[_Event]) -> None:
        records = batch.records
        recs = list(ACCOUNT_STRUCT.iter_unpack(records))
        sigs = _signature_auxes(batch)
        self._apply_chains(
            blk, events, len(recs), [r[4] & _LINKED_A for r in recs],
            lambda i: self._create_account(blk, recs[i], records[i * ACCOUNT_SIZE : (i + 1) * ACCOUNT_SIZE],
                                           sigs[i] if sigs else b""),
            lambda i, code: _Event(EventKind.CREATE_ACCOUNT, code,
                                   records[i * ACCOUNT_SIZE : (i + 1) * ACCOUNT_SIZE],
                                   sigs[i] if sigs else b"", ()),
        )

    def _create_account(self, blk: _Block, rec: tuple[bytes, bytes, int, int, int, int, bytes],
                        raw: bytes, aux: bytes) -> _Event:
        aid, _ud, ledger, code, flags, scale, reserved = rec

        def fail(r: Result) -> _Event:
            return _Event(EventKind.CREATE_ACCOUNT, r, raw, aux, ())

        if reserved != _RESERVED23:
            return fail(R.RESERVED_FIELD)
        if flags & _NOT_A_FLAGS:
            return fail(R.RESERVED_FLAG)
        if aid == ZERO16:
            return fail(R.ID_MUST_NOT_BE_ZERO)
        if aid == MAX16:
            return fail(R.ID_MUST_NOT_BE_INT_MAX)
        if flags & _DMNEC and flags & _CMNED:
            return fail(R.FLAGS_ARE_MUTUALLY_EXCLUSIVE)
        if ledger == 0:
            return fail(R.LEDGER_MUST_NOT_BE_ZERO)
        if code == 0:
            return fail(R.CODE_MUST_NOT_BE_ZERO)
        existing = self._get_account(blk, aid)
        if existing is not None:
            return fail(_account_exists(existing, raw))
        known_scale = blk.scales.get(ledger, self._scales.get(ledger))
        if known_scale is not None and known_scale != scale:
            return fail(R.ASSET_SCALE_MISMATCH)
        ts = blk.ts0  # replaced by the leaf timestamp at numbering; kept deterministic either way
        acct = AccountState(raw, 0, 0, 0, 0, ts)
        blk.accounts[aid] = acct
        blk.new_accounts.add(aid)
        if known_scale is None:
            blk.scales[ledger] = scale
        if blk.undo is not None:
            blk.undo.append(lambda: _forget_account(blk, aid, ledger, known_scale is None))
        return _Event(EventKind.CREATE_ACCOUNT, R.OK, raw, aux, (aid,) if flags & _HIST else (), account=acct)

    # -- transfers ------------------------------------------------------------------------------

    def _apply_transfers(self, blk: _Block, batch: Batch, events: list[_Event]) -> None:
        records = batch.records
        recs = list(TRANSFER_STRUCT.iter_unpack(records))
        sigs = _signature_auxes(batch)
        linked = [r[13] & _LINKED_T for r in recs]
        if any(linked):
            self._apply_chains(
                blk, events, len(recs), linked,
                lambda i: self._create_transfer(blk, recs[i], records[i * TRANSFER_SIZE : (i + 1) * TRANSFER_SIZE],
                                                sigs[i] if sigs else b""),
                lambda i, code: _Event(EventKind.CREATE_TRANSFER, code,
                                       records[i * TRANSFER_SIZE : (i + 1) * TRANSFER_SIZE],
                                       sigs[i] if sigs else b"", ()),
            )
            return
        self._apply_unlinked(blk, recs, records, sigs, events)

    def _apply_unlinked(self, blk: _Block, recs: list[tuple], records: bytes,  # type: ignore[type-arg]
                        sigs: list[bytes], events: list[_Event]) -> None:
        """The hot path. Plain single-phase transfers between existing, unlimited-or-sufficient accounts
        are applied inline; anything else (any flag, any failure, any doubt) goes through the general
        ``_create_transfer``, which re-checks everything in documented precedence. The inline path
        mutates nothing until every check has passed, so falling back is always safe."""
        create = self._create_transfer
        get_account = self._get_account
        accounts = blk.accounts
        transfers = blk.transfers
        bodies = blk.bodies
        stored = blk.txn.getter("transfers")
        height = blk.height
        append = events.append
        kind = EventKind.CREATE_TRANSFER
        ok = R.OK
        single = TransferStatus.SINGLE_PHASE
        for i, rec in enumerate(recs):
            raw = records[i * TRANSFER_SIZE : (i + 1) * TRANSFER_SIZE]
            aux = sigs[i] if sigs else b""
            tid, dr, cr, amount, ahi, pid, _ud, _ext, _pii, ledger, _psp, timeout, code, flags = rec
            if (flags or ahi or not amount or not code or timeout or dr == cr or pid != ZERO16
                    or tid == ZERO16 or tid == MAX16 or tid in transfers):
                append(create(blk, rec, raw, aux))
                continue
            dra = accounts.get(dr) or get_account(blk, dr)
            cra = accounts.get(cr) or get_account(blk, cr)
            if (dra is None or cra is None or dra.ledger != ledger or cra.ledger != ledger
                    or dr == MAX16 or cr == MAX16 or stored(tid[::-1]) is not None):
                append(create(blk, rec, raw, aux))
                continue
            dpo = dra.dpo + amount
            cpo = cra.cpo + amount
            if (dpo + dra.dp) >> 128 or (cpo + cra.cp) >> 128:
                append(create(blk, rec, raw, aux))
                continue
            if (dra.flags & _DMNEC and dpo + dra.dp > dra.cpo) or (cra.flags & _CMNED and cpo + cra.cp > cra.dpo):
                append(create(blk, rec, raw, aux))
                continue
            dra.dpo = dpo
            cra.cpo = cpo
            ref = TransferRef(0, height, 0, single)
            transfers[tid] = ref
            bodies[tid] = raw
            hist = _history(dr, dra, cr, cra) if (dra.flags | cra.flags) & _HIST else ()
            append(_Event(kind, ok, raw, aux, hist, ref, tid))

    def _create_transfer(self, blk: _Block, rec: tuple, raw: bytes, aux: bytes) -> _Event:  # type: ignore[type-arg]
        tid, dr, cr, alo, ahi, pid, _ud, _ext, _pii, ledger, _psp, timeout, code, flags = rec

        def fail(r: Result) -> _Event:
            return _Event(EventKind.CREATE_TRANSFER, r, raw, aux, ())

        if flags & _NOT_T_FLAGS:
            return fail(R.RESERVED_FLAG)
        if tid == ZERO16:
            return fail(R.ID_MUST_NOT_BE_ZERO)
        if tid == MAX16:
            return fail(R.ID_MUST_NOT_BE_INT_MAX)
        kinds = flags & (_PENDING | _POST | _VOID)
        if kinds & (kinds - 1):
            return fail(R.FLAGS_ARE_MUTUALLY_EXCLUSIVE)
        if kinds & (_POST | _VOID):
            return self._post_or_void(blk, rec, raw, aux, fail)
        if dr == ZERO16:
            return fail(R.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO)
        if dr == MAX16:
            return fail(R.DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX)
        if cr == ZERO16:
            return fail(R.CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO)
        if cr == MAX16:
            return fail(R.CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX)
        if dr == cr:
            return fail(R.ACCOUNTS_MUST_BE_DIFFERENT)
        if pid != ZERO16:
            return fail(R.PENDING_ID_MUST_BE_ZERO)
        if timeout and not kinds:
            return fail(R.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER)
        amount = alo | (ahi << 64)
        if amount == 0:
            return fail(R.AMOUNT_MUST_NOT_BE_ZERO)
        if ledger == 0:
            return fail(R.LEDGER_MUST_NOT_BE_ZERO)
        if code == 0:
            return fail(R.CODE_MUST_NOT_BE_ZERO)
        dra = self._get_account(blk, dr)
        if dra is None:
            return fail(R.DEBIT_ACCOUNT_NOT_FOUND)
        cra = self._get_account(blk, cr)
        if cra is None:
            return fail(R.CREDIT_ACCOUNT_NOT_FOUND)
        if dra.ledger != cra.ledger:
            return fail(R.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER)
        if ledger != dra.ledger:
            return fail(R.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS)
        existing = self._get_transfer(blk, tid)
        if existing is not None:
            return self._transfer_exists(blk, tid, existing, raw, aux)
        if kinds:  # pending: reserve
            if dra.dp + amount > U128_MAX:
                return fail(R.OVERFLOWS_DEBITS_PENDING)
            if cra.cp + amount > U128_MAX:
                return fail(R.OVERFLOWS_CREDITS_PENDING)
        else:
            if dra.dpo + amount > U128_MAX:
                return fail(R.OVERFLOWS_DEBITS_POSTED)
            if cra.cpo + amount > U128_MAX:
                return fail(R.OVERFLOWS_CREDITS_POSTED)
        if dra.dp + dra.dpo + amount > U128_MAX:
            return fail(R.OVERFLOWS_DEBITS)
        if cra.cp + cra.cpo + amount > U128_MAX:
            return fail(R.OVERFLOWS_CREDITS)
        expires = 0
        if timeout:
            expires = blk.ts0 + timeout * _NS
            if expires > U64_MAX:
                return fail(R.OVERFLOWS_TIMEOUT)
        if dra.flags & _DMNEC and dra.dp + dra.dpo + amount > dra.cpo:
            return fail(R.EXCEEDS_CREDITS)
        if cra.flags & _CMNED and cra.cp + cra.cpo + amount > cra.dpo:
            return fail(R.EXCEEDS_DEBITS)
        # -- effects (nothing above mutated state)
        undo = blk.undo
        if undo is not None:
            undo.append(_balance_restorer(dra))
            undo.append(_balance_restorer(cra))
            undo.append(lambda: blk.transfers.pop(tid, None))
        blk.bodies[tid] = raw
        if kinds:
            dra.dp += amount
            cra.cp += amount
            ref = TransferRef(0, blk.height, 0, TransferStatus.PENDING, expires)
            if expires:
                key = _U64BE.pack(expires) + tid
                blk.expiry_puts.append(key)
                if undo is not None:
                    undo.append(lambda: blk.expiry_puts.remove(key))
        else:
            dra.dpo += amount
            cra.cpo += amount
            ref = TransferRef(0, blk.height, 0, TransferStatus.SINGLE_PHASE)
        blk.transfers[tid] = ref
        return _Event(EventKind.CREATE_TRANSFER, R.OK, raw, aux, _history(dr, dra, cr, cra), ref, tid)

    def _post_or_void(self, blk: _Block, rec: tuple, raw: bytes, aux: bytes,  # type: ignore[type-arg]
                      fail: Callable[[Result], _Event]) -> _Event:
        tid, dr, cr, alo, ahi, pid, _ud, _ext, _pii, ledger, _psp, timeout, code, flags = rec
        if pid == ZERO16:
            return fail(R.PENDING_ID_MUST_NOT_BE_ZERO)
        if pid == MAX16:
            return fail(R.PENDING_ID_MUST_NOT_BE_INT_MAX)
        if pid == tid:
            return fail(R.PENDING_ID_MUST_BE_DIFFERENT)
        if timeout:
            return fail(R.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER)
        pref = self._get_transfer(blk, pid)
        if pref is None:
            return fail(R.PENDING_TRANSFER_NOT_FOUND)
        p = TRANSFER_STRUCT.unpack(self._leaf_body(blk, pid, pref))
        p_dr, p_cr, p_amount, p_ledger, p_code, p_flags = p[1], p[2], p[3] | (p[4] << 64), p[9], p[12], p[13]
        if not p_flags & _PENDING:
            return fail(R.PENDING_TRANSFER_NOT_PENDING)
        if dr != ZERO16 and dr != p_dr:
            return fail(R.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID)
        if cr != ZERO16 and cr != p_cr:
            return fail(R.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID)
        if ledger != 0 and ledger != p_ledger:
            return fail(R.PENDING_TRANSFER_HAS_DIFFERENT_LEDGER)
        if code != 0 and code != p_code:
            return fail(R.PENDING_TRANSFER_HAS_DIFFERENT_CODE)
        existing = self._get_transfer(blk, tid)
        if existing is not None:
            return self._transfer_exists(blk, tid, existing, raw, aux)
        amount = alo | (ahi << 64)
        posting = bool(flags & _POST)
        if posting:
            if amount == 0:
                amount = p_amount
            if amount > p_amount:
                return fail(R.EXCEEDS_PENDING_TRANSFER_AMOUNT)
        elif amount not in (0, p_amount):
            return fail(R.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT)
        if pref.status == TransferStatus.POSTED:
            return fail(R.PENDING_TRANSFER_ALREADY_POSTED)
        if pref.status == TransferStatus.VOIDED:
            return fail(R.PENDING_TRANSFER_ALREADY_VOIDED)
        if pref.status == TransferStatus.EXPIRED or (pref.expires_at_ns and pref.expires_at_ns <= blk.ts0):
            return fail(R.PENDING_TRANSFER_EXPIRED)
        dra = self._get_account(blk, p_dr)
        cra = self._get_account(blk, p_cr)
        invariant(dra is not None and cra is not None, "accounts of a pending transfer vanished")
        assert dra is not None and cra is not None  # for the type checker; invariant above guards
        if posting and (dra.dpo + amount > U128_MAX):
            return fail(R.OVERFLOWS_DEBITS_POSTED)
        if posting and (cra.cpo + amount > U128_MAX):
            return fail(R.OVERFLOWS_CREDITS_POSTED)
        undo = blk.undo
        if undo is not None:
            undo.append(_balance_restorer(dra))
            undo.append(_balance_restorer(cra))
            undo.append(_ref_restorer(blk, pid, pref))
            undo.append(lambda: blk.transfers.pop(tid, None))
        blk.bodies[tid] = raw
        invariant(dra.dp >= p_amount and cra.cp >= p_amount, "pending balance below a pending amount")
        dra.dp -= p_amount
        cra.cp -= p_amount
        if posting:
            dra.dpo += amount
            cra.cpo += amount
        pref.status = TransferStatus.POSTED if posting else TransferStatus.VOIDED
        blk.transfers[pid] = pref
        if pref.expires_at_ns:
            key = _U64BE.pack(pref.expires_at_ns) + pid
            blk.expiry_dels.append(key)
            if undo is not None:
                undo.append(lambda: blk.expiry_dels.remove(key))
        ref = TransferRef(0, blk.height, 0, TransferStatus.SINGLE_PHASE)
        blk.transfers[tid] = ref
        return _Event(EventKind.CREATE_TRANSFER, R.OK, raw, aux, _history(p_dr, dra, p_cr, cra), ref, tid)

    def _get_transfer(self, blk: _Block, tid: bytes) -> TransferRef | None:
        ref = blk.transfers.get(tid)
        if ref is not None:
            return ref
        raw = blk.txn.get("transfers", tid[::-1])
        return TransferRef.decode(raw) if raw is not None else None

    def _leaf_body(self, blk: _Block, tid: bytes, ref: TransferRef) -> bytes:
        if ref.block == blk.height:  # created in this very block: not stored yet
            body = blk.bodies.get(tid)
            invariant(body is not None, "transfer of the current block has no body")
            assert body is not None
            return body
        raw = blk.txn.get("leaves", _U64BE.pack(ref.leaf_index))
        invariant(raw is not None, f"leaf {ref.leaf_index} of a stored transfer is missing")
        assert raw is not None
        return decode_leaf(raw).body

    def _transfer_exists(self, blk: _Block, tid: bytes, existing: TransferRef, raw: bytes,
                         aux: bytes) -> _Event:
        original = self._leaf_body(blk, tid, existing)
        code = R.TRANSFER_EXISTS if original == raw else _transfer_exists_code(original, raw)
        ev = _Event(EventKind.CREATE_TRANSFER, code, raw, aux, ())
        if code == R.TRANSFER_EXISTS:
            ev.existing = existing
        return ev

    # -- linked chains -------------------------------------------------------------------------

    def _apply_chains(self, blk: _Block, events: list[_Event], n: int, linked: list[int],
                      apply_one: Callable[[int], _Event], failed: Callable[[int, int], _Event]) -> None:
        """Apply events; a linked chain (flag LINKED on all but its last event) is all-or-nothing."""
        i = 0
        while i < n:
            if not linked[i]:
                events.append(apply_one(i))
                i += 1
                continue
            end = i
            while end < n and linked[end]:
                end += 1
            if end == n:  # chain never closed
                for j in range(i, n - 1):
                    events.append(failed(j, R.LINKED_EVENT_FAILED))
                events.append(failed(n - 1, R.LINKED_EVENT_CHAIN_OPEN))
                return
            self._apply_chain(blk, events, i, end + 1, apply_one, failed)
            i = end + 1

    def _apply_chain(self, blk: _Block, events: list[_Event], start: int, stop: int,
                     apply_one: Callable[[int], _Event], failed: Callable[[int, int], _Event]) -> None:
        blk.undo = []
        chain: list[_Event] = []
        failure_at = -1
        for j in range(start, stop):
            ev = apply_one(j)
            chain.append(ev)
            if ev.result != R.OK and ev.existing is None:
                failure_at = j
                break
        undo, blk.undo = blk.undo, None
        if failure_at < 0:
            events.extend(chain)
            return
        for action in reversed(undo):
            action()
        for j in range(start, stop):
            if j == failure_at:
                events.append(chain[j - start])
            else:
                events.append(failed(j, R.LINKED_EVENT_FAILED))

    # -- expiry ---------------------------------------------------------------------------------

    def _expire_pending(self, blk: _Block, events: list[_Event]) -> None:
        txn = blk.txn
        due = list(txn.range("expiry", b"", _U64BE.pack(blk.ts0 + 1)))
        for key, _ in due:
            pid = key[8:]
            blk.expiry_dels.append(key)
            pref = self._get_transfer(blk, pid)
            invariant(pref is not None, "expiry index points to a missing transfer")
            assert pref is not None
            if pref.status != TransferStatus.PENDING:
                continue
            p = TRANSFER_STRUCT.unpack(self._leaf_body(blk, pid, pref))
            amount = p[3] | (p[4] << 64)
            dra = self._get_account(blk, p[1])
            cra = self._get_account(blk, p[2])
            assert dra is not None and cra is not None
            invariant(dra.dp >= amount and cra.cp >= amount, "expiring more than is pending")
            dra.dp -= amount
            cra.cp -= amount
            pref.status = TransferStatus.EXPIRED
            blk.transfers[pid] = pref
            events.append(_Event(EventKind.EXPIRE_PENDING, R.OK, pid, b"", _history(p[1], dra, p[2], cra)))

    # -- sealing: leaves, tree, chain, header, one write ----------------------------------------

    def _seal(self, blk: _Block, events: list[_Event], spans: list[tuple[int, int]],
              applied_index: int) -> tuple[BlockOutcome, Head, CompactRange]:
        txn = blk.txn
        head = self.head
        index = head.tree_size
        first_index = index
        ts = blk.ts0
        pack_header = LEAF_HEADER.pack
        pack_aux = AUX_LEN.pack
        leaves: list[tuple[bytes, bytes]] = []
        leaf_hashes: list[bytes] = []
        history: list[tuple[bytes, bytes]] = []
        link = head.chain_head
        b3 = blake3.blake3
        log_indexes = [0] * len(events)
        blocks = [blk.height] * len(events)
        for n, ev in enumerate(events):
            if ev.existing is not None:
                log_indexes[n] = ev.existing.leaf_index
                blocks[n] = ev.existing.block
                continue
            body = ev.body
            leaf = b"".join((pack_header(FORMAT_VERSION, ev.kind, ev.result, index, ts, len(body)), body,
                             pack_aux(len(ev.aux)), ev.aux)) if ev.aux else \
                b"".join((pack_header(FORMAT_VERSION, ev.kind, ev.result, index, ts, len(body)), body, NO_AUX))
            key = _U64BE.pack(index)
            leaves.append((key, leaf))
            lh = b3(b"\x00" + leaf).digest()
            leaf_hashes.append(lh)
            link = b3(b"\x02" + link + lh).digest()
            for aid in ev.touched:
                history.append((aid + key, b""))
            if ev.ref is not None:
                ev.ref.leaf_index = index
                ev.ref.timestamp_ns = ts
            if ev.account is not None:
                ev.account.ts = ts
            log_indexes[n] = index
            index += 1
            ts += 1
        new_range = self.range.copy()
        pack_node = _NODE_KEY.pack
        node_items = [(pack_node(level, i), h) for level, i, h in new_range.append_many(leaf_hashes, min_level=1)]
        root = new_range.root()
        changed = self._changed_accounts(blk)
        state_hash = _state_hash(head.state_hash, changed)
        header = BlockHeader(
            height=blk.height, timestamp_ns=blk.ts0, first_index=first_index, leaf_count=len(leaves),
            tree_size=index, prev_block_hash=head.block_hash, merkle_root=root, chain_head=link,
            state_hash=state_hash, ruleset_hash=head.ruleset_hash,
        )
        header_raw = header.encode()
        bhash = block_hash(header_raw)
        last_ts = ts - 1 if leaves else blk.ts0
        new_head = Head(blk.height, index, last_ts, bhash, link, state_hash, head.ruleset_hash)
        # -- the one write
        txn.put_many("leaves", leaves, append=True)
        if node_items:
            txn.put_many("nodes", node_items)
        if history:
            history.sort()
            txn.put_many("history", history)
        txn.put_many("accounts", changed)
        txn.put_many("transfers", sorted((tid[::-1], ref.encode()) for tid, ref in blk.transfers.items()))
        for key in blk.expiry_dels:
            txn.delete("expiry", key)
        if blk.expiry_puts:
            txn.put_many("expiry", sorted((k, b"") for k in blk.expiry_puts))
        for ledger, scale in blk.scales.items():
            txn.put("meta", META_SCALE_PREFIX + ledger.to_bytes(4, "big"), bytes((scale,)))
        txn.put("blocks", _U64BE.pack(blk.height), header_raw)
        txn.put("meta", META_HEAD, new_head.encode())
        txn.put("meta", META_RANGE, new_range.to_bytes())
        if applied_index:
            txn.put("meta", META_APPLIED, _U64BE.pack(applied_index))
        outcomes = [
            BatchOutcome([events[i].result for i in range(a, b)], log_indexes[a:b], blocks[a:b])
            for a, b in spans
        ]
        return BlockOutcome(header, bhash, outcomes), new_head, new_range

    @staticmethod
    def _changed_accounts(blk: _Block) -> list[tuple[bytes, bytes]]:
        """(id, encoded state) of accounts this block created or changed, sorted by id."""
        saved = blk.saved
        changed = []
        for aid in sorted(blk.accounts):
            a = blk.accounts[aid]
            if saved.get(aid) != (a.dp, a.dpo, a.cp, a.cpo):  # new accounts have no saved entry
                changed.append((aid, a.encode()))
        return changed


def _state_hash(previous: bytes, changed: list[tuple[bytes, bytes]]) -> bytes:
    """Chain the previous state hash with every account state this block changed (by id)."""
    h = blake3.blake3(_STATE_DOMAIN + previous)
    for aid, state in changed:
        h.update(aid)
        h.update(state)
    return h.digest()


NO_AUX_B: Final = b""


def _signature_auxes(batch: Batch) -> list[bytes]:
    if not batch.signatures:
        return []
    sigs = batch.signatures
    key_id = batch.signer_key_id
    return [psp_signature_aux(key_id, sigs[i : i + 64]) for i in range(0, len(sigs), 64)]


def _balances(a: AccountState) -> tuple[int, int, int, int]:
    return a.dp, a.dpo, a.cp, a.cpo


def _balance_restorer(a: AccountState) -> Callable[[], None]:
    saved = (a.dp, a.dpo, a.cp, a.cpo)

    def restore() -> None:
        a.dp, a.dpo, a.cp, a.cpo = saved

    return restore


def _ref_restorer(blk: _Block, tid: bytes, ref: TransferRef) -> Callable[[], None]:
    status = ref.status
    previous = blk.transfers.get(tid)

    def restore() -> None:
        ref.status = status
        if previous is None:
            blk.transfers.pop(tid, None)
        else:
            blk.transfers[tid] = previous

    return restore


def _forget_account(blk: _Block, aid: bytes, ledger: int, scale_was_new: bool) -> None:
    blk.accounts.pop(aid, None)
    blk.new_accounts.discard(aid)
    if scale_was_new:
        blk.scales.pop(ledger, None)


def _account_exists(existing: AccountState, raw: bytes) -> Result:
    _id, ud, ledger, code, flags, scale, _res = ACCOUNT_STRUCT.unpack(raw)
    _id2, ud2, *_ = ACCOUNT_STRUCT.unpack(existing.record)
    if flags != existing.flags:
        return R.EXISTS_WITH_DIFFERENT_FLAGS
    if ud != ud2:
        return R.EXISTS_WITH_DIFFERENT_USER_DATA
    if ledger != existing.ledger:
        return R.EXISTS_WITH_DIFFERENT_LEDGER
    if code != existing.code:
        return R.EXISTS_WITH_DIFFERENT_CODE
    if scale != existing.scale:
        return R.EXISTS_WITH_DIFFERENT_ASSET_SCALE
    return R.EXISTS


# (index into the unpacked transfer tuple, result when it differs), in precedence order
_TRANSFER_FIELD_CHECKS: Final = (
    (13, R.EXISTS_WITH_DIFFERENT_TRANSFER_FLAGS),
    (1, R.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID),
    (2, R.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID),
    (3, R.EXISTS_WITH_DIFFERENT_AMOUNT),
    (4, R.EXISTS_WITH_DIFFERENT_AMOUNT),
    (5, R.EXISTS_WITH_DIFFERENT_PENDING_ID),
    (6, R.EXISTS_WITH_DIFFERENT_TRANSFER_USER_DATA),
    (11, R.EXISTS_WITH_DIFFERENT_TIMEOUT),
    (12, R.EXISTS_WITH_DIFFERENT_TRANSFER_CODE),
    (9, R.EXISTS_WITH_DIFFERENT_TRANSFER_LEDGER),
    (7, R.EXISTS_WITH_DIFFERENT_EXTERNAL_REF),
    (8, R.EXISTS_WITH_DIFFERENT_PII_COMMITMENT),
    (10, R.EXISTS_WITH_DIFFERENT_PSP),
)


def _transfer_exists_code(original: bytes, raw: bytes) -> Result:
    a = TRANSFER_STRUCT.unpack(original)
    b = TRANSFER_STRUCT.unpack(raw)
    for pos, code in _TRANSFER_FIELD_CHECKS:
        if a[pos] != b[pos]:
            return code
    return R.TRANSFER_EXISTS


def _history(dr: bytes, dra: AccountState, cr: bytes, cra: AccountState) -> tuple[bytes, ...]:
    """Accounts whose history index gets this entry: only those created with the HISTORY flag."""
    if not (dra.flags | cra.flags) & _HIST:
        return ()
    return tuple(aid for aid, a in ((dr, dra), (cr, cra)) if a.flags & _HIST)
