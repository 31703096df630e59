"""The shipped example rule set (docs/examples/ruleset.json) deploys and does what it says."""

from __future__ import annotations

import json
from pathlib import Path

from ledger.rules import Action, validate
from ledger.types import Result
from tests.rules.helpers import RulesLedger, acct, xfer
from tests.rules.test_rules import outcome

R = Result
EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "ruleset.json"
EUR = 978


def example_ledger() -> RulesLedger:
    doc = json.loads(EXAMPLE.read_text())
    lg = RulesLedger()
    ids = [*range(1, 40), 900001]
    assert lg.accounts(*[acct(i, ledger=EUR) for i in ids]) == [R.OK] * len(ids)
    assert lg.deploy(doc) == R.OK
    return lg


def t(i: int, dr: int = 1, cr: int = 2, amount: int = 100, psp: int = 1) -> object:
    return xfer(i, dr=dr, cr=cr, amount=amount, ledger=EUR, psp_id=psp)


def test_example_validates() -> None:
    compiled = validate(json.loads(EXAMPLE.read_text()))
    assert [r.id for r in compiled.rules] == ["balance-floor", "psp-velocity-cap", "low-and-slow-hold",
                                              "low-and-slow-flag"]


def test_balance_floor() -> None:
    lg = example_ledger()
    assert lg.transfer(t(1, amount=100_000)) == R.OK  # exactly at the floor
    assert lg.transfer(t(2, amount=1)) == R.RULE_REJECTED
    assert outcome(lg) == (Action.REJECT, 1001, "balance-floor")


def test_psp_velocity_cap() -> None:
    lg = example_ledger()
    recs = [t(i, dr=3 + i % 30, cr=2, amount=10, psp=9) for i in range(1, 602)]
    res = lg.transfers(*recs)  # type: ignore[arg-type]
    assert res[:600] == [R.OK] * 600 and res[600] == R.RULE_REJECTED
    assert outcome(lg) == (Action.REJECT, 1002, "psp-velocity-cap")
    assert lg.transfer(t(999, dr=5, amount=10, psp=8)) == R.OK  # another PSP is not capped


def test_low_and_slow_flag_then_hold() -> None:
    lg = example_ledger()
    got = []
    for n in range(8):
        assert lg.transfer(t(100 + n, dr=1, cr=10 + n, amount=900), advance_s=60) == R.OK  # type: ignore[arg-type]
        o = outcome(lg)
        got.append(o[2] if o else None)
    assert got[:3] == [None, None, None]
    assert got[3] == "low-and-slow-flag"
    assert "low-and-slow-hold" in got
    assert lg.balance(1)[0] > 0  # a held payment is pending
