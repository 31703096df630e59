"""The on-disk schema in one place: table names, key codecs, and the head, ref and account-state
values. Shared by the state machine (``ledger/apply/``), the reader and the Raft storage, so a
table name or a key layout is spelled once. Byte layouts are described in docs/formats.md.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ledger.codec import ACCOUNT_SIZE, ACCOUNT_STATE_STRUCT, ACCOUNT_STRUCT, ZERO32, decode_account_state
from ledger.hashing import GENESIS_LINK
from ledger.types import U64_MAX


class Table:
    """Names of the store's tables (the store takes them as ``str``)."""

    META: Final = "meta"  # singleton values: head, compact range, applied index, scales, signer guard …
    ACCOUNTS: Final = "accounts"  # account id (16) -> account state (136)
    TRANSFERS: Final = "transfers"  # id_key(transfer id) -> transfer ref (leaf index, block, status …)
    ACCOUNT_REFS: Final = "account_refs"  # account id (16) -> creation ref: exact retries
    LEAVES: Final = "leaves"  # index_key(leaf index) -> canonical leaf bytes
    NODES: Final = "nodes"  # node_key(level, index) = end u64 BE ‖ level u8 -> Merkle node hash, level >= 1
    HISTORY: Final = "history"  # account id (16) || index_key(leaf) -> b"", accounts with the HISTORY flag
    BLOCKS: Final = "blocks"  # index_key(height) -> canonical block header
    EXPIRY: Final = "expiry"  # expiry_key(expires_at_ns, transfer id) -> b"" (pending timeouts)
    RAFT: Final = "raft"  # consensus hard state, conf state, snapshot metadata (node/raft_storage.py)
    RAFTLOG: Final = "raftlog"  # consensus log: index_key(index) -> encoded entry (node/raft_storage.py)
    # rules and reconciliation (ledger/apply/effects.py, ledger/apply/callbacks.py, docs/rules.md)
    RULESETS: Final = "rulesets"  # rule set hash (32) -> deploy leaf index ‖ effective height ‖ canonical bytes
    RISK: Final = "risk"  # b"o"/b"i" + account id or b"p" + psp id (u32 BE) -> risk window state (ledger/risk.py)
    RISK_PAIRS: Final = "risk_pairs"  # debit id (16) || credit id (16) -> b"": counterparty pairs seen
    RISK_LOG: Final = "risk_log"  # index_key(height) -> the block's risk states and paid pairs (ledger/risk_log.py)
    PAIR_RUNS: Final = "pair_runs"  # run id (u64 BE) || a chunk's last pair (32) -> its pairs (ledger/pair_runs.py)
    PAIR_RUN_DIR: Final = "pair_run_dir"  # run id (u64 BE) -> the run's pair count (u64 LE)
    EXTREFS: Final = "extrefs"  # psp id (u32 BE) || external ref (32) -> transfer id (16)
    CALLBACKS: Final = "callbacks"  # id_key(callback id) -> ref (leaf index, block, …) for idempotency
    RECONCILED: Final = "reconciled"  # id_key(transfer id) -> index_key(callback leaf index)
    EXCEPTIONS: Final = "exceptions"  # index_key(leaf index) -> exception record for review
    ROUNDING: Final = "rounding"  # rounding account id (16) || day (u64 BE) -> debits ‖ credits ‖ count
    # personal data erasure (ledger/apply/erasure.py, docs/privacy.md)
    PII_ERASED: Final = "pii_erased"  # commitment (32) -> block height (u64 BE) ‖ reason (u16 BE)
    PII_ERASURES: Final = "pii_erasures"  # index_key(block height) ‖ commitment (32) -> reason (u16 LE)
    # cross-region obligations and settlement (ledger/apply/obligations.py, docs/federation.md)
    OBLIGATIONS: Final = "obligations"  # obligation id (16) -> status, side, leaf index, obligation (96), payer
    SETTLEMENTS: Final = "settlements"  # settlement batch id (16) -> leaf index (u64 BE)
    OBLIGATION_STATUS: Final = "obligation_status"  # status u8 ‖ side u8 ‖ obligation id (16) -> b"": by status


TABLES: Final = (
    Table.META, Table.ACCOUNTS, Table.TRANSFERS, Table.ACCOUNT_REFS, Table.LEAVES, Table.NODES, Table.HISTORY,
    Table.BLOCKS, Table.EXPIRY, Table.RAFT, Table.RAFTLOG, Table.RULESETS, Table.RISK, Table.RISK_PAIRS,
    Table.RISK_LOG, Table.PAIR_RUNS, Table.PAIR_RUN_DIR, Table.EXTREFS, Table.CALLBACKS, Table.RECONCILED,
    Table.EXCEPTIONS, Table.ROUNDING,
    Table.PII_ERASED, Table.PII_ERASURES, Table.OBLIGATIONS, Table.SETTLEMENTS, Table.OBLIGATION_STATUS,
)

# -- keys in the meta table ----------------------------------------------------------------------
META_HEAD: Final = b"head"
META_RANGE: Final = b"range"
META_APPLIED: Final = b"applied"
META_SCALE_PREFIX: Final = b"scale:"  # + ledger (u32 BE) -> asset scale (1 byte)
META_AGGREGATE: Final = b"aggregate"  # -> to_index u64 LE ‖ leaf index u64 LE of the last ok AGGREGATE
META_NODE_KEY_PREFIX: Final = b"nodekey:"  # + node (u32 BE) -> the node's last KEY_ROTATION (ledger/apply/rotation.py)

# -- key codecs ------------------------------------------------------------------------------------
U64BE: Final = struct.Struct(">Q")
index_key: Final = U64BE.pack  # leaf index, block height, Raft index, applied index: u64 big-endian
NODE_KEY: Final = struct.Struct(">QB")
LEGACY_NODE_KEY: Final = struct.Struct(">BQ")


def node_key(level: int, index: int) -> bytes:
    """Key of the Merkle node (``level``, ``index``): the leaf position where its subtree ends
    (``(index + 1) << level``, u64 big-endian), then the level. A block completes nodes only at ends
    beyond every stored one, in ascending (end, level) order, so a block's nodes append at the right
    edge of the B-tree (``put_many(append=True)``) and fill whole pages. The first byte is 0 for any
    tree below 2^56 leaves, which keeps these keys apart from the legacy layout's."""
    return NODE_KEY.pack((index + 1) << level, level)


def legacy_node_key(level: int, index: int) -> bytes:
    """The layout before the end-major keys (level u8 ‖ index u64 BE; first byte = level >= 1): still read
    (``node_at``) and rewritten on a writer's first open (``ledger.apply.driver.migrate_node_keys``)."""
    return LEGACY_NODE_KEY.pack(level, index)


def node_from_legacy_key(key: bytes) -> bytes:
    level, index = LEGACY_NODE_KEY.unpack(key)
    return node_key(level, index)


LEGACY_NODES_FROM: Final = b"\x01"  # every legacy node key sorts at or above this, every current one below


def node_at(get: Callable[[str, bytes], bytes | None], level: int, index: int) -> bytes | None:
    """The stored hash of node (``level``, ``index``) through a txn's ``get``; a store written before the
    end-major layout (not yet migrated: an offline copy, an old backup) is read under its legacy key."""
    h = get(Table.NODES, node_key(level, index))
    return h if h is not None else get(Table.NODES, legacy_node_key(level, index))


def decode_index(key: bytes) -> int:
    return int(U64BE.unpack(key)[0])


def id_key(entity_id: bytes) -> bytes:
    """Transfer and callback ids as keys: the little-endian u128 reversed to big-endian, so
    time-ordered ids insert at the right edge of the B-tree."""
    return entity_id[::-1]


def expiry_key(expires_at_ns: int, transfer_id: bytes) -> bytes:
    return U64BE.pack(expires_at_ns) + transfer_id


def expiry_transfer_id(key: bytes) -> bytes:
    return key[U64BE.size:]


def scale_key(ledger: int) -> bytes:
    return META_SCALE_PREFIX + ledger.to_bytes(4, "big")


def scale_ledger(key: bytes) -> int:
    return int.from_bytes(key[len(META_SCALE_PREFIX):], "big")


ID_SIZE: Final = 16


def history_key(account_id: bytes, leaf_key: bytes) -> bytes:
    return account_id + leaf_key


def history_leaf_key(key: bytes) -> bytes:
    """The index_key of the leaf a history key points at."""
    return key[ID_SIZE:]


# -- values ------------------------------------------------------------------------------------------

# transfers / account_refs / callbacks value: leaf_index, block, timestamp_ns, status, expires_at_ns
TRANSFER_REF: Final = struct.Struct("<QQQBQ")
# meta "head": height, tree_size, last_timestamp_ns, block_hash, chain_head, state_hash, ruleset_hash
HEAD: Final = struct.Struct("<QQQ32s32s32s32s")


@dataclass(slots=True)
class TransferRef:
    """Where a transfer (or an account's creation, or a callback) was logged, and its status."""

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


class AccountState:
    """Mutable hot state of one account (the cache's value). Balances are u128 Python ints."""

    __slots__ = ("code", "credits_pending", "credits_posted", "debits_pending", "debits_posted", "flags",
                 "ledger", "record", "scale", "ts")

    def __init__(self, record: bytes, debits_pending: int, debits_posted: int, credits_pending: int,
                 credits_posted: int, ts: int) -> None:
        _id, _ud, ledger, code, flags, scale, _res = ACCOUNT_STRUCT.unpack(record)
        self.record = record
        self.ledger: int = ledger
        self.code: int = code
        self.flags: int = flags
        self.scale: int = scale
        self.debits_pending = debits_pending
        self.debits_posted = debits_posted
        self.credits_pending = credits_pending
        self.credits_posted = credits_posted
        self.ts = ts

    def balances(self) -> tuple[int, int, int, int]:
        return self.debits_pending, self.debits_posted, self.credits_pending, self.credits_posted

    def set_balances(self, balances: tuple[int, int, int, int]) -> None:
        self.debits_pending, self.debits_posted, self.credits_pending, self.credits_posted = balances

    def encode(self) -> bytes:
        m = U64_MAX
        dp, dpo, cp, cpo = self.balances()
        return ACCOUNT_STATE_STRUCT.pack(
            self.record, dp & m, dp >> 64, dpo & m, dpo >> 64, cp & m, cp >> 64, cpo & m, cpo >> 64, self.ts,
        )

    @staticmethod
    def decode(raw: bytes) -> AccountState:
        b = decode_account_state(raw)
        return AccountState(
            raw[:ACCOUNT_SIZE], b.debits_pending, b.debits_posted, b.credits_pending,
            b.credits_posted, b.timestamp_ns,
        )
