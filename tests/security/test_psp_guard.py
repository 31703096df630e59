"""Record-level rules of node/psp_guard.py on real encoded records (no node needed)."""

from __future__ import annotations

import pytest

from clients.workload import LEDGER_USD, account_records
from ledger.codec import Batch, SettlementCallback, encode_callback, encode_transfer
from ledger.ownership import account_id_for, owner_of
from ledger.types import EventKind, Transfer, TransferFlags
from node.errors import Unauthorised
from node.psp_guard import check_batch, check_read_accounts
from node.tls import Identity

PSP7 = Identity("psp", "7", 1)


def _t(i: int, debit: int, psp: int = 7, flags: int = 0, pending: int = 0) -> bytes:
    return encode_transfer(Transfer(id=1000 + i, debit_account_id=debit, credit_account_id=account_id_for(9, 1),
                                    amount=1, ledger=LEDGER_USD, code=1, psp_id=psp, flags=flags,
                                    pending_id=pending))


def test_ownership_is_the_top_32_bits_of_the_id() -> None:
    assert owner_of(account_id_for(7, 123).to_bytes(16, "little")) == 7
    with pytest.raises(ValueError):
        account_id_for(7, 1 << 96)


def test_a_whole_batch_of_own_transfers_passes() -> None:
    recs = b"".join(_t(i, account_id_for(7, i + 1)) for i in range(500))
    assert check_batch(PSP7, Batch(EventKind.CREATE_TRANSFER, recs)) == []


@pytest.mark.parametrize("bad", [_t(250, account_id_for(7, 1), psp=8), _t(250, account_id_for(8, 1)),
                                 _t(250, account_id_for(7, 1) ^ (1 << 127))])
def test_one_foreign_record_deep_in_a_batch_is_named(bad: bytes) -> None:
    recs = b"".join(_t(i, account_id_for(7, i + 1)) for i in range(250)) + bad + _t(251, account_id_for(7, 1))
    with pytest.raises(Unauthorised, match=r"transfer #250 \(id 1250\)"):
        check_batch(PSP7, Batch(EventKind.CREATE_TRANSFER, recs))


def test_post_and_void_with_zero_debit_are_checked_against_their_pending_transfer() -> None:
    post = _t(1, 0, flags=TransferFlags.POST_PENDING_TRANSFER, pending=555)
    assert check_batch(PSP7, Batch(EventKind.CREATE_TRANSFER, post)) == [(555).to_bytes(16, "little")]
    plain_zero = _t(2, 0)  # a zero debit without post/void is not a loophole
    with pytest.raises(Unauthorised, match="debits account 0"):
        check_batch(PSP7, Batch(EventKind.CREATE_TRANSFER, plain_zero))


def test_accounts_callbacks_and_kinds() -> None:
    check_batch(PSP7, Batch(EventKind.CREATE_ACCOUNT, account_records(3, first_id=account_id_for(7, 1))))
    with pytest.raises(Unauthorised, match="account #1"):
        check_batch(PSP7, Batch(EventKind.CREATE_ACCOUNT, account_records(1, first_id=account_id_for(7, 1))
                                + account_records(1, first_id=account_id_for(6, 1))))
    cb = encode_callback(SettlementCallback(callback_id=1, transfer_id=2, psp_id=6, observed_amount=1))
    with pytest.raises(Unauthorised, match="callback #0 has psp_id 6"):
        check_batch(PSP7, Batch(EventKind.SETTLEMENT_CALLBACK, cb))
    with pytest.raises(Unauthorised, match="for PSPs"):
        check_batch(Identity("auditor", "a", 2), Batch(EventKind.CREATE_ACCOUNT, account_records(1)))
    assert check_batch(None, Batch(EventKind.CREATE_TRANSFER, _t(0, 1, psp=99))) == []  # --insecure: no identities
    with pytest.raises(Unauthorised, match="may read only its own accounts"):
        check_read_accounts(PSP7, [account_id_for(8, 1).to_bytes(16, "little")])
