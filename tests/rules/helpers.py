"""Driving the state machine with rule sets, callbacks and an operator key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ledger.codec import (
    Batch,
    Leaf,
    SettlementCallback,
    decode_leaf,
    encode_callback,
    encode_deploy,
)
from ledger.note import Signer
from ledger.rules import parse_ruleset, signing_message
from ledger.state import LedgerState
from ledger.types import Account, EventKind, Result, Transfer
from tests.ledger.harness import Ledger

OPERATOR = Signer.generate("operator-1")
STRANGER = Signer.generate("stranger")


def deploy_record(doc: dict[str, Any], signer: Signer = OPERATOR) -> bytes:
    canonical = parse_ruleset(doc).canonical()
    return encode_deploy(signer.key_id, signer.sign(signing_message(canonical)), canonical)


def ruleset(*rules: dict[str, Any], version: int = 1, name: str = "test", **extra: Any) -> dict[str, Any]:
    return {"name": name, "version": version, "rules": list(rules), **extra}


@dataclass
class RulesLedger(Ledger):
    operators: tuple[Any, ...] = field(default_factory=lambda: (OPERATOR.verifier,))

    def __post_init__(self) -> None:
        self.state = LedgerState(self.store, self.operators)

    def reopen(self) -> None:
        self.state = LedgerState(self.store, self.operators)

    def deploy(self, doc: dict[str, Any], signer: Signer = OPERATOR, raw: bytes | None = None) -> Result:
        out = self.block(Batch(EventKind.DEPLOY_RULESET, raw if raw is not None else deploy_record(doc, signer)))
        return Result(out.batches[0].results[0])

    def callbacks(self, *cbs: SettlementCallback, advance_s: float = 1.0) -> list[Result]:
        out = self.block(Batch(EventKind.SETTLEMENT_CALLBACK, b"".join(encode_callback(c) for c in cbs)),
                         advance_s=advance_s)
        return [Result(r) for r in out.batches[0].results]

    def leaves(self) -> list[Leaf]:
        with self.store.read() as txn:
            return [decode_leaf(v) for _, v in txn.range("leaves")]

    def last_leaves(self, n: int) -> list[Leaf]:
        return self.leaves()[-n:]

    def table(self, name: str) -> list[tuple[bytes, bytes]]:
        with self.store.read() as txn:
            return list(txn.range(name))


def acct(i: int, ledger: int = 1, flags: int = 0, user_data: int = 0) -> Account:
    return Account(id=i, ledger=ledger, code=1, flags=flags, user_data=user_data)


def xfer(i: int, dr: int = 1, cr: int = 2, amount: int = 10, **kw: Any) -> Transfer:
    kw.setdefault("ledger", 1)
    kw.setdefault("code", 1)
    return Transfer(id=i, debit_account_id=dr, credit_account_id=cr, amount=amount, **kw)
