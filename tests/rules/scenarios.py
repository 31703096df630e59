"""One scenario per result code added for rules and reconciliation (used by tests/ledger/test_results.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ledger.codec import SettlementCallback
from ledger.rules.fastpath import RulePlan
from ledger.rules.lowering import lower
from ledger.types import AccountFlags as AF
from ledger.types import Result
from ledger.types import TransferFlags as TF
from tests.rules.helpers import STRANGER, RulesLedger, acct, ruleset, xfer

R = Result
_TOL = {"tolerances": [{"ledger": 1, "psp_id": 0, "abs_minor": 2, "bps": 0, "rounding_account": 3}]}


def _with(*rules: dict[str, Any], **extra: Any) -> RulesLedger:
    lg = RulesLedger()
    lg.accounts(acct(1), acct(2), acct(3), acct(4, flags=AF.DEBITS_MUST_NOT_EXCEED_CREDITS))
    assert lg.deploy(ruleset(*rules, **extra)) == R.OK
    return lg


def _cb(lg: RulesLedger, **kw: Any) -> Result:
    kw.setdefault("callback_id", 50)
    kw.setdefault("psp_id", 0)
    return lg.callbacks(SettlementCallback(**kw))[0]


def _reconciled_twice() -> Result:
    lg = _with(**{"reconciliation": _TOL})
    lg.transfer(xfer(1, amount=10))
    _cb(lg, transfer_id=1, observed_amount=10)
    return _cb(lg, callback_id=51, transfer_id=1, observed_amount=10)


def _late() -> Result:
    lg = _with()
    lg.transfer(xfer(1, amount=10, flags=TF.PENDING, timeout_s=1))
    lg.block(advance_s=2)
    return _cb(lg, transfer_id=1, observed_amount=10)


def _not_reconcilable() -> Result:
    lg = _with()
    lg.transfer(xfer(1, amount=10, flags=TF.PENDING))
    lg.transfer(xfer(2, amount=0, dr=0, cr=0, ledger=0, code=0, pending_id=1, flags=TF.VOID_PENDING_TRANSFER))
    return _cb(lg, transfer_id=1, observed_amount=10)


def _residual_failed() -> Result:
    lg = _with(**{"reconciliation": {"tolerances": [{"ledger": 1, "abs_minor": 5, "rounding_account": 4}]}})
    lg.transfer(xfer(1, amount=10))
    return _cb(lg, transfer_id=1, observed_amount=12)  # rounding account 4 may not go below zero


def _exists_different() -> Result:
    lg = _with()
    lg.transfer(xfer(1, amount=10))
    _cb(lg, transfer_id=1, observed_amount=10)
    return _cb(lg, transfer_id=1, observed_amount=11)


def _evaluation_failed() -> Result:
    """Fault injection: no real input makes computing the rule inputs fail, so the activation builder
    and the compiled form of the rule set (which computes the inputs itself) are replaced, and the C
    hook's program defers every rule to that compiled form."""
    lg = _with({"id": "r", "expr": "transfer.amount > 5", "action": "flag"})
    assert lg.state.rules is not None

    def failing(*_: Any) -> Any:
        raise ArithmeticError("injected")

    # the C rules hook's program hands every rule to the compiled form (which fails here)
    lg.state.rules = dataclasses.replace(lg.state.rules, build=failing, fast=failing,
                                         program=lower([RulePlan((), True, ())] * len(lg.state.rules.rules)))
    return lg.transfer(xfer(1))


def _exists() -> Result:
    lg = _with()
    lg.transfer(xfer(1, amount=10))
    _cb(lg, transfer_id=1, observed_amount=10)
    return _cb(lg, transfer_id=1, observed_amount=10)


RULE_SCENARIOS: dict[Result, Callable[[], Result]] = {
    R.RULE_REJECTED: lambda: _with({"id": "r", "expr": "true", "action": "reject", "code": 9}).transfer(xfer(1)),
    R.RULE_ERROR: lambda: _with({"id": "r", "expr": "transfer.amount / 0 > 0", "action": "flag"}).transfer(xfer(1)),
    R.RULE_EVALUATION_FAILED: _evaluation_failed,
    R.RULE_ADJUSTMENT_FAILED: lambda: _with({"id": "r", "expr": "true", "action": "adjust", "adjust_account": 77,
                                             "adjust_code": 1, "adjust_fixed": 1}).transfer(xfer(1)),
    R.RULESET_BAD_SIGNATURE: lambda: RulesLedger().deploy(ruleset(), signer=STRANGER),
    R.RULESET_INVALID: lambda: RulesLedger().deploy({}, raw=_signed(b'{"name":"x"} ')),
    R.RULESET_TOO_LARGE: lambda: RulesLedger().deploy({}, raw=_too_large()),
    R.RULESET_VERSION_MUST_INCREASE: lambda: _with().deploy(ruleset()),
    R.CALLBACK_EXISTS: _exists,
    R.CALLBACK_EXISTS_WITH_DIFFERENT_FIELDS: _exists_different,
    R.CALLBACK_TARGET_MISSING: lambda: _cb(_with(), observed_amount=1),
    R.RECONCILE_TRANSFER_NOT_FOUND: lambda: _cb(_with(), transfer_id=5, observed_amount=1),
    R.RECONCILE_PSP_MISMATCH: lambda: _psp_mismatch(),
    R.RECONCILE_OUTSIDE_TOLERANCE: lambda: _outside(),
    R.RECONCILE_LATE_AFTER_EXPIRY: _late,
    R.RECONCILE_ALREADY_RECONCILED: _reconciled_twice,
    R.RECONCILE_NOT_RECONCILABLE: _not_reconcilable,
    R.RECONCILE_RESIDUAL_FAILED: _residual_failed,
}


def _signed(canonical: bytes) -> bytes:
    from ledger.codec import encode_deploy
    from ledger.rules import signing_message
    from tests.rules.helpers import OPERATOR

    return encode_deploy(OPERATOR.key_id, OPERATOR.sign(signing_message(canonical)), canonical)


def _too_large() -> bytes:
    from ledger.codec import encode_deploy
    from ledger.rules import canonical_json, signing_message
    from tests.rules.helpers import OPERATOR

    doc = ruleset(*[{"id": f"r{i}", "expr": "true", "action": "flag"} for i in range(65)])
    doc = {"format": "sovledger-ruleset/1", "description": "", "reconciliation": {"on_expiry": "void",
           "tolerances": []}, **doc}
    canonical = canonical_json(doc)
    return encode_deploy(OPERATOR.key_id, OPERATOR.sign(signing_message(canonical)), canonical)


def _psp_mismatch() -> Result:
    lg = _with()
    lg.transfer(xfer(1, amount=10, psp_id=2))
    return _cb(lg, transfer_id=1, observed_amount=10, psp_id=3)


def _outside() -> Result:
    lg = _with(**{"reconciliation": _TOL})
    lg.transfer(xfer(1, amount=10))
    return _cb(lg, transfer_id=1, observed_amount=20)



