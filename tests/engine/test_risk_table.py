"""Risk states and payer-payee pairs kept in C across blocks (ledger/_native/risk_table.c, ``Committed.table``).

Each test applies the same proposals with the Python engine (no table: ``SideState.risk`` and the Python
caches) and the native one (the C hook writes the table) to two LMDB stores and compares results, headers
and every table byte for byte: a bound small enough to evict every block, a block that fails after the hook
changed states (rolled back), a restart that reads the states back from the store, a key handed between
the C hook and the Python paths (a rule-decided record, a failing linked chain) within one block, the
pair lookups fetched per segment or one by one, and dry runs over the committed state.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ledger import native, risk, risk_log
from ledger.apply import driver, native_transfers, seal
from ledger.codec import TRANSFER_STRUCT, Batch, encode_account, encode_transfer
from ledger.dry_run import dry_run
from ledger.risk import KEY_IN, KEY_OUT, decode_state, psp_key
from ledger.schema import Table
from ledger.state import LedgerState
from ledger.types import Account, EventKind, Result, Transfer
from ledger.types import TransferFlags as TF
from tests.engine.test_rules_differential import RulesPair
from tests.rules.helpers import OPERATOR, deploy_record

pytestmark = pytest.mark.skipif(risk.RiskTable is None or not native.available(),
                                reason="the C risk table is not built (no C compiler)")

ACCOUNTS = [Account(i, ledger=1, code=1) for i in range(1, 13)]
RULES = {"name": "rt", "version": 1, "rules": [  # every tracked key family, pairs, a flag that decides
    {"id": "velocity", "priority": 0, "expr": "risk.debit.count_1m >= 6", "action": "reject", "code": 21},
    {"id": "hot-payee", "priority": 1, "expr": "risk.credit.sum_1h > 4000 && transfer.code == 2", "action": "flag"},
    {"id": "psp", "priority": 2, "expr": "risk.psp.count_1h > 30 && transfer.amount > 500", "action": "flag"},
    {"id": "new-big", "priority": 3, "expr": "risk.new_payee && transfer.amount > 700", "action": "flag"},
    {"id": "spike", "priority": 4, "expr": "risk.history_n >= 2 && risk.amount_dev_bps > 20000", "action": "flag"},
    {"id": "code3", "priority": 5, "expr": "transfer.code == 3", "action": "flag"},
]}


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[RulesPair]:
    p = RulesPair(tmp_path)
    p.block(Batch(EventKind.CREATE_ACCOUNT, b"".join(encode_account(a) for a in ACCOUNTS)))
    p.block(Batch(EventKind.DEPLOY_RULESET, deploy_record(RULES)))
    yield p
    p.close()


def transfers(rnd: random.Random, first_id: int, n: int) -> bytes:
    out = []
    for i in range(n):
        dr, cr = rnd.sample(range(1, 13), 2)
        out.append(encode_transfer(Transfer(first_id + i, dr, cr, rnd.choice((1, 40, 300, 800, 2500)), ledger=1,
                                            code=rnd.choice((1, 1, 2, 3)), psp_id=rnd.choice((0, 1)))))
    return b"".join(out)


def table(pair: RulesPair) -> Any:
    return pair.states["native"]._committed.table


def stored_states(pair: RulesPair) -> dict[bytes, list[int]]:
    """The committed states: ``risk`` overridden by the journal (ledger/risk_log.py)."""
    with pair.stores["native"].read() as txn:
        return {k: decode_state(v) for k, v in risk_log.committed(txn)[0].items()}


def run(pair: RulesPair, seed: int, blocks: int, per_block: int = 30) -> None:
    rnd = random.Random(seed)
    for b in range(blocks):
        pair.block(Batch(EventKind.CREATE_TRANSFER, transfers(rnd, 10_000 * (seed + 1) + 100 * b, per_block)),
                   advance_s=rnd.choice((1, 20, 70)))
    pair.assert_stores_identical()


def test_the_table_is_the_native_ledgers_and_holds_the_committed_states(pair: RulesPair) -> None:
    assert table(pair) is not None
    run(pair, 1, 6)
    cached, changed, _, new_pairs, touched = table(pair).sizes()
    assert changed == 0 and new_pairs == 0 and touched == 0  # nothing of a block is left open between blocks
    states = stored_states(pair)
    assert cached >= len(states) > 12  # payer, payee and PSP keys
    t = table(pair)
    with pair.stores["native"].write() as txn:  # a block that writes nothing: read the table's view
        t.begin(txn.getter(Table.RISK), txn.getter(Table.RISK_PAIRS), lambda ks: txn.get_many(Table.RISK, ks))
        assert all(t.state(k) == v for k, v in states.items())
        assert t.state(KEY_OUT + (99).to_bytes(16, "little")) is None  # no history
        t.abort()
    assert {Result.OK, Result.RULE_REJECTED} <= pair.results


def test_a_bound_that_evicts_every_block_changes_nothing(pair: RulesPair, monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    """Results never depend on the bound: a table of 4 states and 4 pairs, dropped every block but the
    pinned (journaled, not folded) entries, which stay whatever the bound."""
    monkeypatch.setattr(risk, "RISK_TABLE_STATES", 4)
    monkeypatch.setattr(risk, "RISK_TABLE_PAIRS", 4)
    pair.states["native"].reload()  # a new table with the small bounds
    run(pair, 2, 6)
    cached, _, pairs, _, _ = table(pair).sizes()
    pinned_states, pinned_pairs = table(pair).pinned()
    with pair.stores["native"].read() as txn:
        assert len(risk_log.rows(txn)) == 6  # blocks 3..8, one row each: no fold yet (FOLD_BLOCKS 16)
        journal = risk_log.Overlay.read(txn)
    assert pinned_states == len(journal.states) > 4 and pinned_pairs == len(journal.pairs) > 4  # beyond the bounds
    assert cached <= pinned_states + 2 and pairs == pinned_pairs  # trimmed to the pinned ones (+ the newest states)


def test_a_block_that_fails_after_the_hook_is_rolled_back(pair: RulesPair, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure at seal, after the C hook changed states and pairs: the store and the table stay at the
    previous block on both engines, and the block applied again later gives identical stores."""
    run(pair, 3, 2)
    before = stored_states(pair)
    real_seal = seal.seal  # what the driver calls (imported there by name)

    def failing_seal(*args: Any) -> Any:
        blk = args[0]
        if blk.side.table is not None:
            assert blk.side.table.sizes()[1] > 0  # the hook did change states in this block
            assert blk.side.table.sizes()[4] > 0  # and touched pairs without looking them up
        real_seal(*args)
        raise OSError("injected: the disk refused the commit")

    monkeypatch.setattr(driver, "seal", failing_seal)
    batch = Batch(EventKind.CREATE_TRANSFER, transfers(random.Random(33), 50_000, 40))
    pair.block_failing(batch, "injected")
    monkeypatch.setattr(driver, "seal", real_seal)
    assert stored_states(pair) == before
    assert table(pair).sizes()[1] == 0 and table(pair).sizes()[3:] == (0, 0)  # nothing of the block left open
    pair.block(batch, advance_s=5)  # the same block again, now committed
    run(pair, 4, 2)


def test_a_restart_reads_the_states_back_from_the_store(pair: RulesPair) -> None:
    run(pair, 5, 3)
    restarted = LedgerState(pair.stores["native"], [OPERATOR.verifier])
    assert restarted._committed.table.sizes()[0] == 0  # empty: every state comes from the store
    pair.states["native"] = restarted
    run(pair, 6, 3)


def test_a_key_moves_between_the_c_hook_and_the_python_paths_within_a_block(
        pair: RulesPair, monkeypatch: pytest.MonkeyPatch) -> None:
    """One block: the C hook records payers 10 and 11, a rule-decided record (code 3: flag, applied by the
    reference) and a linked chain that fails (its undo log) touch them again, then the C hook once more. A key's
    in-block state is in the table or in SideState.risk, never both, and the rows are the Python engine's."""
    run(pair, 7, 1)
    seen: list[tuple[set[bytes], set[bytes]]] = []
    real = seal._write_risk

    def write_risk(blk: Any) -> None:
        if blk.side.table is not None:
            seen.append(({k for k, _ in blk.side.table.rows()}, set(blk.side.risk)))
        real(blk)

    monkeypatch.setattr(seal, "_write_risk", write_risk)

    def t(tid: int, dr: int, cr: int, amount: int, code: int = 1, flags: int = 0) -> bytes:
        return encode_transfer(Transfer(tid, dr, cr, amount, ledger=1, code=code, flags=flags, psp_id=1))

    pair.block(
        Batch(EventKind.CREATE_TRANSFER, t(900, 10, 2, 10) + t(901, 11, 3, 20)),  # C: payers 10, 11 into the table
        Batch(EventKind.CREATE_TRANSFER, t(902, 4, 5, 7) + t(903, 10, 4, 30, code=3) + t(904, 11, 5, 40)),  # flag
        Batch(EventKind.CREATE_TRANSFER, t(905, 10, 6, 50, flags=TF.LINKED) + t(906, 10, 77, 60)  # chain fails
              + t(907, 11, 7, 70)),
        Batch(EventKind.CREATE_TRANSFER, t(908, 10, 8, 80) + t(909, 12, 10, 90)),  # C again: the Python lists
        advance_s=300)  # the windows of the block before have passed: no velocity rejections
    pair.assert_stores_identical()
    in_table, in_python = seen[-1]
    payers = {KEY_OUT + (a).to_bytes(16, "little") for a in (10, 11)}
    assert payers <= in_python and not payers & in_table  # handed over to Python, and only there
    assert not in_table & in_python and in_table  # disjoint, and the C hook kept others
    assert {Result.LINKED_EVENT_FAILED, Result.OK} <= pair.results


@pytest.mark.parametrize("prefetch", [True, False])
def test_states_and_pairs_fetched_per_segment_or_one_by_one_agree(pair: RulesPair, prefetch: bool,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native_transfers, "PREFETCH", prefetch)
    pair.states["native"].reload()  # nothing cached: every state and pair is read in this run
    run(pair, 8, 4)
    with pair.stores["native"].read() as txn:
        assert len(risk_log.committed(txn)[1]) > 20


def test_dry_runs_see_the_committed_states(pair: RulesPair) -> None:
    run(pair, 9, 3)
    rules = pair.states["native"].rules
    assert rules is not None
    raw = encode_transfer(Transfer(77_777, 1, 2, 300, ledger=1, code=2, psp_id=1))
    got = {}
    for name, store in pair.stores.items():
        with store.read() as txn:
            got[name] = dry_run(txn, rules, raw, pair.now + 10**9, 99)
    assert got["native"] == got["python"]
    act = got["native"].activation
    with pair.stores["native"].read() as txn:
        states = risk_log.committed(txn)[0]
        payer, payee, psp = (states.get(k) for k in (KEY_OUT + TRANSFER_STRUCT.unpack(raw)[1],
                                                     KEY_IN + TRANSFER_STRUCT.unpack(raw)[2], psp_key(1)))
    assert payer is not None and payee is not None and psp is not None  # the dry run had history to see
    assert any(isinstance(v, int) and v > 0 for k, v in act.items() if "risk" in k)


def test_rows_and_pair_rows_come_sorted_and_complete() -> None:
    """The C hook over random ids (every byte varies, keys of 5 and 17 bytes): rows() and pair_rows() give
    every key the block changed once, in byte order, packed as ledger/risk.py encodes them."""
    rnd = random.Random(11)
    ids = [rnd.getrandbits(128) for _ in range(60)] + list(range(1, 12)) + [(1 << 64) + 1, 1 << 120, 256, 65536]
    recs = []
    for i in range(400):
        dr, cr = rnd.sample(ids, 2)
        recs.append(encode_transfer(Transfer(i + 1, dr, cr, rnd.randint(1, 10**6), ledger=1, code=1,
                                             psp_id=rnd.choice((0, 1, 256, 2**32 - 1)))))
    t = risk.RiskTable(1 << 10, 1 << 10)
    t.begin(lambda k: None, lambda pk: None, lambda ks: [None] * len(ks))
    hook = risk.Hook(b"", b"".join(recs), 10**18, 1, False, 15, {}, t, set(), {}, [], lambda *a: (-1, False))
    assert all(hook(i, None, None) for i in range(len(recs)))
    expected: dict[bytes, list[int]] = {}
    for raw in recs:
        rec = TRANSFER_STRUCT.unpack(raw)
        for key in (KEY_OUT + rec[1], KEY_IN + rec[2], psp_key(rec[10])):
            st = expected.setdefault(key, risk.new_state())
            risk.record_py(st, 10**18, rec[3] | rec[4] << 64)
    assert t.rows() == sorted((k, risk.encode_state(v)) for k, v in expected.items())
    assert t.pair_rows() == []  # no rule read a pair: none was looked up, each is touched
    assert t.touched_pair_rows() == sorted({(raw[16:48], b"") for raw in recs})


def test_a_key_changed_again_after_many_blocks_is_a_change_of_its_block() -> None:
    """The table marks a block's changes with an 8-bit epoch: 300 blocks (the mark wraps) where one payer
    moves only in blocks 0, 255 and 299, an abort in block 256: each of its changes is that block's row."""
    t = risk.RiskTable(1 << 10, 1 << 10)
    rare = encode_transfer(Transfer(1, 5, 6, 10, ledger=1, code=1))
    busy = encode_transfer(Transfer(2, 7, 8, 3, ledger=1, code=1))
    rare_key = KEY_OUT + (5).to_bytes(16, "little")
    expected = risk.new_state()
    for block in range(300):
        ts = (block + 1) * 10**9
        t.begin(lambda k: None, lambda pk: None, lambda ks: [None] * len(ks))
        moves = block in (0, 255, 256, 299)
        hook = risk.Hook(b"", rare if moves else busy, ts, 1, False, 1, {}, t, set(), {}, [], lambda *a: (-1, False))
        assert hook(0, None, None)
        keys = [k for k, _ in t.rows()]
        assert (rare_key in keys) == moves
        if block == 256:
            t.abort()  # taken back: the committed state is the one of block 255
            continue
        if moves:
            risk.record_py(expected, ts, 10)
            assert t.state(rare_key) == expected
        t.commit({}, set())
    t.begin(lambda k: None, lambda pk: None, lambda ks: [None] * len(ks))
    assert t.state(rare_key) == expected
