"""The C rules hook (ledger/_native/rules.c) against the Python compiled form and the reference engine.

Two levels. Unit: random rule sets over every lowered field, operator and sum shape, on random records,
account balances and risk states (edge values: int64 bounds, saturation, empty and fresh states,
``history_n`` 0/1/large, an EWMA of 0), evaluated by the C program (``Hook.evaluate``) and by the Python
compiled form (``CompiledRuleSet.fast``) on the same inputs: wherever C decides, it decides what Python
decides; where it hands over (a conjunct CEL must evaluate, an int64 overflow in a sum) the Python form
decides, as on the apply path. End to end: rule sets built to exercise what the lowering distinguishes
(each feature family, overflow edges, lowered and CEL-only rules mixed, first match in precedence
order, deviation at history edges), applied by the Python engine and by the native engine with the C
hook: identical results, leaves, headers, hashes and every LMDB table.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import native, risk
from ledger.apply import native_transfers, transfers
from ledger.codec import TRANSFER_STRUCT, Batch, encode_account, encode_transfer
from ledger.risk import KEY_IN, KEY_OUT, RiskView, encode_state, new_state, psp_key, record_py
from ledger.rules.compiler import FIELDS, CompiledRuleSet, compile_ruleset
from ledger.rules.lowering import NATIVE_FIELDS, describe
from ledger.rules.model import RuleSetError, parse_ruleset
from ledger.schema import AccountState
from ledger.types import Account, EventKind, Result, Transfer
from ledger.types import TransferFlags as TF
from tests.engine.test_rules_differential import RulesPair
from tests.rules.helpers import deploy_record

pytestmark = pytest.mark.skipif(risk.Hook is None or not native.available(),
                                reason="the C rules hook is not built (no C compiler)")

NS = 1_000_000_000
TS = 1_700_000_000 * NS + 17 * NS // 10
I64 = (1 << 63) - 1
U64 = (1 << 64) - 1
INT_FIELDS = [p for p in NATIVE_FIELDS if FIELDS[p][0] == "int"]
BOOL_FIELDS = [p for p in NATIVE_FIELDS if FIELDS[p][0] == "bool"]
LITERALS = (0, 1, 2, 5, 7, 100, 1000, 5000, 10_000, I64 - 1, I64, 1 << 62, 0x7F)
OPS = ("<", "<=", ">", ">=", "==", "!=")


def test_native_fields_are_the_int_and_bool_fields() -> None:
    from ledger._native import _risk

    assert set(NATIVE_FIELDS) == {p for p, (t, _) in FIELDS.items() if t in ("int", "bool")}
    assert len(NATIVE_FIELDS) == len(set(NATIVE_FIELDS)) == _risk.FIELD_COUNT


def test_program_keeps_plans_order_and_leftovers() -> None:
    rs = compile_ruleset(parse_ruleset({"name": "p", "version": 1, "rules": [
        {"id": "a", "expr": "risk.new_payee && transfer.amount + 5 > debit.balance", "action": "flag"},
        {"id": "b", "expr": "transfer.external_ref.startsWith('x') && transfer.code == 3", "action": "flag"},
        {"id": "c", "expr": "!transfer.pending && -7 < risk.amount_dev_bps", "action": "flag"},
    ]}))
    assert describe(rs.program) == [
        (0, False, ["+transfer.amount +5 > +debit.balance", "risk.new_payee"]),  # cheapest first
        (1, True, ["+transfer.code == +3"]),  # the startsWith conjunct is left to CEL
        (2, False, ["!transfer.pending", "-7 < +risk.amount_dev_bps"]),
    ]


# ---- unit level: the C program against the Python compiled form ---------------------------------------


class View(RiskView):
    """Committed risk states and payer-payee pairs, as the Python compiled form reads them."""

    __slots__ = ("pairs", "states")

    def __init__(self, states: dict[bytes, list[int]], pairs: set[bytes]) -> None:
        self.states, self.pairs = states, pairs

    def state(self, key: bytes) -> list[int] | None:
        return self.states.get(key)

    def seen(self, debit_id: bytes, credit_id: bytes) -> bool:
        return debit_id + credit_id in self.pairs


def _side(rnd: random.Random) -> str:
    terms = []
    for k in range(rnd.choice((1, 1, 1, 2, 3))):
        lit = rnd.random() < 0.4
        term = str(rnd.choice(LITERALS)) if lit else rnd.choice(INT_FIELDS)
        if lit and rnd.random() < 0.2:
            term = hex(int(term))
        if k == 0:
            terms.append(("-" if lit and rnd.random() < 0.2 else "") + term)
        else:
            terms.append(rnd.choice(("+", "-")) + " " + term)
    return " ".join(terms)


def _conjunct(rnd: random.Random) -> str:
    roll = rnd.random()
    if roll < 0.12:
        return ("!" if rnd.random() < 0.5 else "") + rnd.choice(BOOL_FIELDS)
    if roll < 0.18:  # not lowerable: CEL decides when the rest of the rule is true
        return rnd.choice(("transfer.external_ref.startsWith('x')", "transfer.amount / 3 >= 2",
                           "(transfer.code == 1 || risk.new_payee)", "size(transfer.external_ref) == 0"))
    return f"{_side(rnd)} {rnd.choice(OPS)} {_side(rnd)}"


def random_ruleset(rnd: random.Random) -> CompiledRuleSet | None:
    rules = [{"id": f"r{i}", "priority": i, "action": "flag",
              "expr": " && ".join(_conjunct(rnd) for _ in range(rnd.choice((1, 1, 2, 3))))}
             for i in range(rnd.randint(1, 8))]
    try:
        return compile_ruleset(parse_ruleset({"name": "u", "version": 1, "rules": rules}))
    except RuleSetError:  # e.g. a sum the deploy-time probes find ill-typed
        return None


def random_state(rnd: random.Random) -> list[int] | None:
    roll = rnd.random()
    if roll < 0.2:
        return None
    st = new_state()
    if roll < 0.3:
        return st  # a fresh state: no history
    ts = TS - rnd.choice((0, 30 * NS, 61 * NS, 3599 * NS, 86_401 * NS, 2 * 86_400 * NS))
    for _ in range(rnd.choice((1, 2, 5))):
        record_py(st, ts, rnd.choice((1, 50, 1000, 10**6, U64, (1 << 70) + 3)))
        ts += rnd.choice((0, NS, 40 * NS))
    if rnd.random() < 0.2:
        st[15] = rnd.choice((0, 1, I64, U64))  # ewma edges
    if rnd.random() < 0.2:
        st[16] = rnd.choice((0, 1, 2, I64 + 1, U64))  # history_n edges
    if rnd.random() < 0.1:
        st[:15] = [rnd.choice((0, 1, U64)) for _ in range(15)]  # window buckets and sums at the edges
    return st


def random_account(rnd: random.Random, aid: int) -> AccountState:
    big = (0, 1, 50, 10**6, I64, I64 + 1, U64, (1 << 128) - 1)
    rec = encode_account(Account(aid, ledger=rnd.choice((1, 2)), code=rnd.choice((1, 7)), flags=rnd.choice((0, 8)),
                                 user_data=rnd.choice((0, 5, I64 + 9, (1 << 128) - 1))))
    return AccountState(rec, *(rnd.choice(big) for _ in range(4)), 0)


def random_record(rnd: random.Random, tid: int) -> bytes:
    amount = rnd.choice((1, 7, 500, 5000, 10**6, I64, I64 + 1, U64, U64 + 1, (1 << 128) - 1))
    return encode_transfer(Transfer(
        tid, rnd.randint(1, 4), rnd.randint(5, 8), amount, ledger=rnd.choice((1, 2)), code=rnd.choice((1, 3, 7)),
        flags=rnd.choice((0, TF.PENDING)), timeout_s=rnd.choice((0, 5)), user_data=rnd.choice((0, 9, I64 + 1)),
        psp_id=rnd.choice((0, 1, 0xFFFFFFFF)), external_ref=rnd.choice((b"", b"x1", b"y2"))))


def table_over(states: dict[bytes, list[int]], pairs: set[bytes] | frozenset[bytes] = frozenset()) -> Any:
    """A C RiskTable opened over a 'store' of these committed states and pairs."""
    table = risk.RiskTable(1 << 10, 1 << 10)
    rows = {k: encode_state(v) for k, v in states.items()}
    table.begin(rows.get, lambda pk: b"" if pk in pairs else None, lambda keys: [rows.get(k) for k in keys])
    return table


def compare_one(rnd: random.Random, rs: CompiledRuleSet) -> tuple[int, int, int]:
    """(records C decided, records it handed to Python, records a rule matched) on one random batch."""
    records = [random_record(rnd, 100 + i) for i in range(12)]
    states = {}
    for aid in range(1, 9):
        for prefix in (KEY_OUT, KEY_IN):
            st = random_state(rnd)
            if st is not None:
                states[prefix + aid.to_bytes(16, "little")] = st
    for psp in (0, 1, 0xFFFFFFFF):
        st = random_state(rnd)
        if st is not None:
            states[psp_key(psp)] = st
    pairs = {rec[16:32] + rec[32:48] for rec in records if rnd.random() < 0.4}
    view = View(states, pairs)
    height = rnd.choice((1, 77, I64))
    decided: list[tuple[int, bool]] = []
    hook = risk.Hook(rs.program, b"".join(records), TS, height, True, 15, {}, table_over(states, pairs), set(), {},
                     decided, lambda *a: (-1, False))
    got_c = got_py = matched = 0
    for i, raw in enumerate(records):
        dra, cra = random_account(rnd, 1), random_account(rnd, 5)
        c = hook.evaluate(i, dra, cra)
        py = rs.fast(TRANSFER_STRUCT.unpack(raw), dra, cra, TS, height, view)
        if c is None:
            got_py += 1
            continue
        assert py == (c, False), (describe(rs.program), i, c, py)
        got_c += 1
        matched += c >= 0
    assert not decided  # evaluate records nothing
    return got_c, got_py, matched


def test_c_program_decides_as_the_python_compiled_form() -> None:
    rnd = random.Random(18)
    totals = [0, 0, 0]
    compiled = 0
    for _ in range(200):
        rs = random_ruleset(rnd)
        if rs is None:
            continue
        compiled += 1
        for k, v in enumerate(compare_one(rnd, rs)):
            totals[k] += v
    decided_c, handed_over, matched = totals
    assert compiled > 150
    assert decided_c > handed_over  # C decides most cases itself (edge literals make many sums overflow) ...
    assert handed_over > 0 and matched > 100  # ... hands over some, and rules do match


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_c_program_property(seed: int) -> None:
    rnd = random.Random(seed)
    rs = random_ruleset(rnd)
    if rs is not None:
        compare_one(rnd, rs)


def test_overflowing_sum_is_left_to_python_and_a_false_conjunct_still_decides() -> None:
    rs = compile_ruleset(parse_ruleset({"name": "o", "version": 1, "rules": [
        {"id": "sum", "priority": 0, "expr": f"transfer.amount + {I64} > 0", "action": "flag"},
        {"id": "false-first", "priority": 1, "expr": f"transfer.code == 9 && transfer.amount + {I64} > 0",
         "action": "flag"},
    ]}))
    rec = encode_transfer(Transfer(1, 1, 2, 10, ledger=1, code=1))
    view = View({}, set())
    hook = risk.Hook(rs.program[:0], rec, TS, 1, True, 0, {}, table_over({}), set(), {}, [], lambda *a: (-1, False))
    dra, cra = random_account(random.Random(1), 1), random_account(random.Random(2), 5)
    assert hook.evaluate(0, dra, cra) == -1  # an empty program: nothing matches
    hook = risk.Hook(rs.program, rec, TS, 1, True, 0, {}, table_over({}), set(), {}, [], lambda *a: (-1, False))
    assert hook.evaluate(0, dra, cra) is None  # 10 + (2^63 - 1) leaves int64: CEL errs, Python decides
    assert rs.fast(TRANSFER_STRUCT.unpack(rec), dra, cra, TS, 1, view) == (0, True)  # rule_error, as before
    rs2 = compile_ruleset(parse_ruleset({"name": "o", "version": 1, "rules": [
        {"id": "false-first", "expr": f"transfer.code == 9 && transfer.amount + {I64} > 0", "action": "flag"}]}))
    hook = risk.Hook(rs2.program, rec, TS, 1, True, 0, {}, table_over({}), set(), {}, [], lambda *a: (-1, False))
    assert hook.evaluate(0, dra, cra) == -1  # code == 9 is false: the rule is false whatever the sum


def test_malformed_programs_are_refused() -> None:
    for bad in (b"\x01", (5).to_bytes(8, "little", signed=True) * 2, b"".join(
            v.to_bytes(8, "little", signed=True) for v in (0, 0, 1, 0, 999, 0))):
        with pytest.raises(ValueError, match="malformed rule program"):
            risk.Hook(bad, b"", TS, 1, True, 0, {}, table_over({}), set(), {}, [], lambda *a: (-1, False))


def test_hook_writes_each_state_where_it_lives() -> None:
    """A key the block's Python dict holds is updated in place there; every other key goes to the C
    overlay (never both); the committed table keeps the committed state until the block commits."""
    recs = [encode_transfer(Transfer(1 + i, 1 + i % 2, 3, 10 * (i + 1), ledger=1, code=1, psp_id=4)) for i in range(3)]
    existing = KEY_IN + (3).to_bytes(16, "little")
    block_list = new_state()
    record_py(block_list, TS - NS, 99)
    block_risk: dict[bytes, list[int]] = {existing: block_list}
    expected: dict[bytes, list[int]] = {existing: list(block_list)}  # before the call
    payer2 = KEY_OUT + (2).to_bytes(16, "little")
    committed = {payer2: new_state()}
    record_py(committed[payer2], TS - 2 * NS, 7)
    table = table_over(committed)
    hook = risk.Hook(b"", b"".join(recs), TS, 1, False, 7, block_risk, table, set(), {}, [], lambda *a: (-1, False))
    dra = cra = random_account(random.Random(3), 1)
    assert all(hook(i, dra, cra) for i in range(3))
    for i, raw in enumerate(recs):
        rec = TRANSFER_STRUCT.unpack(raw)
        for key in (KEY_OUT + rec[1], KEY_IN + rec[2], psp_key(rec[10])):
            base = expected.get(key) or list(committed.get(key) or new_state())
            record_py(base, TS, 10 * (i + 1))
            expected[key] = base
    assert block_risk[existing] is block_list and block_risk == {existing: expected[existing]}  # in place
    rows = table.rows()
    assert [k for k, _ in rows] == sorted(set(expected) - {existing})  # the rest in the overlay, sorted
    assert all(row == encode_state(expected[k]) for k, row in rows)
    assert all(table.state(k) == v for k, v in expected.items() if k != existing)  # the block's view
    table.abort()  # the block failed: its overlay is gone, the committed state is what it was
    table.begin(lambda k: None, lambda pk: None, lambda ks: [None] * len(ks))
    assert table.rows() == [] and table.state(payer2) == committed[payer2]


# ---- end to end: both engines, every table ---------------------------------------------------------------

FEATURE_RULES: tuple[tuple[str, str], ...] = (  # (expr, action): each feature family, sums, bools, order
    (f"transfer.amount + {I64 - 600} > 0 && transfer.code == 2", "reject"),  # overflows for amounts > 600
    ("risk.debit.count_1m >= 3 && risk.debit.sum_1m > 200", "reject"),
    ("risk.credit.count_1h >= 4 && transfer.amount > 5", "flag"),
    ("risk.psp.sum_24h - risk.psp.sum_1h > 100 || transfer.code == 7", "flag"),  # CEL-only
    ("risk.history_n == 1 && risk.amount_dev_bps >= 10000", "flag"),
    ("risk.history_n >= 2 && risk.amount_dev_bps < -5000", "flag"),
    ("risk.amount_ewma > 300 && risk.new_payee", "flag"),
    ("!risk.new_payee && transfer.pending", "hold"),
    ("debit.balance - transfer.amount < -3000", "reject"),
    (f"-{I64} + credit.credits_posted >= -{I64} + 2000", "flag"),
    ("credit.user_data == 5 && debit.code == 1 && block.height > 3", "flag"),
    ("transfer.user_data >= 0x10 && transfer.psp_id != 0", "flag"),
    ("transfer.timeout_s > 0 && transfer.flags == 2", "flag"),
    ("transfer.external_ref.startsWith('x') && transfer.amount >= 60", "reject"),  # mixed: CEL rest
    ("block.timestamp_ns % 2 == 0 && psp.id == 1", "flag"),  # CEL-only (modulo)
    ("transfer.code == 3", "flag"),  # after the code-3 rules above: first match wins
)
E2E_ACCOUNTS = tuple(Account(i, ledger=1, code=1 + (i == 4), user_data=5 * (i % 2)) for i in range(1, 9))


def e2e_workload(pair: RulesPair, seed: int, picks: list[int], blocks: int = 8, per_block: int = 40) -> None:
    rnd = random.Random(seed)
    pair.block(Batch(EventKind.CREATE_ACCOUNT, b"".join(encode_account(a) for a in E2E_ACCOUNTS)))
    rules = [{"id": f"f{n}", "priority": n, "expr": FEATURE_RULES[i][0], "action": FEATURE_RULES[i][1],
              **({"code": 30 + n} if FEATURE_RULES[i][1] == "reject" else {}),
              **({"hold_timeout_s": 2} if FEATURE_RULES[i][1] == "hold" else {})} for n, i in enumerate(picks)]
    pair.block(Batch(EventKind.DEPLOY_RULESET, deploy_record({"name": "e2e", "version": 1, "rules": rules})))
    tid = 1000
    for _ in range(blocks):
        transfers = []
        for _ in range(rnd.randint(1, per_block)):
            dr, cr = rnd.sample(range(1, 9), 2)
            transfers.append(Transfer(
                tid, dr, cr, rnd.choice((1, 7, 60, 300, 600, 601, 2000, 10**5)), ledger=1,
                code=rnd.choice((1, 1, 2, 3, 7)), flags=rnd.choice((0, 0, 0, TF.PENDING)),
                timeout_s=rnd.choice((0, 0, 4)), user_data=rnd.choice((0, 0x20, I64 + 5)),
                psp_id=rnd.choice((0, 1, 2)), external_ref=rnd.choice((b"", b"x%d" % tid, b"y%d" % tid))))
            tid += 1
        pair.block(Batch(EventKind.CREATE_TRANSFER, b"".join(encode_transfer(t) for t in transfers)),
                   advance_s=rnd.choice((1, 1, 20, 61)))
    pair.assert_stores_identical()


@pytest.fixture
def pair(tmp_path: Path) -> Any:
    p = RulesPair(tmp_path)
    yield p
    p.close()


@pytest.mark.parametrize("seed", range(3))
def test_feature_rules_both_engines(pair: RulesPair, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {"hooks": 0, "fallbacks": 0, "by_fallback": 0, "decided": 0}  # observed, not replaced
    real_hook, real_create = risk.Hook, transfers.create_transfer

    def observed(*args: Any) -> Any:  # the real C hook, its Python fallback counted
        *head, fallback = args

        def counted(*a: Any) -> Any:
            verdict = fallback(*a)
            seen["fallbacks"] += 1
            seen["by_fallback"] += verdict[0] != -1
            return verdict

        seen["hooks"] += 1
        return real_hook(*head, counted)

    def create(*args: Any) -> Any:  # a record the hook decided reaches the reference with its verdict
        seen["decided"] += len(args) == 5 and args[4] is not None
        return real_create(*args)

    monkeypatch.setattr(transfers, "create_transfer", create)
    monkeypatch.setattr(native_transfers.risk_features, "Hook", observed)
    e2e_workload(pair, seed, list(range(len(FEATURE_RULES))))
    assert seen["hooks"] and seen["fallbacks"], seen  # CEL-only rules went to Python ...
    assert seen["decided"] - seen["by_fallback"] > 10, seen  # ... and lowered rules were decided in C
    for code in (Result.OK, Result.RULE_REJECTED, Result.RULE_ERROR):
        assert code in pair.results, f"seed {seed} never produced {code.name}"


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32 - 1),
       picks=st.lists(st.integers(0, len(FEATURE_RULES) - 1), min_size=1, max_size=8, unique=True))
def test_feature_rule_subsets_both_engines(tmp_path_factory: pytest.TempPathFactory, seed: int,
                                           picks: list[int]) -> None:
    p = RulesPair(tmp_path_factory.mktemp("lowering-pair"))
    try:
        e2e_workload(p, seed, picks, blocks=4, per_block=25)
    finally:
        p.close()


def test_python_hook_without_the_extension(pair: RulesPair, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the compiled hook (no C compiler for _risk) the Python hook gives the same tables."""
    monkeypatch.setattr(native_transfers.risk_features, "Hook", None)
    e2e_workload(pair, 5, list(range(len(FEATURE_RULES))), blocks=4)


def test_an_input_the_c_hook_cannot_read_is_decided_by_python(pair: RulesPair,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: reading one payer's risk state fails. The C hook hands that record to the Python
    form, whose failure is the result rule_evaluation_failed, as on the Python engine; the rest applies.
    (The Python paths read through SideState.state, the C hook through the risk table's store readers: a
    segment's prefetch that fails is skipped, and the key read alone fails for its record only.)"""
    from ledger.apply.scratch import Committed, SideState
    from ledger.schema import Table

    real_state, real_begin = SideState.state, Committed.begin
    failing_key = KEY_OUT + (3).to_bytes(16, "little")

    def state(self: SideState, key: bytes) -> list[int] | None:
        if key == failing_key:
            raise OverflowError("injected")
        return real_state(self, key)

    def begin(self: Committed, txn: Any) -> Any:
        table = real_begin(self, txn)
        if table is not None:
            get = txn.getter(Table.RISK)

            def failing(key: bytes) -> Any:
                if key == failing_key:
                    raise OverflowError("injected")
                return get(key)

            def failing_many(keys: list[bytes]) -> Any:
                if failing_key in keys:
                    raise OverflowError("injected")
                return txn.get_many(Table.RISK, keys)

            table.begin(failing, txn.getter(Table.RISK_PAIRS), failing_many)
        return table

    pair.block(Batch(EventKind.CREATE_ACCOUNT, b"".join(encode_account(a) for a in E2E_ACCOUNTS)))
    pair.block(Batch(EventKind.DEPLOY_RULESET, deploy_record({"name": "f", "version": 1, "rules": [
        {"id": "fast", "expr": "risk.debit.count_1h > 5", "action": "reject", "code": 40}]})))
    monkeypatch.setattr(SideState, "state", state)
    monkeypatch.setattr(Committed, "begin", begin)
    monkeypatch.setattr(native_transfers, "PREFETCH", True)  # its failure falls back to reading each key
    pair.block(Batch(EventKind.CREATE_TRANSFER, b"".join(
        encode_transfer(Transfer(2000 + i, 2 + (i == 1), 5, 10, ledger=1, code=1)) for i in range(3))))
    pair.assert_stores_identical()
    assert Result.RULE_EVALUATION_FAILED in pair.results and Result.OK in pair.results
