"""Rule sets up to the documented 64 rules compile and decide; a rule that cannot compile is refused
naming it; nothing a rule set meets at run time stops apply (issue #12, item 2)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from ledger.codec import AUX_TAG_RULE_OUTCOME, Batch, decode_rule_outcome, encode_transfer, iter_aux
from ledger.rules import Action, RuleSetError, compile_ruleset, parse_ruleset, validate
from ledger.rules.fastpath import RulePlan
from ledger.rules.lowering import lower
from ledger.rules.model import RULES_MAX
from ledger.types import EventKind, Result
from tests.rules.helpers import RulesLedger, acct, deploy_record, ruleset, xfer


def _code_rules(n: int) -> list[dict[str, Any]]:
    """Rule i rejects transfers of code 1000 + i; all are needed to reach the last."""
    return [{"id": f"code-{i:02d}", "expr": f"transfer.code == {1000 + i} && transfer.amount > 0",
             "action": "reject", "code": 500 + i} for i in range(n)]


def _ledger(rules: list[dict[str, Any]]) -> RulesLedger:
    lg = RulesLedger()
    assert lg.accounts(acct(1), acct(2)) == [Result.OK, Result.OK]
    assert lg.deploy(ruleset(*rules)) == Result.OK
    return lg


def _rule_of(lg: RulesLedger, index: int) -> tuple[int, int, str] | None:
    for tag, value in iter_aux(lg.leaves()[index].aux):
        if tag == AUX_TAG_RULE_OUTCOME:
            return decode_rule_outcome(value)
    return None


@pytest.mark.parametrize("n", [47, 48, 63, RULES_MAX])
def test_large_rule_sets_deploy_and_decide_in_precedence_order(n: int) -> None:
    lg = _ledger(_code_rules(n))
    assert lg.state.rules is not None and len(lg.state.rules.rules) == n
    last = n - 1
    results = lg.transfers(xfer(1, code=1000), xfer(2, code=1000 + last), xfer(3, code=1000 + n), xfer(4, code=1))
    assert results == [Result.RULE_REJECTED, Result.RULE_REJECTED, Result.OK, Result.OK]
    leaves = lg.leaves()
    by_id = {leaf.body[:16]: leaf for leaf in leaves if leaf.kind == EventKind.CREATE_TRANSFER}
    decided = [dict(iter_aux(by_id[i.to_bytes(16, "little")].aux)).get(AUX_TAG_RULE_OUTCOME) for i in (1, 2, 3)]
    assert decided[0] is not None and decode_rule_outcome(decided[0]) == (Action.REJECT, 500, "code-00")
    assert decided[1] is not None and decode_rule_outcome(decided[1]) == (Action.REJECT, 500 + last, f"code-{last:02d}")
    assert decided[2] is None


def test_a_large_rule_set_survives_a_restart() -> None:
    lg = _ledger(_code_rules(RULES_MAX))
    lg.reopen()
    assert lg.transfer(xfer(1, code=1000 + RULES_MAX - 1)) == Result.RULE_REJECTED


def test_a_rule_that_does_not_compile_is_refused_naming_it() -> None:
    rules = [*_code_rules(RULES_MAX - 1), {"id": "broken", "expr": "transfer.amount > > 1", "action": "flag"}]
    with pytest.raises(RuleSetError) as e:
        validate(ruleset(*rules))
    assert e.value.result == Result.RULESET_INVALID
    assert len(e.value.problems) == 1 and "rule 'broken'" in e.value.problems[0]
    assert "does not compile" in e.value.problems[0]


def test_a_rule_set_that_cannot_compile_is_a_result_code_at_deploy() -> None:
    lg = RulesLedger()
    assert lg.accounts(acct(1), acct(2)) == [Result.OK, Result.OK]
    canonical_ok = ruleset(*_code_rules(2))
    assert lg.deploy(canonical_ok) == Result.OK
    # a structurally valid document whose rule does not compile: refused by the state machine
    bad = ruleset({"id": "broken", "expr": "transfer.amount > > 1", "action": "flag"}, version=2)

    assert lg.deploy({}, raw=deploy_record(bad)) == Result.RULESET_INVALID
    assert lg.transfer(xfer(1, code=1000)) == Result.RULE_REJECTED  # the earlier set stays active


def test_compile_raises_only_rule_set_errors_for_hostile_text() -> None:
    hostile = ["(" * 11 + "true" + ")" * 11 + " && " + " && ".join(["transfer.amount > 0"] * 30),
               "transfer.external_ref.startsWith('" + "\\" * 3 + "')", "transfer.amount > 0 ? true"]
    for expr in hostile:
        try:
            compile_ruleset(parse_ruleset(ruleset({"id": "h", "expr": expr, "action": "flag"})))
        except RuleSetError as e:
            assert e.problems and "rule 'h'" in e.problems[0]


def test_an_evaluation_error_mid_block_is_a_result_code_and_the_block_applies() -> None:
    lg = _ledger([{"id": "div", "expr": "transfer.amount / (transfer.code - 7) > 100", "action": "reject",
                   "code": 9}])
    out = lg.block(Batch(EventKind.CREATE_TRANSFER, b"".join(
        encode_transfer(xfer(i, amount=10, code=7 if i == 3 else 1)) for i in range(1, 6))))
    assert [Result(r) for r in out.batches[0].results] == [Result.OK, Result.OK, Result.RULE_ERROR, Result.OK,
                                                          Result.OK]
    assert _rule_of(lg, -3) == (Action.ERROR, 9, "div")
    assert lg.balance(1) == (0, 40, 0, 0)


def test_a_failure_building_the_rule_inputs_is_a_result_code_not_an_exception() -> None:
    lg = _ledger([{"id": "big", "expr": "transfer.amount > 1000 && risk.debit.count_1h >= 0", "action": "flag"}])
    compiled = lg.state.rules
    assert compiled is not None

    def failing(real: Any) -> Any:  # fault injection: computing the rule inputs fails for one transfer
        def fn(rec: tuple[Any, ...], *args: Any) -> Any:
            if rec[3] == 13:
                raise OverflowError("injected")
            return real(rec, *args)
        return fn

    # every form: the plain activation builder and the compiled rule set (which computes the inputs itself);
    # the C rules hook's program hands every rule to the compiled form (its own input failures:
    # tests/engine/test_rules_lowering.py)
    lg.state.rules = dataclasses.replace(compiled, build=failing(compiled.build), fast=failing(compiled.fast),
                                         program=lower([RulePlan((), True, ())] * len(compiled.rules)))
    out = lg.block(Batch(EventKind.CREATE_TRANSFER, b"".join(
        encode_transfer(xfer(i, amount=13 if i == 2 else 10)) for i in range(1, 4))))
    assert [Result(r) for r in out.batches[0].results] == [Result.OK, Result.RULE_EVALUATION_FAILED, Result.OK]
    assert lg.balance(1) == (0, 20, 0, 0)
