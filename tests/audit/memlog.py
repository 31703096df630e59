"""In-memory logs for the pure verifier: built by the real state machine over a MemoryStore, so leaves,
headers, state hashes and balances are exactly what a node would produce."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ledger.codec import (
    TRANSFER_STRUCT,
    Batch,
    Proposal,
    encode_account,
)
from ledger.note import Checkpoint, Signer, sign_note
from ledger.state import LedgerState
from ledger.store import MemoryStore
from ledger.types import Account, AccountFlags, EventKind, TransferFlags

NS = 1_000_000_000
ORIGIN = "sovledger/test"
_U64BE = struct.Struct(">Q")
Z16, Z32 = bytes(16), bytes(32)


def u(i: int) -> bytes:
    return i.to_bytes(16, "little")


def xfer(tid: int, dr: int, cr: int, amount: int, flags: int = 0, pending: int = 0, timeout: int = 0,
         psp: int = 1) -> bytes:
    return TRANSFER_STRUCT.pack(u(tid), u(dr), u(cr), amount & (2**64 - 1), amount >> 64, u(pending), Z16, Z32,
                                Z32, 840, psp, timeout, 1, flags)


@dataclass
class MemLog:
    signer: Signer = field(default_factory=lambda: Signer.generate("test/node-1"))
    now_ns: int = 1_700_000_000 * NS

    def __post_init__(self) -> None:
        self.store = MemoryStore()
        self.state = LedgerState(self.store)

    def block(self, *batches: Batch, advance_s: float = 1.0) -> None:
        self.now_ns += int(advance_s * NS)
        self.state.apply_block(Proposal(self.now_ns, tuple(batches)))

    def accounts(self, n: int, flags: int = 0) -> None:
        recs = b"".join(encode_account(Account(id=i, ledger=840, code=1, flags=flags, asset_scale=2))
                        for i in range(1, n + 1))
        self.block(Batch(EventKind.CREATE_ACCOUNT, recs))

    def transfers(self, recs: list[bytes], psp: Signer | None = None, advance_s: float = 1.0) -> None:
        raw = b"".join(recs)
        if psp is None:
            self.block(Batch(EventKind.CREATE_TRANSFER, raw), advance_s=advance_s)
        else:
            sigs = b"".join(psp.sign(r) for r in recs)
            self.block(Batch(EventKind.CREATE_TRANSFER, raw, sigs, psp.key_id), advance_s=advance_s)

    # -- what the node would serve ------------------------------------------------------------------

    def leaves(self) -> list[bytes]:
        with self.store.read() as txn:
            return [v for _, v in txn.range("leaves", b"", b"\xff" * 8)]

    def headers(self) -> list[bytes]:
        with self.store.read() as txn:
            return [v for _, v in txn.range("blocks", b"", b"\xff" * 8)]

    def note(self) -> str:
        h = self.state.head
        body = Checkpoint(ORIGIN, h.tree_size, self.state.range.root(), (
            f"block {h.height} {h.block_hash.hex()}", f"chain {h.chain_head.hex()}",
            f"time {h.last_timestamp_ns}")).to_body()
        return sign_note(body, self.signer)

    def account_states(self) -> dict[bytes, bytes | None]:
        with self.store.read() as txn:
            return dict(txn.range("accounts", b"", b"\xff" * 16))


def mixed_log(psp: Signer | None = None) -> MemLog:
    """Accounts, single-phase, pending/post/void/partial post, linked chains with failures, expiry, failures."""
    log = MemLog()
    log.accounts(6)
    log.block(Batch(EventKind.CREATE_ACCOUNT, encode_account(Account(
        id=7, ledger=840, code=1, flags=int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS), asset_scale=2))))
    P, POST, VOID, LINKED = (int(TransferFlags.PENDING), int(TransferFlags.POST_PENDING_TRANSFER),
                             int(TransferFlags.VOID_PENDING_TRANSFER), int(TransferFlags.LINKED))
    log.transfers([xfer(100 + i, 1 + i % 5, 2 + i % 5, 10 + i) for i in range(20)], psp=psp)
    log.transfers([xfer(200, 1, 2, 500, P), xfer(201, 2, 3, 700, P), xfer(202, 3, 4, 900, P, timeout=1),
                   xfer(203, 7, 1, 5)], psp=psp)  # 203 fails: exceeds_credits
    log.transfers([xfer(300, 0, 0, 0, POST, pending=200), xfer(301, 0, 0, 300, POST, pending=201),
                   xfer(302, 1, 2, 3, LINKED), xfer(303, 1, 1, 3)], psp=psp)  # chain fails
    log.transfers([xfer(400, 0, 0, 0, VOID, pending=200), xfer(401, 4, 5, 9)], advance_s=5)  # expiry of 202 first
    log.transfers([xfer(500 + i, 5, 6, 1 + i) for i in range(37)], psp=psp)
    return log
