"""One test per result code, and the precedence between them (docs/results.md)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ledger.codec import Batch, encode_account
from ledger.types import U128_MAX, Account, EventKind, Result, Transfer
from ledger.types import AccountFlags as AF
from ledger.types import TransferFlags as TF
from tests.ledger.harness import Ledger

R = Result
L = 840  # ledger (currency) code


def acct(i: int, flags: int = 0, ledger: int = L, code: int = 10, scale: int = 2) -> Account:
    return Account(id=i, ledger=ledger, code=code, flags=flags, asset_scale=scale)


def xfer(i: int, dr: int = 1, cr: int = 2, amount: int = 10, **kw: int | bytes) -> Transfer:
    base: dict[str, int | bytes] = {"ledger": L, "code": 1}
    base.update(kw)
    return Transfer(id=i, debit_account_id=dr, credit_account_id=cr, amount=amount, **base)  # type: ignore[arg-type]


def ledger_with_accounts(*extra: Account) -> Ledger:
    lg = Ledger()
    assert lg.accounts(acct(1), acct(2), acct(3, ledger=978), *extra) == [R.OK] * (3 + len(extra))
    return lg


def with_pending(amount: int = 100, timeout_s: int = 0) -> Ledger:
    lg = ledger_with_accounts()
    assert lg.transfer(xfer(50, amount=amount, flags=TF.PENDING, timeout_s=timeout_s)) == R.OK
    return lg


# -- account results --------------------------------------------------------------------------

def _account(a: Account, lg: Ledger | None = None) -> Result:
    lg = lg or ledger_with_accounts()
    (r,) = lg.accounts(a)
    return r


def _reserved_field() -> Result:
    lg = ledger_with_accounts()
    raw = bytearray(encode_account(acct(9)))
    raw[50] = 1  # inside the reserved bytes
    out = lg.block(Batch(EventKind.CREATE_ACCOUNT, bytes(raw)))
    return Result(out.batches[0].results[0])


def _linked_chain(kind: str) -> Result:
    lg = ledger_with_accounts()
    if kind == "failed":
        return lg.accounts(acct(9, flags=AF.LINKED), acct(0))[0]
    return lg.accounts(acct(9, flags=AF.LINKED))[0]


SCENARIOS: dict[Result, Callable[[], Result]] = {
    R.OK: lambda: _account(acct(9)),
    R.LINKED_EVENT_FAILED: lambda: _linked_chain("failed"),
    R.LINKED_EVENT_CHAIN_OPEN: lambda: _linked_chain("open"),
    R.RESERVED_FIELD: _reserved_field,
    R.RESERVED_FLAG: lambda: _account(acct(9, flags=1 << 12)),
    R.ID_MUST_NOT_BE_ZERO: lambda: _account(acct(0)),
    R.ID_MUST_NOT_BE_INT_MAX: lambda: _account(acct(U128_MAX)),
    R.FLAGS_ARE_MUTUALLY_EXCLUSIVE: lambda: _account(
        acct(9, flags=AF.DEBITS_MUST_NOT_EXCEED_CREDITS | AF.CREDITS_MUST_NOT_EXCEED_DEBITS)),
    R.LEDGER_MUST_NOT_BE_ZERO: lambda: _account(acct(9, ledger=0)),
    R.CODE_MUST_NOT_BE_ZERO: lambda: _account(acct(9, code=0)),
    R.ASSET_SCALE_MISMATCH: lambda: _account(acct(9, scale=3)),
    R.EXISTS_WITH_DIFFERENT_FLAGS: lambda: _account(acct(1, flags=AF.HISTORY)),
    R.EXISTS_WITH_DIFFERENT_USER_DATA: lambda: _account(Account(1, L, 10, user_data=7)),
    R.EXISTS_WITH_DIFFERENT_LEDGER: lambda: _account(acct(1, ledger=978)),
    R.EXISTS_WITH_DIFFERENT_CODE: lambda: _account(acct(1, code=11)),
    R.EXISTS_WITH_DIFFERENT_ASSET_SCALE: lambda: _account(acct(1, scale=4)),
    R.EXISTS: lambda: _account(acct(1)),
    # transfers: fields
    R.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO: lambda: ledger_with_accounts().transfer(xfer(9, dr=0)),
    R.DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX: lambda: ledger_with_accounts().transfer(xfer(9, dr=U128_MAX)),
    R.CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO: lambda: ledger_with_accounts().transfer(xfer(9, cr=0)),
    R.CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX: lambda: ledger_with_accounts().transfer(xfer(9, cr=U128_MAX)),
    R.ACCOUNTS_MUST_BE_DIFFERENT: lambda: ledger_with_accounts().transfer(xfer(9, dr=1, cr=1)),
    R.PENDING_ID_MUST_BE_ZERO: lambda: ledger_with_accounts().transfer(xfer(9, pending_id=5)),
    R.PENDING_ID_MUST_NOT_BE_ZERO: lambda: ledger_with_accounts().transfer(
        xfer(9, flags=TF.POST_PENDING_TRANSFER)),
    R.PENDING_ID_MUST_NOT_BE_INT_MAX: lambda: ledger_with_accounts().transfer(
        xfer(9, flags=TF.POST_PENDING_TRANSFER, pending_id=U128_MAX)),
    R.PENDING_ID_MUST_BE_DIFFERENT: lambda: ledger_with_accounts().transfer(
        xfer(9, flags=TF.POST_PENDING_TRANSFER, pending_id=9)),
    R.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER: lambda: ledger_with_accounts().transfer(xfer(9, timeout_s=5)),
    R.AMOUNT_MUST_NOT_BE_ZERO: lambda: ledger_with_accounts().transfer(xfer(9, amount=0)),
    # transfers: lookups
    R.DEBIT_ACCOUNT_NOT_FOUND: lambda: ledger_with_accounts().transfer(xfer(9, dr=77)),
    R.CREDIT_ACCOUNT_NOT_FOUND: lambda: ledger_with_accounts().transfer(xfer(9, cr=77)),
    R.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER: lambda: ledger_with_accounts().transfer(xfer(9, cr=3)),
    R.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS: lambda: ledger_with_accounts().transfer(
        xfer(9, ledger=978)),
    R.PENDING_TRANSFER_NOT_FOUND: lambda: ledger_with_accounts().transfer(
        xfer(9, flags=TF.POST_PENDING_TRANSFER, pending_id=404)),
    R.PENDING_TRANSFER_NOT_PENDING: lambda: _post_after(xfer(50), xfer(9, flags=TF.POST_PENDING_TRANSFER,
                                                                        pending_id=50)),
    R.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID: lambda: with_pending().transfer(
        xfer(9, dr=2, cr=1, flags=TF.POST_PENDING_TRANSFER, pending_id=50)),
    R.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID: lambda: with_pending().transfer(
        xfer(9, dr=1, cr=3, flags=TF.POST_PENDING_TRANSFER, pending_id=50)),
    R.PENDING_TRANSFER_HAS_DIFFERENT_LEDGER: lambda: with_pending().transfer(
        xfer(9, ledger=978, flags=TF.POST_PENDING_TRANSFER, pending_id=50)),
    R.PENDING_TRANSFER_HAS_DIFFERENT_CODE: lambda: with_pending().transfer(
        xfer(9, code=2, flags=TF.POST_PENDING_TRANSFER, pending_id=50)),
    R.EXCEEDS_PENDING_TRANSFER_AMOUNT: lambda: with_pending(100).transfer(
        xfer(9, amount=101, flags=TF.POST_PENDING_TRANSFER, pending_id=50)),
    R.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT: lambda: with_pending(100).transfer(
        xfer(9, amount=99, flags=TF.VOID_PENDING_TRANSFER, pending_id=50)),
    R.PENDING_TRANSFER_ALREADY_POSTED: lambda: _twice(TF.POST_PENDING_TRANSFER, TF.VOID_PENDING_TRANSFER),
    R.PENDING_TRANSFER_ALREADY_VOIDED: lambda: _twice(TF.VOID_PENDING_TRANSFER, TF.POST_PENDING_TRANSFER),
    R.PENDING_TRANSFER_EXPIRED: lambda: _expired(),
    # transfers: idempotency
    R.EXISTS_WITH_DIFFERENT_TRANSFER_FLAGS: lambda: _retry(xfer(9), xfer(9, flags=TF.PENDING)),
    R.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID: lambda: _retry(xfer(9), xfer(9, dr=4, cr=2)),
    R.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID: lambda: _retry(xfer(9), xfer(9, cr=4)),
    R.EXISTS_WITH_DIFFERENT_AMOUNT: lambda: _retry(xfer(9), xfer(9, amount=11)),
    R.EXISTS_WITH_DIFFERENT_PENDING_ID: lambda: _retry_post(pending_id_b=51),
    R.EXISTS_WITH_DIFFERENT_TRANSFER_USER_DATA: lambda: _retry(xfer(9), xfer(9, user_data=1)),
    R.EXISTS_WITH_DIFFERENT_TIMEOUT: lambda: _retry(xfer(9, flags=TF.PENDING, timeout_s=60),
                                                   xfer(9, flags=TF.PENDING, timeout_s=61)),
    R.EXISTS_WITH_DIFFERENT_TRANSFER_CODE: lambda: _retry(xfer(9), xfer(9, code=2)),
    R.EXISTS_WITH_DIFFERENT_TRANSFER_LEDGER: lambda: _retry_post(ledger_b=True),
    R.EXISTS_WITH_DIFFERENT_EXTERNAL_REF: lambda: _retry(xfer(9, external_ref=b"psp-1"),
                                                        xfer(9, external_ref=b"psp-2")),
    R.EXISTS_WITH_DIFFERENT_PII_COMMITMENT: lambda: _retry(xfer(9, pii_commitment=b"\x01" * 32),
                                                          xfer(9, pii_commitment=b"\x02" * 32)),
    R.EXISTS_WITH_DIFFERENT_PSP: lambda: _retry(xfer(9, psp_id=1), xfer(9, psp_id=2)),
    R.TRANSFER_EXISTS: lambda: _retry(xfer(9), xfer(9)),
    # transfers: balances
    R.OVERFLOWS_DEBITS_PENDING: lambda: _overflow(TF.PENDING, via="dr"),
    R.OVERFLOWS_CREDITS_PENDING: lambda: _overflow(TF.PENDING, via="cr"),
    R.OVERFLOWS_DEBITS_POSTED: lambda: _overflow(0, via="dr"),
    R.OVERFLOWS_CREDITS_POSTED: lambda: _overflow(0, via="cr"),
    R.OVERFLOWS_DEBITS: lambda: _overflow_total("dr"),
    R.OVERFLOWS_CREDITS: lambda: _overflow_total("cr"),
    R.OVERFLOWS_TIMEOUT: lambda: _overflow_timeout(),
    R.EXCEEDS_CREDITS: lambda: _limit(AF.DEBITS_MUST_NOT_EXCEED_CREDITS, dr=8, cr=2),
    R.EXCEEDS_DEBITS: lambda: _limit(AF.CREDITS_MUST_NOT_EXCEED_DEBITS, dr=1, cr=8),
}

from tests.rules.scenarios import RULE_SCENARIOS  # noqa: E402 - codes added by rules (issue 4)

SCENARIOS.update(RULE_SCENARIOS)

from tests.pii.scenarios import PII_SCENARIOS  # noqa: E402 - codes added by PII erasure (issue 14)

SCENARIOS.update(PII_SCENARIOS)

from tests.ledger.rotation_scenarios import ROTATION_SCENARIOS  # noqa: E402 - checkpoint key rotation (issue 11)

SCENARIOS.update(ROTATION_SCENARIOS)

from tests.federation.aggregate_scenarios import AGGREGATE_SCENARIOS  # noqa: E402 - aggregates (issue 15)

SCENARIOS.update(AGGREGATE_SCENARIOS)
from tests.netting.scenarios import NETTING_SCENARIOS  # noqa: E402 - cross-region obligations (issue 15)

SCENARIOS.update(NETTING_SCENARIOS)


def _post_after(first: Transfer, second: Transfer) -> Result:
    lg = ledger_with_accounts()
    assert lg.transfer(first) == R.OK
    return lg.transfer(second)


def _twice(first: int, second: int) -> Result:
    lg = with_pending()
    assert lg.transfer(xfer(9, amount=0, flags=first, pending_id=50)) == R.OK
    return lg.transfer(xfer(10, amount=0, flags=second, pending_id=50))


def _expired() -> Result:
    lg = with_pending(timeout_s=5)
    lg.block(advance_s=6)  # an empty block past the timeout expires it
    return lg.transfer(xfer(9, amount=0, flags=TF.POST_PENDING_TRANSFER, pending_id=50))


def _retry(first: Transfer, second: Transfer) -> Result:
    lg = ledger_with_accounts(acct(4))
    assert lg.transfer(first) == R.OK
    return lg.transfer(second)


def _retry_post(pending_id_b: int = 50, ledger_b: bool = False) -> Result:
    lg = with_pending()
    assert lg.transfer(xfer(51, flags=TF.PENDING)) == R.OK
    first = xfer(9, amount=0, dr=0, cr=0, ledger=0, code=0, flags=TF.POST_PENDING_TRANSFER, pending_id=50)
    assert lg.transfer(first) == R.OK
    second = xfer(9, amount=0, dr=0, cr=0, ledger=L if ledger_b else 0, code=0,
                  flags=TF.POST_PENDING_TRANSFER, pending_id=pending_id_b)
    return lg.transfer(second)


def _overflow(flags: int, via: str) -> Result:
    lg = ledger_with_accounts(acct(4), acct(5))
    big = U128_MAX - 5
    # fill one side close to the maximum, then push it over with a transfer that touches it
    if via == "dr":
        assert lg.transfer(xfer(20, dr=1, cr=4, amount=big, flags=flags)) == R.OK
        return lg.transfer(xfer(9, dr=1, cr=5, amount=10, flags=flags))
    assert lg.transfer(xfer(20, dr=4, cr=2, amount=big, flags=flags)) == R.OK
    return lg.transfer(xfer(9, dr=5, cr=2, amount=10, flags=flags))


def _overflow_total(via: str) -> Result:
    lg = ledger_with_accounts(acct(4), acct(5))
    half = U128_MAX // 2 + 1
    if via == "dr":
        assert lg.transfer(xfer(20, dr=1, cr=4, amount=half, flags=TF.PENDING)) == R.OK
        return lg.transfer(xfer(9, dr=1, cr=5, amount=half))
    assert lg.transfer(xfer(20, dr=4, cr=2, amount=half, flags=TF.PENDING)) == R.OK
    return lg.transfer(xfer(9, dr=5, cr=2, amount=half))


def _overflow_timeout() -> Result:
    lg = ledger_with_accounts()
    lg.now_ns = (1 << 64) - 10 * 1_000_000_000
    return lg.transfer(xfer(9, flags=TF.PENDING, timeout_s=(1 << 32) - 1), advance_s=0)


def _limit(flag: int, dr: int, cr: int) -> Result:
    lg = ledger_with_accounts(acct(8, flags=flag))
    return lg.transfer(xfer(9, dr=dr, cr=cr, amount=1))


def test_every_result_code_has_a_scenario() -> None:
    assert set(SCENARIOS) == set(Result)


@pytest.mark.parametrize("expected", list(SCENARIOS), ids=lambda r: r.name.lower())
def test_result_code(expected: Result) -> None:
    assert SCENARIOS[expected]() == expected


# -- precedence: when an event breaks several rules, the first in the documented order wins -------

PRECEDENCE: list[tuple[str, Transfer, Result]] = [
    ("reserved flag before zero id", xfer(0, flags=1 << 9), R.RESERVED_FLAG),
    ("zero id before mutually exclusive flags", xfer(0, flags=TF.PENDING | TF.VOID_PENDING_TRANSFER),
     R.ID_MUST_NOT_BE_ZERO),
    ("flags before account ids", xfer(9, dr=0, flags=TF.PENDING | TF.POST_PENDING_TRANSFER),
     R.FLAGS_ARE_MUTUALLY_EXCLUSIVE),
    ("debit id before credit id", xfer(9, dr=0, cr=0), R.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO),
    ("same accounts before zero amount", xfer(9, dr=1, cr=1, amount=0), R.ACCOUNTS_MUST_BE_DIFFERENT),
    ("zero amount before zero ledger", xfer(9, amount=0, ledger=0), R.AMOUNT_MUST_NOT_BE_ZERO),
    ("zero ledger before zero code", xfer(9, ledger=0, code=0), R.LEDGER_MUST_NOT_BE_ZERO),
    ("field checks before lookups", xfer(9, dr=77, code=0), R.CODE_MUST_NOT_BE_ZERO),
    ("debit lookup before credit lookup", xfer(9, dr=77, cr=78), R.DEBIT_ACCOUNT_NOT_FOUND),
    ("same ledger before ledger mismatch", xfer(9, cr=3, ledger=978), R.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER),
]


@pytest.mark.parametrize(("name", "t", "expected"), PRECEDENCE, ids=[p[0] for p in PRECEDENCE])
def test_precedence(name: str, t: Transfer, expected: Result) -> None:
    assert ledger_with_accounts().transfer(t) == expected


def test_exists_checked_before_balance_limits() -> None:
    lg = ledger_with_accounts(acct(8, flags=AF.DEBITS_MUST_NOT_EXCEED_CREDITS))
    assert lg.transfer(xfer(30, dr=2, cr=8, amount=5)) == R.OK  # credit 8 so it can pay 5
    assert lg.transfer(xfer(9, dr=8, cr=2, amount=5)) == R.OK  # now 8 has 0 available
    assert lg.transfer(xfer(9, dr=8, cr=2, amount=5)) == R.TRANSFER_EXISTS  # not exceeds_credits
    assert lg.transfer(xfer(9, dr=8, cr=2, amount=6)) == R.EXISTS_WITH_DIFFERENT_AMOUNT


def test_exists_field_order_flags_first() -> None:
    assert _retry(xfer(9), xfer(9, amount=11, flags=TF.PENDING, code=2)) == R.EXISTS_WITH_DIFFERENT_TRANSFER_FLAGS
    assert _retry(xfer(9), xfer(9, amount=11, code=2)) == R.EXISTS_WITH_DIFFERENT_AMOUNT


def test_account_precedence() -> None:
    lg = ledger_with_accounts()
    assert lg.accounts(acct(0, ledger=0))[0] == R.ID_MUST_NOT_BE_ZERO
    assert lg.accounts(acct(9, ledger=0, code=0))[0] == R.LEDGER_MUST_NOT_BE_ZERO
    assert lg.accounts(acct(1, flags=AF.HISTORY, code=99))[0] == R.EXISTS_WITH_DIFFERENT_FLAGS
    assert lg.accounts(acct(1, scale=9))[0] == R.EXISTS_WITH_DIFFERENT_ASSET_SCALE  # exists before scale


def test_an_exact_account_retry_adds_no_leaf_and_returns_the_original_index_and_block() -> None:
    lg = Ledger()
    batch = Batch(EventKind.CREATE_ACCOUNT, encode_account(acct(1, flags=AF.LINKED)) + encode_account(acct(2)))
    first = lg.block(batch)
    assert first.batches[0].results == [R.OK, R.OK] and first.header.leaf_count == 2
    again = lg.block(batch)  # a linked chain of exact retries succeeds as a whole, with no new leaf
    assert again.batches[0].results == [R.EXISTS, R.EXISTS] and again.header.leaf_count == 0
    assert again.batches[0].log_indexes == first.batches[0].log_indexes
    assert again.batches[0].blocks == first.batches[0].blocks
    # inside one block the retry points at the leaf created earlier in that block
    same = lg.block(Batch(EventKind.CREATE_ACCOUNT, encode_account(acct(3)) + encode_account(acct(3))))
    assert same.batches[0].results == [R.OK, R.EXISTS] and same.header.leaf_count == 1
    assert same.batches[0].log_indexes[0] == same.batches[0].log_indexes[1] == first.header.tree_size
    # a retry with different fields is a new, failed event: it is logged
    diff = lg.block(Batch(EventKind.CREATE_ACCOUNT, encode_account(acct(2, code=11))))
    assert diff.batches[0].results == [R.EXISTS_WITH_DIFFERENT_CODE] and diff.header.leaf_count == 1
