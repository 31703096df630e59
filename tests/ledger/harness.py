"""A small driver for the ledger state machine in tests: build records, apply blocks, read state."""

from __future__ import annotations

from dataclasses import dataclass, field

from ledger.codec import Batch, Proposal, encode_account, encode_transfer
from ledger.state import BlockOutcome, LedgerState
from ledger.store import MemoryStore, Store
from ledger.types import Account, EventKind, Result, Transfer

NS = 1_000_000_000


@dataclass
class Ledger:
    store: Store = field(default_factory=MemoryStore)
    now_ns: int = 1_700_000_000 * NS

    def __post_init__(self) -> None:
        self.state = LedgerState(self.store)

    def block(self, *batches: Batch, advance_s: float = 1.0) -> BlockOutcome:
        self.now_ns += int(advance_s * NS)
        return self.state.apply_block(Proposal(self.now_ns, tuple(batches)))

    def accounts(self, *accounts: Account) -> list[Result]:
        out = self.block(Batch(EventKind.CREATE_ACCOUNT, b"".join(encode_account(a) for a in accounts)))
        return [Result(r) for r in out.batches[0].results]

    def transfers(self, *transfers: Transfer, advance_s: float = 1.0) -> list[Result]:
        out = self.block(
            Batch(EventKind.CREATE_TRANSFER, b"".join(encode_transfer(t) for t in transfers)),
            advance_s=advance_s,
        )
        return [Result(r) for r in out.batches[0].results]

    def transfer(self, t: Transfer, advance_s: float = 1.0) -> Result:
        (r,) = self.transfers(t, advance_s=advance_s)
        return r

    def balance(self, account_id: int) -> tuple[int, int, int, int]:
        a = self.state.account(account_id.to_bytes(16, "little"))
        assert a is not None, f"account {account_id} missing"
        return a.balances()

    def reopen(self) -> None:
        self.state = LedgerState(self.store)
