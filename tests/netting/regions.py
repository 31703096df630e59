"""An in-process federation for ledger-level tests: one LMDB ledger per region and a relay between them.

The relay does what the nodes' federation plumbing does (docs/federation.md), minus the network:
it carries each pending obligation from its debtor region to its creditor region (ACCEPT), and each
decision back (RESOLVE). A cut link simply carries nothing.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from ledger.apply.obligations import DEBTOR, obligation_row, obligations_with
from ledger.codec import Batch
from ledger.lmdb_store import LmdbStore
from ledger.netting import (
    Obligation,
    ObligationStatus,
    accept_record,
    clearing_account_id,
    resolve_record,
    settlement_account_id,
)
from ledger.types import Account, EventKind, Result
from tests.ledger.harness import Ledger

LEDGERS = (978, 840)
CUSTOMERS = range(1, 6)  # customer account ids 1..5 in every region, funded from account 99


def acct(aid: bytes) -> int:
    return int.from_bytes(aid, "little")


@dataclass
class Region:
    name: str
    lg: Ledger

    def block(self, kind: EventKind, *records: bytes, advance_s: float = 1.0) -> list[Result]:
        out = self.lg.block(Batch(kind, b"".join(records)), advance_s=advance_s)
        return [Result(r) for r in out.batches[0].results]

    def leaf_of(self, oid: bytes) -> tuple[int, int]:
        with self.lg.store.read() as txn:
            row = obligation_row(txn, oid)
        assert row is not None
        return row[0], row[2]


def customer(i: int, ledger: int) -> int:
    return ledger * 1000 + i


@dataclass
class Federation:
    regions: dict[str, Region]
    cut: set[str] = field(default_factory=set)  # regions cut off from all others

    @classmethod
    def create(cls, tmp: str, names: list[str], clearing: bool = True) -> Federation:
        regions = {}
        for name in names:
            r = Region(name, Ledger(LmdbStore(f"{tmp}/{name}")))
            accounts = [Account(customer(i, lg), lg, 1) for lg in LEDGERS for i in (*CUSTOMERS, 99)]
            accounts += [Account(acct(settlement_account_id(lg)), lg, 9) for lg in LEDGERS]
            if clearing:
                accounts += [Account(acct(clearing_account_id(d, o, lg)), lg, 8) for lg in LEDGERS
                             for o in names if o != name for d in ("due-to", "due-from")]
            assert set(r.lg.accounts(*accounts)) == {Result.OK}
            regions[name] = r
        return cls(regions)

    def linked(self, a: str, b: str) -> bool:
        return a not in self.cut and b not in self.cut

    def relay(self) -> int:
        """One round: carry every pending obligation to its creditor and every decision back. Returns moves."""
        moved = 0
        for r in self.regions.values():
            with r.lg.store.read() as txn:
                pending = [(idx, ob) for side, idx, ob in obligations_with(txn, ObligationStatus.PENDING)
                           if side == DEBTOR]
            for _idx, ob in pending:
                if not self.linked(r.name, ob.creditor):
                    continue
                cred = self.regions[ob.creditor]
                with cred.lg.store.read() as txn:
                    decided = obligation_row(txn, ob.id)
                if decided is None:
                    cred.block(EventKind.OBLIGATION, accept_record(ob.encode()))
                    moved += 1
                status, index = cred.leaf_of(ob.id)
                accepted = status in (ObligationStatus.OPEN, ObligationStatus.SETTLED)
                (res,) = r.block(EventKind.OBLIGATION, resolve_record(ob.encode(), accepted, index))
                assert res == Result.OK
                moved += 1
        return moved

    def open_obligations(self) -> list[Obligation]:
        """What a settlement cycle nets: obligations open in both their regions."""
        out: dict[bytes, Obligation] = {}
        for r in self.regions.values():
            with r.lg.store.read() as txn:
                for side, _idx, ob in obligations_with(txn, ObligationStatus.OPEN):
                    if side == DEBTOR:
                        with self.regions[ob.creditor].lg.store.read() as ctxn:
                            row = obligation_row(ctxn, ob.id)
                        if row is not None and row[0] == ObligationStatus.OPEN:
                            out[ob.id] = ob
        return [out[k] for k in sorted(out)]

    def customer_sums(self) -> dict[int, int]:
        """Σ over every region's customer accounts of (credits posted − debits posted), per ledger."""
        sums: dict[int, int] = defaultdict(int)
        for r in self.regions.values():
            for lg in LEDGERS:
                for i in (*CUSTOMERS, 99):
                    _dp, dpo, _cp, cpo = r.lg.balance(customer(i, lg))
                    sums[lg] += cpo - dpo
        return dict(sums)
