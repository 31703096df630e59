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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import blake3

from ledger.codec import (
    ACCOUNT_SIZE,
    ACCOUNT_STATE_STRUCT,
    ACCOUNT_STRUCT,
    AUX_LEN,
    CALLBACK_SIZE,
    CALLBACK_STRUCT,
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
    EncodingError,
    Proposal,
    decode_account_state,
    decode_deploy,
    decode_leaf,
    origin_aux,
    psp_signature_aux,
    reconcile_aux,
    rule_outcome_aux,
)
from ledger.hashing import GENESIS_LINK, block_hash
from ledger.invariant import invariant
from ledger.merkle import CompactRange
from ledger.note import Verifier
from ledger.reconcile import (
    DAY_NS,
    EXC_ALREADY_RECONCILED,
    EXC_EXPIRED_UNRECONCILED,
    EXC_LATE_AFTER_EXPIRY,
    EXC_NOT_RECONCILABLE,
    EXC_OUTSIDE_TOLERANCE,
    EXC_PSP_MISMATCH,
    EXC_RESIDUAL_FAILED,
    EXC_RULE_FLAG,
    EXC_RULE_HOLD,
    EXC_TRANSFER_NOT_FOUND,
    RECON_EXACT,
    RECON_EXCEPTION,
    RECON_TOLERANCE,
    decode_rounding,
    encode_exception,
    encode_rounding,
)
from ledger.risk import KEY_IN, KEY_OUT, decode_state, encode_state, new_state, psp_key, record
from ledger.rules.compiler import CompiledRuleSet, compile_ruleset
from ledger.rules.model import Action, Rule, RuleSetError, parse_canonical, signing_message
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
_DERIVED_DOMAIN: Final = b"\x06"  # ids of ledger-written transfers: BLAKE3(0x06 ‖ purpose ‖ source id)[:16]
_ZERO12: Final = bytes(12)
_ORIGIN_ADJUSTMENT: Final = 1
_ORIGIN_RESIDUAL: Final = 2


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
    follow: _Event | None = None  # a ledger-written leaf right after this one (adjustment, residual)
    exception: bytes | None = None  # an exception record for review, keyed by this leaf's index
    ruleset: bytes | None = None  # a deployed rule set's canonical bytes (stored keyed by its hash)


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
    account_refs: dict[bytes, TransferRef] = field(default_factory=dict)  # created accounts' leaves
    expiry_puts: list[bytes] = field(default_factory=list)
    expiry_dels: list[bytes] = field(default_factory=list)
    scales: dict[int, int] = field(default_factory=dict)
    bodies: dict[bytes, bytes] = field(default_factory=dict)  # records of transfers created in this block
    undo: list[Callable[[], None]] | None = None  # set while inside a linked chain
    # rules and reconciliation (only used while a rule set is active)
    rules: CompiledRuleSet | None = None  # the rule set this block is evaluated under
    new_rules: CompiledRuleSet | None = None  # deployed in this block: effective from the next block
    view: _BlockRiskView | None = None
    risk: dict[bytes, list[int]] = field(default_factory=dict)  # risk states changed in this block
    pairs: set[bytes] = field(default_factory=set)
    extrefs: dict[bytes, bytes] = field(default_factory=dict)
    callbacks: dict[bytes, TransferRef] = field(default_factory=dict)
    cb_bodies: dict[bytes, bytes] = field(default_factory=dict)
    reconciled: dict[bytes, TransferRef] = field(default_factory=dict)
    rounding: dict[bytes, list[int]] = field(default_factory=dict)  # account ‖ day -> [debits, credits, count]


@dataclass(frozen=True, slots=True)
class _Adjustment:
    """An adjustment transfer planned by an `adjust` rule, checked before any effect."""

    tid: bytes
    account_id: bytes
    account: AccountState
    amount: int
    raw: bytes
    source: bytes
    debit: bytes


class _BlockRiskView:
    """What the activation builder reads for risk features inside a block (block state over committed)."""

    __slots__ = ("blk", "state")

    def __init__(self, state: LedgerState, blk: _Block) -> None:
        self.state = state
        self.blk = blk

    def out(self, aid: bytes) -> list[int] | None:
        return self.state.risk_state(self.blk, KEY_OUT + aid)

    def inc(self, aid: bytes) -> list[int] | None:
        return self.state.risk_state(self.blk, KEY_IN + aid)

    def psp(self, psp_id: int) -> list[int] | None:
        return self.state.risk_state(self.blk, psp_key(psp_id))

    def seen(self, dr: bytes, cr: bytes) -> bool:
        pk = dr + cr
        return pk in self.blk.pairs or self.blk.txn.get("risk_pairs", pk) is not None


class ReadRiskView:
    """The same reads over a committed snapshot (dry runs: nothing is written)."""

    __slots__ = ("txn",)

    def __init__(self, txn: ReadTxn) -> None:
        self.txn = txn

    def _get(self, key: bytes) -> list[int] | None:
        raw = self.txn.get("risk", key)
        return decode_state(raw) if raw is not None else None

    def out(self, aid: bytes) -> list[int] | None:
        return self._get(KEY_OUT + aid)

    def inc(self, aid: bytes) -> list[int] | None:
        return self._get(KEY_IN + aid)

    def psp(self, psp_id: int) -> list[int] | None:
        return self._get(psp_key(psp_id))

    def seen(self, dr: bytes, cr: bytes) -> bool:
        return self.txn.get("risk_pairs", dr + cr) is not None


def _derived_id(purpose: bytes, source: bytes) -> bytes:
    return blake3.blake3(_DERIVED_DOMAIN + purpose + source).digest()[:16]


def _popper(d: dict[bytes, Any], key: bytes) -> Callable[[], None]:
    def pop() -> None:
        d.pop(key, None)

    return pop


def _restore_key(d: dict[bytes, bytes], key: bytes, previous: bytes | None) -> None:
    if previous is None:
        d.pop(key, None)
    else:
        d[key] = previous


class LedgerState:
    """Applies block proposals to a store. Single writer; readers use ``LedgerReader``."""

    def __init__(self, store: Store, operator_keys: Sequence[Verifier] = ()) -> None:
        """``operator_keys``: verifiers allowed to deploy rule sets (node config). Replay needs the same keys."""
        self.store = store
        self._operators = {v.key_id: v for v in operator_keys}
        self._load()

    def reload(self) -> None:
        """Forget every cache and re-read the store (a replica snapshot was installed underneath)."""
        self._load()

    def _load(self) -> None:
        store = self.store
        self._accounts: dict[bytes, AccountState] = {}
        self._scales: dict[int, int] = {}
        self._risk: dict[bytes, list[int]] = {}  # committed risk states (cache)
        self.rules: CompiledRuleSet | None = None
        with store.read() as txn:
            raw = txn.get("meta", META_HEAD)
            self.head = Head.decode(raw) if raw else Head()
            rng = txn.get("meta", META_RANGE)
            self.range = CompactRange.from_bytes(rng) if rng else CompactRange()
            applied = txn.get("meta", META_APPLIED)
            self.applied_index = _U64BE.unpack(applied)[0] if applied else 0
            for k, v in txn.range("meta", META_SCALE_PREFIX, META_SCALE_PREFIX + b"\xff"):
                self._scales[int.from_bytes(k[len(META_SCALE_PREFIX):], "big")] = v[0]
            if self.head.ruleset_hash != ZERO32:
                stored = txn.get("rulesets", self.head.ruleset_hash)
                invariant(stored is not None, "the head's rule set is not stored")
                assert stored is not None
                self.rules = compile_ruleset(parse_canonical(stored[16:]))
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
                if self.rules is not None:
                    blk.rules = self.rules
                    blk.view = _BlockRiskView(self, blk)
                events: list[_Event] = []
                self._expire_pending(blk, events)
                spans: list[tuple[int, int]] = []
                for batch in proposal.batches:
                    start = len(events)
                    kind = batch.kind
                    if kind == EventKind.CREATE_TRANSFER:
                        self._apply_transfers(blk, batch, events)
                    elif kind == EventKind.CREATE_ACCOUNT:
                        self._apply_accounts(blk, batch, events)
                    elif kind == EventKind.SETTLEMENT_CALLBACK:
                        self._apply_callbacks(blk, batch, events)
                    elif kind == EventKind.DEPLOY_RULESET:
                        events.append(self._deploy(blk, batch.records))
                    else:
                        invariant(False, f"batch of kind {kind} cannot be applied")
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
        if blk.risk:
            self._risk.update(blk.risk)
        if blk.new_rules is not None:
            self.rules = blk.new_rules
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
            ev = fail(_account_exists(existing, raw))
            if ev.result == R.EXISTS:  # an exact retry: no new leaf, the original index and block
                ev.existing = self._account_ref(blk, aid)
            return ev
        known_scale = blk.scales.get(ledger, self._scales.get(ledger))
        if known_scale is not None and known_scale != scale:
            return fail(R.ASSET_SCALE_MISMATCH)
        ts = blk.ts0  # replaced by the leaf timestamp at numbering; kept deterministic either way
        acct = AccountState(raw, 0, 0, 0, 0, ts)
        blk.accounts[aid] = acct
        blk.new_accounts.add(aid)
        ref = TransferRef(0, blk.height, 0, 0)  # leaf index and timestamp filled at numbering
        blk.account_refs[aid] = ref
        if known_scale is None:
            blk.scales[ledger] = scale
        if blk.undo is not None:
            blk.undo.append(lambda: _forget_account(blk, aid, ledger, known_scale is None))
        return _Event(EventKind.CREATE_ACCOUNT, R.OK, raw, aux, (aid,) if flags & _HIST else (), ref=ref,
                      account=acct)

    def _account_ref(self, blk: _Block, aid: bytes) -> TransferRef | None:
        ref = blk.account_refs.get(aid)
        if ref is None:
            raw = blk.txn.get("account_refs", aid)
            ref = TransferRef.decode(raw) if raw is not None else None
        return ref

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
        if blk.rules is not None:
            self._apply_unlinked_ruled(blk, recs, records, sigs, events)
            return
        self._apply_unlinked(blk, recs, records, sigs, events)

    def _apply_unlinked_ruled(self, blk: _Block, recs: list[tuple], records: bytes,  # type: ignore[type-arg]
                              sigs: list[bytes], events: list[_Event]) -> None:
        """``_apply_unlinked`` while a rule set is active: the same inline checks, then ONE evaluation
        of the compiled rule set on a flat activation. No rule matched: applied inline. A rule matched
        (or erred): ``_create_transfer`` re-evaluates (same state, same outcome) and applies the action."""
        create = self._create_transfer
        get_account = self._get_account
        after = self._after_success
        accounts = blk.accounts
        transfers = blk.transfers
        bodies = blk.bodies
        stored = blk.txn.getter("transfers")
        height = blk.height
        append = events.append
        kind = EventKind.CREATE_TRANSFER
        ok = R.OK
        single = TransferStatus.SINGLE_PHASE
        rules = blk.rules
        assert rules is not None
        active = rules.active
        build = rules.build
        evaluate = rules.evaluate
        view = blk.view
        ts0 = blk.ts0
        for i, rec in enumerate(recs):
            raw = records[i * TRANSFER_SIZE : (i + 1) * TRANSFER_SIZE]
            aux = sigs[i] if sigs else b""
            tid, dr, cr, amount, ahi, pid, _ud, _ext, _pii, ledger, _psp, timeout, code, flags = rec
            if (flags or ahi or not amount or not code or timeout or dr == cr or pid != ZERO16
                    or tid in (ZERO16, MAX16) or tid in transfers):
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
            if active and evaluate(build(rec, dra, cra, ts0, height, view))[0] >= 0:
                append(create(blk, rec, raw, aux))
                continue
            dra.dpo = dpo
            cra.cpo = cpo
            ref = TransferRef(0, height, 0, single)
            transfers[tid] = ref
            bodies[tid] = raw
            after(blk, rec, amount)
            hist = _history(dr, dra, cr, cra) if (dra.flags | cra.flags) & _HIST else ()
            append(_Event(kind, ok, raw, aux, hist, ref, tid))

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
                    or tid in (ZERO16, MAX16) or tid in transfers):
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
        exception: bytes | None = None
        plan: _Adjustment | None = None
        rules = blk.rules
        if rules is not None and rules.active:
            decided = self._decide(blk, rec, dra, cra)
            if decided is not None:
                rule, errored = decided
                rid = rule.id.encode()
                if errored:
                    aux = aux + rule_outcome_aux(Action.ERROR, rule.code, rid)
                    return fail(R.RULE_ERROR)
                act = rule.action
                aux = aux + rule_outcome_aux(act, rule.code, rid)
                if act == Action.REJECT:
                    return fail(R.RULE_REJECTED)
                if act == Action.HOLD:
                    if not kinds:
                        if dra.dp + amount > U128_MAX:
                            return fail(R.OVERFLOWS_DEBITS_PENDING)
                        if cra.cp + amount > U128_MAX:
                            return fail(R.OVERFLOWS_CREDITS_PENDING)
                        kinds = _PENDING
                    if not expires:
                        expires = blk.ts0 + rule.hold_timeout_s * _NS
                        if expires > U64_MAX:
                            return fail(R.OVERFLOWS_TIMEOUT)
                    exception = encode_exception(EXC_RULE_HOLD, tid, amount, amount, blk.ts0, rid)
                elif act == Action.FLAG:
                    exception = encode_exception(EXC_RULE_FLAG, tid, amount, amount, blk.ts0, rid)
                elif act == Action.ADJUST:
                    ok, plan = self._plan_adjustment(blk, rec, dra, amount, rule)
                    if not ok:
                        return fail(R.RULE_ADJUSTMENT_FAILED)
        # -- effects (nothing above mutated state)
        undo = blk.undo
        if undo is not None:
            undo.append(_balance_restorer(dra))
            undo.append(_balance_restorer(cra))
            undo.append(_popper(blk.transfers, tid))
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
        ev = _Event(EventKind.CREATE_TRANSFER, R.OK, raw, aux, _history(dr, dra, cr, cra), ref, tid)
        if rules is not None:
            self._after_success(blk, rec, amount)
            ev.exception = exception
            if plan is not None:
                ev.follow = self._apply_adjustment(blk, plan, dra, aux)
        return ev

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
        # a transfer held by a rule is pending without the flag: its ref's status says so
        if not p_flags & _PENDING and pref.status == TransferStatus.SINGLE_PHASE:
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
            undo.append(_popper(blk.transfers, tid))
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

    # -- rules ------------------------------------------------------------------------------------

    def _decide(self, blk: _Block, rec: tuple, dra: AccountState,  # type: ignore[type-arg]
                cra: AccountState) -> tuple[Rule, bool] | None:
        """The deciding rule (first match in precedence order) and whether it erred; None: no rule matched."""
        rules = blk.rules
        assert rules is not None
        idx, errored = rules.evaluate(rules.build(rec, dra, cra, blk.ts0, blk.height, blk.view))
        return None if idx < 0 else (rules.rules[idx], errored)

    def _plan_adjustment(self, blk: _Block, rec: tuple, dra: AccountState, amount: int,  # type: ignore[type-arg]
                         rule: Rule) -> tuple[bool, _Adjustment | None]:
        """Check the adjustment transfer before any effect: (possible, plan or None when it is zero)."""
        adj = rule.adjustment(amount)
        if adj == 0:
            return True, None
        tid, dr, cr = rec[0], rec[1], rec[2]
        acct = rule.adjust_account.to_bytes(16, "little")
        if acct == dr:
            return False, None
        adja = self._get_account(blk, acct)
        if adja is None or adja.ledger != dra.ledger:
            return False, None
        extra = amount if acct == cr else 0
        if dra.dp + dra.dpo + amount + adj > U128_MAX or adja.cp + adja.cpo + extra + adj > U128_MAX:
            return False, None
        if dra.flags & _DMNEC and dra.dp + dra.dpo + amount + adj > dra.cpo:
            return False, None
        if adja.flags & _CMNED and adja.cp + adja.cpo + extra + adj > adja.dpo:
            return False, None
        adj_tid = _derived_id(b"adjust", tid)
        if self._get_transfer(blk, adj_tid) is not None:
            return False, None
        raw = TRANSFER_STRUCT.pack(adj_tid, dr, acct, adj & U64_MAX, adj >> 64, ZERO16, tid, ZERO32, ZERO32,
                                   dra.ledger, rec[10], 0, rule.adjust_code, 0)
        return True, _Adjustment(adj_tid, acct, adja, adj, raw, tid, dr)

    def _apply_adjustment(self, blk: _Block, plan: _Adjustment, dra: AccountState, rule_aux: bytes) -> _Event:
        undo = blk.undo
        adja = plan.account
        if undo is not None:
            undo.append(_balance_restorer(adja))
            undo.append(_popper(blk.transfers, plan.tid))
        dra.dpo += plan.amount
        adja.cpo += plan.amount
        ref = TransferRef(0, blk.height, 0, TransferStatus.SINGLE_PHASE)
        blk.transfers[plan.tid] = ref
        blk.bodies[plan.tid] = plan.raw
        aux = origin_aux(_ORIGIN_ADJUSTMENT, plan.source) + rule_aux
        return _Event(EventKind.LEDGER_TRANSFER, R.OK, plan.raw, aux,
                      _history(plan.debit, dra, plan.account_id, adja), ref, plan.tid)

    def _after_success(self, blk: _Block, rec: tuple, amount: int) -> None:  # type: ignore[type-arg]
        """Risk state and the external-ref index follow committed successful transfers only."""
        rules = blk.rules
        if rules is None:
            return
        ts = blk.ts0
        if rules.track_out:
            self._risk_add(blk, KEY_OUT + rec[1], ts, amount)
        if rules.track_in:
            self._risk_add(blk, KEY_IN + rec[2], ts, amount)
        if rules.track_psp:
            self._risk_add(blk, psp_key(rec[10]), ts, amount)
        undo = blk.undo
        if rules.track_pairs:
            pk = rec[1] + rec[2]
            if pk not in blk.pairs and blk.txn.get("risk_pairs", pk) is None:
                blk.pairs.add(pk)
                if undo is not None:
                    undo.append(lambda: blk.pairs.discard(pk))
        if rec[7] != ZERO32:
            key = rec[10].to_bytes(4, "big") + rec[7]
            previous = blk.extrefs.get(key)
            blk.extrefs[key] = rec[0]
            if undo is not None:
                undo.append(lambda: _restore_key(blk.extrefs, key, previous))

    def risk_state(self, blk: _Block, key: bytes) -> list[int] | None:
        st = blk.risk.get(key)
        if st is not None:
            return st
        st = self._risk.get(key)
        if st is None:
            raw = blk.txn.get("risk", key)
            if raw is None:
                return None
            st = decode_state(raw)  # committed state: safe to cache before this block commits
            self._risk[key] = st
        return st

    def _risk_add(self, blk: _Block, key: bytes, ts: int, amount: int) -> None:
        st = blk.risk.get(key)
        undo = blk.undo
        if st is None:
            base = self.risk_state(blk, key)
            st = list(base) if base is not None else new_state()  # copy: the cache keeps committed state
            blk.risk[key] = st
            if undo is not None:
                undo.append(_popper(blk.risk, key))
        elif undo is not None:
            before = list(st)
            undo.append(lambda: st.__setitem__(slice(None), before))
        record(st, ts, amount)

    def _deploy(self, blk: _Block, raw: bytes) -> _Event:
        """A rule set deployment: signed by an operator key, compiled and checked, effective next block."""

        def fail(r: Result) -> _Event:
            return _Event(EventKind.DEPLOY_RULESET, r, raw, b"", ())

        try:
            key_id, signature, canonical = decode_deploy(raw)
        except EncodingError:
            return fail(R.RULESET_INVALID)
        verifier = self._operators.get(key_id)
        if verifier is None or not verifier.verify(signing_message(canonical), signature):
            return fail(R.RULESET_BAD_SIGNATURE)
        try:
            compiled = compile_ruleset(parse_canonical(canonical))
        except RuleSetError as e:
            return fail(e.result)
        current = blk.new_rules or blk.rules
        if (current is not None and current.ruleset.name == compiled.ruleset.name
                and compiled.ruleset.version <= current.ruleset.version):
            return fail(R.RULESET_VERSION_MUST_INCREASE)
        blk.new_rules = compiled
        ev = _Event(EventKind.DEPLOY_RULESET, R.OK, raw, b"", ())
        ev.ruleset = canonical
        return ev

    # -- settlement callbacks (reconciliation) ---------------------------------------------------

    def _apply_callbacks(self, blk: _Block, batch: Batch, events: list[_Event]) -> None:
        records = batch.records
        for i in range(len(records) // CALLBACK_SIZE):
            events.append(self._callback(blk, records[i * CALLBACK_SIZE : (i + 1) * CALLBACK_SIZE]))

    def _callback(self, blk: _Block, raw: bytes) -> _Event:
        cid, tid, ext, lo, hi, psp, reserved = CALLBACK_STRUCT.unpack(raw)
        observed = lo | hi << 64
        kind = EventKind.SETTLEMENT_CALLBACK

        def fail(r: Result) -> _Event:
            return _Event(kind, r, raw, b"", ())

        if reserved != _ZERO12:
            return fail(R.RESERVED_FIELD)
        if cid == ZERO16:
            return fail(R.ID_MUST_NOT_BE_ZERO)
        if cid == MAX16:
            return fail(R.ID_MUST_NOT_BE_INT_MAX)
        existing = blk.callbacks.get(cid)
        if existing is None:
            stored = blk.txn.get("callbacks", cid[::-1])
            existing = TransferRef.decode(stored) if stored is not None else None
        if existing is not None:
            original = blk.cb_bodies.get(cid) if existing.block == blk.height else None
            if original is None:
                leaf = blk.txn.get("leaves", _U64BE.pack(existing.leaf_index))
                invariant(leaf is not None, "leaf of a stored callback is missing")
                assert leaf is not None
                original = decode_leaf(leaf).body
            if original != raw:
                return fail(R.CALLBACK_EXISTS_WITH_DIFFERENT_FIELDS)
            ev = fail(R.CALLBACK_EXISTS)
            ev.existing = existing
            return ev
        if tid == ZERO16:
            if ext == ZERO32:
                return fail(R.CALLBACK_TARGET_MISSING)
            key = psp.to_bytes(4, "big") + ext
            found = blk.extrefs.get(key) or blk.txn.get("extrefs", key)
            tid = found if found is not None else ZERO16
        cbref = TransferRef(0, blk.height, 0, 0)

        def exception(r: Result, exc: int, expected: int = 0) -> _Event:
            """An exception is a callback too: its id is consumed, so a retry stays idempotent."""
            blk.callbacks[cid] = cbref
            blk.cb_bodies[cid] = raw
            ev = _Event(kind, r, raw, reconcile_aux(RECON_EXCEPTION, tid, expected, observed), (), cbref, cid)
            ev.exception = encode_exception(exc, tid, expected, observed, blk.ts0)
            return ev

        ref = self._get_transfer(blk, tid) if tid != ZERO16 else None
        if ref is None:
            return exception(R.RECONCILE_TRANSFER_NOT_FOUND, EXC_TRANSFER_NOT_FOUND)
        body = TRANSFER_STRUCT.unpack(self._leaf_body(blk, tid, ref))
        expected = body[3] | body[4] << 64
        if body[10] != psp:
            return exception(R.RECONCILE_PSP_MISMATCH, EXC_PSP_MISMATCH, expected)
        if tid in blk.reconciled or blk.txn.get("reconciled", tid[::-1]) is not None:
            return exception(R.RECONCILE_ALREADY_RECONCILED, EXC_ALREADY_RECONCILED, expected)
        status = ref.status
        if status == TransferStatus.EXPIRED:
            return exception(R.RECONCILE_LATE_AFTER_EXPIRY, EXC_LATE_AFTER_EXPIRY, expected)
        if body[13] & (_POST | _VOID) or status == TransferStatus.VOIDED:
            return exception(R.RECONCILE_NOT_RECONCILABLE, EXC_NOT_RECONCILABLE, expected)
        dr, cr, ledger = body[1], body[2], body[9]
        recon = RECON_EXACT
        residual: tuple[bytes, AccountState, int] | None = None
        dra = self._get_account(blk, dr)
        cra = self._get_account(blk, cr)
        invariant(dra is not None and cra is not None, "accounts of a stored transfer vanished")
        assert dra is not None and cra is not None
        if observed != expected:
            rules = blk.rules
            tol = rules.tolerance(ledger, psp) if rules is not None else None
            if tol is None or not tol.within(expected, observed):
                return exception(R.RECONCILE_OUTSIDE_TOLERANCE, EXC_OUTSIDE_TOLERANCE, expected)
            recon = RECON_TOLERANCE
            racct = tol.rounding_account.to_bytes(16, "little")
            rac = self._get_account(blk, racct) if racct not in (dr, cr) else None
            if rac is None or rac.ledger != ledger:
                return exception(R.RECONCILE_RESIDUAL_FAILED, EXC_RESIDUAL_FAILED, expected)
            diff = abs(observed - expected)
            posting = expected if status == TransferStatus.PENDING else 0  # credits the payee posts now
            # settled less: move the shortfall from the payee to the rounding account; more: the reverse
            rdr, rcr = (cra, rac) if observed < expected else (rac, cra)
            if (rdr.dp + rdr.dpo + diff > U128_MAX or rcr.cp + rcr.cpo + diff > U128_MAX
                    or (rdr.flags & _DMNEC and rdr.dp + rdr.dpo + diff > rdr.cpo + (posting if rdr is cra else 0))
                    or (rcr.flags & _CMNED and rcr.cp + rcr.cpo + diff > rcr.dpo)):
                return exception(R.RECONCILE_RESIDUAL_FAILED, EXC_RESIDUAL_FAILED, expected)
            residual = (racct, rac, diff)
        if status == TransferStatus.PENDING:  # settlement confirms a pending transfer: post it in full
            if dra.dpo + expected > U128_MAX or cra.cpo + expected > U128_MAX:
                return exception(R.RECONCILE_RESIDUAL_FAILED, EXC_RESIDUAL_FAILED, expected)
            dra.dp -= expected
            cra.cp -= expected
            dra.dpo += expected
            cra.cpo += expected
            ref.status = TransferStatus.POSTED
            blk.transfers[tid] = ref
            if ref.expires_at_ns:
                blk.expiry_dels.append(_U64BE.pack(ref.expires_at_ns) + tid)
        blk.callbacks[cid] = cbref
        blk.cb_bodies[cid] = raw
        blk.reconciled[tid] = cbref
        ev = _Event(kind, R.OK, raw, reconcile_aux(recon, tid, expected, observed),
                    _history(dr, dra, cr, cra), cbref, cid)
        if residual is not None:
            ev.follow = self._post_residual(blk, cid, cr, cra, residual, observed < expected, ledger, psp)
        return ev

    def _post_residual(self, blk: _Block, cid: bytes, cr: bytes, cra: AccountState,
                       residual: tuple[bytes, AccountState, int], shortfall: bool, ledger: int, psp: int) -> _Event:
        racct, rac, diff = residual
        dr_id, dra, cr_id, cra2 = (cr, cra, racct, rac) if shortfall else (racct, rac, cr, cra)
        rtid = _derived_id(b"residual", cid)
        raw = TRANSFER_STRUCT.pack(rtid, dr_id, cr_id, diff & U64_MAX, diff >> 64, ZERO16, cid, ZERO32, ZERO32,
                                   ledger, psp, 0, 1, 0)
        dra.dpo += diff
        cra2.cpo += diff
        ref = TransferRef(0, blk.height, 0, TransferStatus.SINGLE_PHASE)
        blk.transfers[rtid] = ref
        blk.bodies[rtid] = raw
        day = (blk.ts0 // DAY_NS).to_bytes(8, "big")
        sums = blk.rounding.setdefault(racct + day, [0, 0, 0])
        sums[0 if not shortfall else 1] += diff  # the rounding account is debited (excess) or credited (shortfall)
        sums[2] += 1
        return _Event(EventKind.LEDGER_TRANSFER, R.OK, raw, origin_aux(_ORIGIN_RESIDUAL, cid),
                      _history(dr_id, dra, cr_id, cra2), ref, rtid)

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
            ev = _Event(EventKind.EXPIRE_PENDING, R.OK, pid, b"", _history(p[1], dra, p[2], cra))
            if blk.rules is not None and blk.rules.flag_expiry:
                ev.exception = encode_exception(EXC_EXPIRED_UNRECONCILED, pid, amount, 0, blk.ts0)
            events.append(ev)

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
        exceptions: list[tuple[bytes, bytes]] = []
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
            if ev.exception is not None:
                exceptions.append((key, ev.exception))
            f = ev.follow
            if f is not None:  # a ledger-written leaf right after its cause (adjustment, residual)
                fbody = f.body
                fleaf = b"".join((pack_header(FORMAT_VERSION, f.kind, f.result, index, ts, len(fbody)), fbody,
                                  pack_aux(len(f.aux)), f.aux))
                fkey = _U64BE.pack(index)
                leaves.append((fkey, fleaf))
                lh = b3(b"\x00" + fleaf).digest()
                leaf_hashes.append(lh)
                link = b3(b"\x02" + link + lh).digest()
                for aid in f.touched:
                    history.append((aid + fkey, b""))
                if f.ref is not None:
                    f.ref.leaf_index = index
                    f.ref.timestamp_ns = ts
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
            state_hash=state_hash, ruleset_hash=head.ruleset_hash,  # the rule set this block ran under
        )
        header_raw = header.encode()
        bhash = block_hash(header_raw)
        last_ts = ts - 1 if leaves else blk.ts0
        next_ruleset = blk.new_rules.hash if blk.new_rules is not None else head.ruleset_hash
        new_head = Head(blk.height, index, last_ts, bhash, link, state_hash, next_ruleset)
        # -- the one write
        txn.put_many("leaves", leaves, append=True)
        if node_items:
            txn.put_many("nodes", node_items)
        if history:
            history.sort()
            txn.put_many("history", history)
        txn.put_many("accounts", changed)
        txn.put_many("transfers", sorted((tid[::-1], ref.encode()) for tid, ref in blk.transfers.items()))
        if blk.account_refs:
            txn.put_many("account_refs", sorted((aid, ref.encode()) for aid, ref in blk.account_refs.items()))
        for key in blk.expiry_dels:
            txn.delete("expiry", key)
        if blk.expiry_puts:
            txn.put_many("expiry", sorted((k, b"") for k in blk.expiry_puts))
        for ledger, scale in blk.scales.items():
            txn.put("meta", META_SCALE_PREFIX + ledger.to_bytes(4, "big"), bytes((scale,)))
        if blk.rules is not None or blk.new_rules is not None:
            self._seal_rules(blk, events, log_indexes, exceptions)
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
    def _seal_rules(blk: _Block, events: list[_Event], log_indexes: list[int],
                    exceptions: list[tuple[bytes, bytes]]) -> None:
        """Rules and reconciliation tables, in the block's one write transaction."""
        txn = blk.txn
        if blk.new_rules is not None:
            for n, ev in enumerate(events):
                if ev.ruleset is not None:
                    meta = _U64BE.pack(log_indexes[n]) + _U64BE.pack(blk.height + 1)
                    txn.put("rulesets", blake3.blake3(b"\x05" + ev.ruleset).digest(), meta + ev.ruleset)
        if blk.risk:
            txn.put_many("risk", sorted((k, encode_state(v)) for k, v in blk.risk.items()))
        if blk.pairs:
            txn.put_many("risk_pairs", sorted((k, b"") for k in blk.pairs))
        if blk.extrefs:
            txn.put_many("extrefs", sorted(blk.extrefs.items()))
        if blk.callbacks:
            txn.put_many("callbacks", sorted((cid[::-1], ref.encode()) for cid, ref in blk.callbacks.items()))
        if blk.reconciled:
            txn.put_many("reconciled", sorted((tid[::-1], _U64BE.pack(ref.leaf_index))
                                              for tid, ref in blk.reconciled.items()))
        if exceptions:
            txn.put_many("exceptions", exceptions)
        for key, (debits, credits, count) in sorted(blk.rounding.items()):
            old = txn.get("rounding", key)
            d0, c0, n0 = decode_rounding(old) if old is not None else (0, 0, 0)
            txn.put("rounding", key, encode_rounding(d0 + debits, c0 + credits, n0 + count))

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
    blk.account_refs.pop(aid, None)
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


# -- dry runs (read-only: the node's Rules service and `sovledger rules test`) ---------------------


@dataclass(frozen=True, slots=True)
class DryRun:
    action: Action
    rule: Rule | None
    result: int  # what the rules would make of the transfer: 0, rule_rejected or rule_error
    activation: dict[str, object]
    problems: tuple[str, ...] = ()


def dry_run(txn: ReadTxn, rules: CompiledRuleSet, raw: bytes, timestamp_ns: int, height: int) -> DryRun:
    """Evaluate ``rules`` against one transfer record over committed state; nothing is written.

    The ledger's own checks are not repeated except that both accounts must exist."""
    rec = TRANSFER_STRUCT.unpack(raw)
    accts = []
    for aid, name in ((rec[1], "debit"), (rec[2], "credit")):
        stored = txn.get("accounts", aid)
        if stored is None:
            return DryRun(Action.NONE, None, 0, {}, (f"{name} account {int.from_bytes(aid, 'little')} not found",))
        accts.append(AccountState.decode(stored))
    activation = rules.build(rec, accts[0], accts[1], timestamp_ns, height, ReadRiskView(txn))
    if not rules.active:
        return DryRun(Action.NONE, None, 0, activation)
    idx, errored = rules.evaluate(activation)
    if idx < 0:
        return DryRun(Action.NONE, None, 0, activation)
    rule = rules.rules[idx]
    if errored:
        return DryRun(Action.ERROR, rule, R.RULE_ERROR, activation)
    return DryRun(rule.action, rule, R.RULE_REJECTED if rule.action == Action.REJECT else 0, activation)
