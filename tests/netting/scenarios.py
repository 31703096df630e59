"""One scenario per OBLIGATION / SETTLEMENT result code (docs/results.md), for tests/ledger/test_results.py."""

from __future__ import annotations

from collections.abc import Callable

from ledger.apply.obligations import obligation_row
from ledger.codec import Batch
from ledger.netting import (
    Obligation,
    accept_record,
    build_settlement,
    clearing_account_id,
    decode_obligation,
    initiate_record,
    resolve_record,
    settlement_account_id,
)
from ledger.types import Account, EventKind, Result
from tests.ledger.harness import Ledger

A, B = "eu-west", "us-east"
NS = 1_000_000_000
PAYER, PAYEE = (1).to_bytes(16, "little"), (2).to_bytes(16, "little")


def _id(b: bytes) -> int:
    return int.from_bytes(b, "little")


def _region(*extra: Account, clearing: bool = True, settlement: bool = True) -> Ledger:
    lg = Ledger()
    accounts = [Account(1, 978, 1), Account(2, 978, 1), Account(3, 840, 1), *extra]
    if clearing:
        accounts += [Account(_id(clearing_account_id("due-to", B, 978)), 978, 8),
                     Account(_id(clearing_account_id("due-from", A, 978)), 978, 8)]
    if settlement:
        accounts.append(Account(_id(settlement_account_id(978)), 978, 9))
    lg.accounts(*accounts)
    return lg


def _ob(amount: int = 5, payee: bytes = PAYEE, deadline_ns: int = 0, oid: int = 7) -> Obligation:
    return Obligation(oid.to_bytes(16, "little"), amount, 978, A, B, payee, deadline_ns)


def _one(lg: Ledger, kind: EventKind, raw: bytes, advance_s: float = 1.0) -> Result:
    return Result(lg.block(Batch(kind, raw), advance_s=advance_s).batches[0].results[0])


def _initiate(lg: Ledger, ob: Obligation, payer: bytes = PAYER, window_s: int = 30) -> Result:
    return _one(lg, EventKind.OBLIGATION, initiate_record(ob, payer, 1, window_s))


def _accepted(lg: Ledger, amount: int = 5, oid: int = 7) -> bytes:
    """An obligation accepted (open) in ``lg`` acting as the creditor region; its bytes."""
    ob = _ob(amount, deadline_ns=lg.now_ns + 100 * NS, oid=oid).encode()
    assert _one(lg, EventKind.OBLIGATION, accept_record(ob)) == Result.OK
    return ob


def _malformed() -> Result:
    return _initiate(_region(), _ob(), window_s=0)


def _exists() -> Result:
    lg = _region()
    assert _initiate(lg, _ob()) == Result.OK
    return _initiate(lg, _ob())


def _not_pending() -> Result:
    lg = _region()
    return _one(lg, EventKind.OBLIGATION, resolve_record(_ob(deadline_ns=5).encode(), True, 3))


def _deadline_passed() -> Result:
    lg = _region()
    return _one(lg, EventKind.OBLIGATION, accept_record(_ob(deadline_ns=lg.now_ns).encode()))


def _account_not_found() -> Result:
    return _initiate(_region(), _ob(), payer=(99).to_bytes(16, "little"))


def _clearing_not_found() -> Result:
    return _initiate(_region(clearing=False), _ob())


def _ledger_mismatch() -> Result:
    return _initiate(_region(), _ob(), payer=(3).to_bytes(16, "little"))


def _settle(lg: Ledger, obs: list[bytes], raw: bytes | None = None) -> Result:
    batch = raw if raw is not None else build_settlement(1, [decode_obligation(o) for o in obs]).encode()
    return _one(lg, EventKind.SETTLEMENT, batch)


def _settlement_malformed() -> Result:
    lg = _region()
    return _settle(lg, [], build_settlement(1, [_ob(deadline_ns=1)]).encode()[:-3])


def _settlement_exists() -> Result:
    lg = _region()
    ob = _accepted(lg)
    assert _settle(lg, [ob]) == Result.OK
    return _settle(lg, [ob])


def _settlement_not_netting() -> Result:
    lg = _region()
    ob = _accepted(lg)
    raw = bytearray(build_settlement(1, [_ob(deadline_ns=1)]).encode())
    raw[len(raw) - 37 + 21] += 1  # the last position no longer balances the first
    return _settle(lg, [ob], bytes(raw))


def _settlement_not_open() -> Result:
    lg = _region()
    assert _initiate(lg, _ob()) == Result.OK  # pending in the debtor region: not open yet
    with lg.store.read() as txn:
        row = obligation_row(txn, _ob().id)
    assert row is not None
    return _settle(lg, [row[3]])


def _settlement_not_involved() -> Result:
    return _settle(_region(), [_ob(deadline_ns=1).encode()])


def _settlement_account_not_found() -> Result:
    lg = _region(settlement=False)
    return _settle(lg, [_accepted(lg)])


NETTING_SCENARIOS: dict[Result, Callable[[], Result]] = {
    Result.OBLIGATION_MALFORMED: _malformed,
    Result.OBLIGATION_EXISTS: _exists,
    Result.OBLIGATION_NOT_PENDING: _not_pending,
    Result.OBLIGATION_DEADLINE_PASSED: _deadline_passed,
    Result.OBLIGATION_ACCOUNT_NOT_FOUND: _account_not_found,
    Result.OBLIGATION_CLEARING_ACCOUNT_NOT_FOUND: _clearing_not_found,
    Result.OBLIGATION_LEDGER_MISMATCH: _ledger_mismatch,
    Result.SETTLEMENT_MALFORMED: _settlement_malformed,
    Result.SETTLEMENT_EXISTS: _settlement_exists,
    Result.SETTLEMENT_NOT_NETTING: _settlement_not_netting,
    Result.SETTLEMENT_OBLIGATION_NOT_OPEN: _settlement_not_open,
    Result.SETTLEMENT_NOT_INVOLVED: _settlement_not_involved,
    Result.SETTLEMENT_ACCOUNT_NOT_FOUND: _settlement_account_not_found,
}
