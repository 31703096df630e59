"""Settlement callbacks: exact, inside/outside the tolerance band, late, duplicate; the report."""

from __future__ import annotations

from typing import Any

from ledger.codec import SettlementCallback as CB
from ledger.reconcile import report
from ledger.types import Result
from ledger.types import TransferFlags as TF
from tests.rules.helpers import RulesLedger, acct, ruleset, xfer

R = Result
TOL: dict[str, Any] = {"on_expiry": "flag", "tolerances": [
    {"ledger": 1, "psp_id": 0, "abs_minor": 2, "bps": 0, "rounding_account": 9},
    {"ledger": 1, "psp_id": 5, "abs_minor": 0, "bps": 100, "rounding_account": 9},
]}


def recon_ledger() -> RulesLedger:
    lg = RulesLedger()
    assert lg.accounts(acct(1), acct(2), acct(3), acct(9)) == [R.OK] * 4
    assert lg.deploy(ruleset(reconciliation=TOL)) == R.OK
    return lg


def test_exact_match_reconciles_and_duplicates_are_idempotent() -> None:
    lg = recon_ledger()
    assert lg.transfer(xfer(1, amount=1000, psp_id=3, external_ref=b"ord-1")) == R.OK
    n = len(lg.leaves())
    assert lg.callbacks(CB(callback_id=70, external_ref=b"ord-1", observed_amount=1000, psp_id=3)) == [R.OK]
    assert len(lg.leaves()) == n + 1
    assert lg.callbacks(CB(callback_id=70, external_ref=b"ord-1", observed_amount=1000, psp_id=3)) == [
        R.CALLBACK_EXISTS]
    assert len(lg.leaves()) == n + 1  # exact retry: no new leaf
    assert lg.callbacks(CB(callback_id=70, transfer_id=1, observed_amount=999, psp_id=3)) == [
        R.CALLBACK_EXISTS_WITH_DIFFERENT_FIELDS]
    assert lg.callbacks(CB(callback_id=71, transfer_id=1, observed_amount=1000, psp_id=3)) == [
        R.RECONCILE_ALREADY_RECONCILED]


def test_inside_the_band_posts_a_residual_to_the_rounding_account() -> None:
    lg = recon_ledger()
    lg.transfers(xfer(1, amount=1000, psp_id=3), xfer(2, amount=1000, psp_id=3))
    assert lg.callbacks(CB(callback_id=1, transfer_id=1, observed_amount=998, psp_id=3),
                        CB(callback_id=2, transfer_id=2, observed_amount=1002, psp_id=3)) == [R.OK, R.OK]
    assert lg.balance(9) == (0, 2, 0, 2)  # shortfall credited, excess debited: nets to zero
    assert lg.balance(2) == (0, 2, 0, 2002)
    with lg.store.read() as txn:
        rep = report(txn)
    assert rep["rounding_totals"] == {"9": "0"}
    assert rep["rounding"][0]["count"] == 2


def test_bps_band_for_a_specific_psp() -> None:
    lg = recon_ledger()
    lg.transfers(xfer(1, amount=10_000, psp_id=5), xfer(2, amount=10_000, psp_id=5))
    assert lg.callbacks(CB(callback_id=1, transfer_id=1, observed_amount=9_900, psp_id=5),
                        CB(callback_id=2, transfer_id=2, observed_amount=9_899, psp_id=5)) == [
        R.OK, R.RECONCILE_OUTSIDE_TOLERANCE]


def test_outside_the_band_is_an_exception() -> None:
    lg = recon_ledger()
    lg.transfer(xfer(1, amount=1000, psp_id=3))
    assert lg.callbacks(CB(callback_id=1, transfer_id=1, observed_amount=990, psp_id=3)) == [
        R.RECONCILE_OUTSIDE_TOLERANCE]
    with lg.store.read() as txn:
        rep = report(txn)
    assert [e["kind"] for e in rep["open_exceptions"]] == ["outside_tolerance"]
    assert lg.callbacks(CB(callback_id=1, transfer_id=1, observed_amount=990, psp_id=3)) == [R.CALLBACK_EXISTS]


def test_callback_posts_a_pending_transfer() -> None:
    lg = recon_ledger()
    assert lg.transfer(xfer(1, amount=500, psp_id=3, flags=TF.PENDING, timeout_s=60)) == R.OK
    assert lg.callbacks(CB(callback_id=1, transfer_id=1, observed_amount=501, psp_id=3)) == [R.OK]
    assert lg.balance(1) == (0, 500, 0, 0)
    lg.block(advance_s=120)  # nothing expires: it was posted
    assert lg.balance(1) == (0, 500, 0, 0)


def test_expiry_without_callback_is_flagged_and_late_callback_is_an_exception() -> None:
    lg = recon_ledger()
    assert lg.transfer(xfer(1, amount=500, psp_id=3, flags=TF.PENDING, timeout_s=10)) == R.OK
    lg.block(advance_s=11)
    assert lg.balance(1) == (0, 0, 0, 0)
    assert lg.callbacks(CB(callback_id=1, transfer_id=1, observed_amount=500, psp_id=3)) == [
        R.RECONCILE_LATE_AFTER_EXPIRY]
    with lg.store.read() as txn:
        kinds = [e["kind"] for e in report(txn)["open_exceptions"]]
    assert kinds == ["expired_unreconciled", "late_after_expiry"]


def test_unknown_targets_and_psp_mismatch() -> None:
    lg = recon_ledger()
    lg.transfer(xfer(1, amount=5, psp_id=3))
    assert lg.callbacks(CB(callback_id=1, observed_amount=5, psp_id=3),
                        CB(callback_id=2, transfer_id=99, observed_amount=5, psp_id=3),
                        CB(callback_id=3, transfer_id=1, observed_amount=5, psp_id=4),
                        CB(callback_id=0, transfer_id=1, observed_amount=5, psp_id=3)) == [
        R.CALLBACK_TARGET_MISSING, R.RECONCILE_TRANSFER_NOT_FOUND, R.RECONCILE_PSP_MISMATCH, R.ID_MUST_NOT_BE_ZERO]
