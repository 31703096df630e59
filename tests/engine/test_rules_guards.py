"""Guards and dispatch runs of the C rules hook (ledger/_native/rules_eval.c, ``rules_index``).

A rule whose first lowered conjunct compares one static field (a transfer field, ``psp.id``,
``block.timestamp_ns``) with one literal is skipped without reading anything else when that conjunct is
false; a run of at least four consecutive rules guarded ``field == literal`` on the same field is
dispatched by the record's value (binary search, matching rules in rule order). Both must keep first
match in rule order exactly, including a rule before the match that the C program cannot decide (it
hands the whole record to the Python compiled form). Unit level: ``Hook.evaluate`` against the Python
compiled form on records whose static fields hit the guards' literals, edge literals included; end to
end: the Python engine and the native engine with the C hook give identical results and tables.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import native, risk
from ledger.apply import native_transfers
from ledger.codec import TRANSFER_STRUCT, Batch, encode_account, encode_transfer
from ledger.rules.compiler import CompiledRuleSet, compile_ruleset
from ledger.rules.lowering import FIELD_ID, OPERATORS, describe
from ledger.rules.model import RuleSetError, parse_ruleset
from ledger.types import Account, EventKind, Result, Transfer
from ledger.types import TransferFlags as TF
from tests.engine.test_rules_differential import RulesPair
from tests.engine.test_rules_lowering import TS, View, _conjunct, random_account, table_over
from tests.rules.helpers import deploy_record

pytestmark = pytest.mark.skipif(risk.Hook is None or not native.available(),
                                reason="the C rules hook is not built (no C compiler)")

I64 = (1 << 63) - 1
U64 = (1 << 64) - 1
STATIC = ("transfer.amount", "transfer.ledger", "transfer.code", "transfer.psp_id", "transfer.flags",
          "transfer.timeout_s", "transfer.user_data", "psp.id", "block.timestamp_ns")
# a few values per static field; the guards' literals are drawn from them and from the edges
VALUES: dict[str, tuple[int, ...]] = {
    "transfer.amount": (1, 7, 500, I64), "transfer.ledger": (1, 2, 0xFFFFFFFF), "transfer.code": (0, 1, 3, 7, 0xFFFF),
    "transfer.psp_id": (0, 1, 0xFFFFFFFF), "transfer.flags": (0, int(TF.PENDING)), "transfer.timeout_s": (0, 5),
    "transfer.user_data": (0, 9, I64), "psp.id": (0, 1, 0xFFFFFFFF), "block.timestamp_ns": (TS,),
}
EDGES = (0, 1, -1, I64, -I64, 2, 3)
EQ, NE = OPERATORS.index("=="), OPERATORS.index("!=")


def _hook(rs: CompiledRuleSet, records: list[bytes]) -> Any:
    return risk.Hook(rs.program, b"".join(records), TS, 7, True, 15, {}, table_over({}), set(), {}, [],
                     lambda *a: (-1, False))


def _compile(exprs: list[str]) -> CompiledRuleSet:
    return compile_ruleset(parse_ruleset({"name": "g", "version": 1, "rules": [
        {"id": f"r{i:02d}", "priority": i, "expr": e, "action": "flag"} for i, e in enumerate(exprs)]}))


def test_guards_come_first_among_the_cheapest_conjuncts() -> None:
    rs = _compile([f"transfer.amount - {I64} < 0 && transfer.user_data > 5 && psp.id == 2 && debit.balance > 0",
                   "block.height > 3 && transfer.pending"])
    assert describe(rs.program) == [
        (0, False, ["+transfer.user_data > +5", "+psp.id == +2", f"+transfer.amount -{I64} < +0",
                    "+debit.balance > +0"]),
        (1, False, ["transfer.pending", "+block.height > +3"]),
    ]


def test_layout_guards_each_static_field_and_builds_runs() -> None:
    exprs = [f"{path} == {VALUES[path][-1]} && debit.balance > 0" for path in STATIC]
    exprs += [
        "transfer.pending", "!transfer.pending",  # bool guards: != 0 / == 0
        "7 == transfer.code", "-5 < transfer.amount", "transfer.code != 3",  # literal left: the operator flips
        f"transfer.amount + {I64} > 0 && transfer.code == 3",  # lowering puts the guard before the sum
        "transfer.amount + 1 > 5",  # a sum is no guard (it may overflow: unknown)
        "block.height == 3",  # not static: height may not fit int64
        "debit.balance > 5 && transfer.code == 3",  # an account field is costlier: code comes first
    ]
    exprs += [f"transfer.code == {c} && credit.balance > {i}" for i, c in enumerate((3, 1, 3, -1, 0))]  # a run
    exprs += ["transfer.ledger == 1", "transfer.ledger == 2", "transfer.ledger == 1"]  # too short for a run
    layout = _hook(_compile(exprs), []).layout()
    assert [rule for rule, *_ in layout] == list(range(len(exprs)))
    guards = [(f, o, lit) if f >= 0 else None for _, f, o, lit, _ in layout]
    assert guards[:len(STATIC)] == [(FIELD_ID[p], EQ, VALUES[p][-1]) for p in STATIC]
    pending = FIELD_ID["transfer.pending"]
    code, amount = FIELD_ID["transfer.code"], FIELD_ID["transfer.amount"]
    n = len(STATIC)
    assert guards[n:n + 9] == [(pending, NE, 0), (pending, EQ, 0), (code, EQ, 7), (amount, OPERATORS.index(">"), -5),
                               (code, NE, 3), (code, EQ, 3), None, None, (code, EQ, 3)]
    runs = [run for *_, run in layout]
    assert runs[n + 8:n + 14] == [0] * 6  # the code guard of the rule before joins the run
    assert runs[:n + 8] == [-1] * (n + 8) and runs[n + 14:] == [-1] * 3
    assert [lit for _, _, _, lit, run in layout if run == 0] == [3, 3, 1, 3, -1, 0]


def _record(rnd: random.Random, tid: int) -> bytes:
    v = {p: rnd.choice(VALUES[p]) for p in VALUES}
    amount = v["transfer.amount"] if rnd.random() < 0.9 else rnd.choice((I64 + 1, U64, (1 << 128) - 1))
    return encode_transfer(Transfer(
        tid, rnd.randint(1, 4), rnd.randint(5, 8), amount, ledger=v["transfer.ledger"], code=v["transfer.code"],
        flags=v["transfer.flags"], timeout_s=v["transfer.timeout_s"], user_data=v["transfer.user_data"],
        psp_id=v["transfer.psp_id"]))


def _guard(rnd: random.Random, path: str, op: str = "==") -> str:
    lit = rnd.choice(VALUES[path] + EDGES)
    return f"{lit} {op} {path}" if rnd.random() < 0.3 else f"{path} {op} {lit}"


def random_guarded_ruleset(rnd: random.Random) -> CompiledRuleSet | None:
    """Runs of same-field guards (duplicate literals, any order) among single guarded rules and unguarded
    rules that may match, be false or need Python (CEL-only conjuncts, overflowing sums)."""
    exprs: list[str] = []
    while len(exprs) < rnd.randint(4, 24):
        roll = rnd.random()
        if roll < 0.4:
            path = rnd.choice(STATIC)
            for _ in range(rnd.randint(2, 7)):
                rest = [_conjunct(rnd) for _ in range(rnd.choice((0, 0, 1, 2)))]
                exprs.append(" && ".join([_guard(rnd, path), *rest]))
        elif roll < 0.7:
            rest = [_conjunct(rnd) for _ in range(rnd.choice((0, 1, 2)))]
            exprs.append(" && ".join([_guard(rnd, rnd.choice(STATIC), rnd.choice(OPERATORS)), *rest]))
        else:
            exprs.append(" && ".join(_conjunct(rnd) for _ in range(rnd.choice((1, 2)))))
    try:
        return _compile(exprs)
    except RuleSetError:  # e.g. a sum the deploy-time probes find ill-typed
        return None


def compare_guarded(rnd: random.Random, rs: CompiledRuleSet) -> tuple[int, int, int]:
    """(records C decided, handed to Python, rules of dispatch runs) on one batch: C decides as Python."""
    records = [_record(rnd, 100 + i) for i in range(16)]
    view = View({}, set())
    hook = _hook(rs, records)
    in_runs = sum(run >= 0 for *_, run in hook.layout())
    decided = handed = 0
    for i, raw in enumerate(records):
        dra, cra = random_account(rnd, 1), random_account(rnd, 5)
        c = hook.evaluate(i, dra, cra)
        py = rs.fast(TRANSFER_STRUCT.unpack(raw), dra, cra, TS, 7, view)
        if c is None:
            handed += 1
            continue
        assert py == (c, False), (describe(rs.program), hook.layout(), i, c, py)
        decided += 1
    return decided, handed, in_runs


def test_guarded_rule_sets_decide_as_the_python_compiled_form() -> None:
    rnd = random.Random(1818)
    totals = [0, 0, 0]
    for _ in range(150):
        rs = random_guarded_ruleset(rnd)
        if rs is not None:
            totals = [a + b for a, b in zip(totals, compare_guarded(rnd, rs), strict=True)]
    decided, handed, in_runs = totals
    assert decided > handed > 0  # both outcomes occur ...
    assert in_runs > 200  # ... with dispatch runs in play


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_guarded_rule_sets_property(seed: int) -> None:
    rnd = random.Random(seed)
    rs = random_guarded_ruleset(rnd)
    if rs is not None:
        compare_guarded(rnd, rs)


def test_a_rule_before_the_run_that_python_must_decide_still_decides() -> None:
    """First match in rule order: an unguarded rule before the run that C cannot decide hands the record
    over even though a run rule matches; one after the run is never reached when the run matches."""
    run = [f"transfer.code == {c} && transfer.amount > {i}" for i, c in enumerate((3, 7, 3, 9))]
    rs = _compile([f"transfer.amount + {I64 - 100} < 0", *run, "transfer.external_ref.startsWith('x')"])
    small, big = (encode_transfer(Transfer(1, 1, 5, a, ledger=1, code=3)) for a in (50, 500))
    other = encode_transfer(Transfer(2, 1, 5, 50, ledger=1, code=4))
    hook = _hook(rs, [small, big, other])
    dra, cra = random_account(random.Random(1), 1), random_account(random.Random(2), 5)
    assert hook.evaluate(0, dra, cra) == 1  # 50 + (2^63 - 101) fits: rule 0 false; code 3 and 50 > 0: rule 1
    assert hook.evaluate(1, dra, cra) is None  # 500 + (2^63 - 101) overflows: Python decides rule 0 first
    assert hook.evaluate(2, dra, cra) is None  # no run rule for code 4: the CEL-only rule 5 goes to Python
    assert [run for *_, run in hook.layout()] == [-1, 0, 0, 0, 0, -1]


# ---- end to end: both engines, every table ---------------------------------------------------------------

GUARDED_RULES: tuple[tuple[str, str], ...] = (
    (f"transfer.amount + {I64 - 600} > 0 && transfer.ledger == 1", "reject"),  # before the run; overflows > 600
    ("transfer.code == 2 && risk.debit.count_1m >= 3", "reject"),
    ("transfer.code == 3 && transfer.amount > 60", "flag"),
    ("transfer.code == 2 && risk.new_payee", "flag"),
    ("transfer.code == 3 && transfer.external_ref.startsWith('x')", "flag"),  # CEL rest in the run
    ("transfer.code == 7", "hold"),
    ("transfer.code == 3", "flag"),  # after the other code-3 rules: first match wins
    ("transfer.pending && transfer.psp_id == 1", "flag"),
    ("!transfer.pending && transfer.ledger == 1 && risk.psp.count_1m > 10", "flag"),
)
ACCOUNTS = tuple(Account(i, ledger=1, code=1) for i in range(1, 9))


def guarded_workload(pair: RulesPair, seed: int, blocks: int = 8, per_block: int = 40) -> None:
    rnd = random.Random(seed)
    pair.block(Batch(EventKind.CREATE_ACCOUNT, b"".join(encode_account(a) for a in ACCOUNTS)))
    rules = [{"id": f"g{n}", "priority": n, "expr": expr, "action": action,
              **({"code": 40 + n} if action == "reject" else {}),
              **({"hold_timeout_s": 2} if action == "hold" else {})} for n, (expr, action) in enumerate(GUARDED_RULES)]
    pair.block(Batch(EventKind.DEPLOY_RULESET, deploy_record({"name": "guards", "version": 1, "rules": rules})))
    tid = 1000
    for _ in range(blocks):
        transfers = []
        for _ in range(rnd.randint(1, per_block)):
            dr, cr = rnd.sample(range(1, 9), 2)
            transfers.append(Transfer(
                tid, dr, cr, rnd.choice((1, 7, 60, 61, 600, 601, 2000)), ledger=1, code=rnd.choice((1, 2, 3, 5, 7)),
                flags=rnd.choice((0, 0, 0, TF.PENDING)), timeout_s=rnd.choice((0, 0, 4)), psp_id=rnd.choice((0, 1, 2)),
                external_ref=rnd.choice((b"", b"x%d" % tid, b"y%d" % tid))))
            tid += 1
        pair.block(Batch(EventKind.CREATE_TRANSFER, b"".join(encode_transfer(t) for t in transfers)),
                   advance_s=rnd.choice((1, 1, 20, 61)))
    pair.assert_stores_identical()


@pytest.mark.parametrize("seed", range(2))
def test_guarded_rules_both_engines(tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    layouts: list[Any] = []  # the native engine ran the C hook with a dispatch run (observed, not replaced)
    real_hook = risk.Hook

    def observed(*args: Any) -> Any:
        hook = real_hook(*args)
        layouts.append(hook.layout())
        return hook

    monkeypatch.setattr(native_transfers.risk_features, "Hook", observed)
    pair = RulesPair(tmp_path)
    try:
        guarded_workload(pair, seed)
        for code in (Result.OK, Result.RULE_REJECTED, Result.RULE_ERROR):
            assert code in pair.results, f"seed {seed} never produced {code.name}"
    finally:
        pair.close()
    assert layouts and all([run for *_, run in lay] == [-1] + [0] * 6 + [-1, -1] for lay in layouts)


def test_account_fields_read_from_the_engines_account_list(tmp_path: Path) -> None:
    """The C hook fetches the payer's and payee's AccountState from the engine's list only when a rule
    reads a field the balances lack: each side's own code and user_data (distinct per account) decide."""
    pair = RulesPair(tmp_path)
    try:
        pair.block(Batch(EventKind.CREATE_ACCOUNT, b"".join(
            encode_account(Account(i, ledger=1, code=i, user_data=100 + 7 * i)) for i in range(1, 9))))
        rules = [{"id": "a", "priority": 0, "expr": "debit.code == 2 && credit.code > 5", "action": "reject",
                  "code": 71},
                 {"id": "b", "priority": 1, "expr": "debit.user_data > credit.user_data + 10", "action": "flag"},
                 {"id": "c", "priority": 2, "expr": "credit.code == 1 && debit.balance >= 0", "action": "reject",
                  "code": 72}]
        pair.block(Batch(EventKind.DEPLOY_RULESET, deploy_record({"name": "acct", "version": 1, "rules": rules})))
        rnd = random.Random(4)
        transfers = [Transfer(500 + k, *rnd.sample(range(1, 9), 2), 10, ledger=1, code=1) for k in range(60)]
        pair.block(Batch(EventKind.CREATE_TRANSFER, b"".join(encode_transfer(t) for t in transfers)))
        pair.assert_stores_identical()
        assert Result.RULE_REJECTED in pair.results and Result.OK in pair.results
    finally:
        pair.close()
