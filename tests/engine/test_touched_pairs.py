"""Payer-payee pairs without a store lookup per transfer (ledger/_native/risk_table.c, issue 18).

A successful transfer whose pair no rule read marks the pair *touched* (committed state unknown, no
lookup); a rule reading ``risk.new_payee`` looks the pair up only when the block has not touched it; seal
puts the touched pairs with no-overwrite. Unit level: the C hook over a RiskTable whose store reader
counts its calls (which pairs are looked up, what reads as seen, commit, abort). End to end: both
engines on real LMDB stores (identical results, headers and every table), the no-overwrite put adding
nothing for pairs already committed, across a restart.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ledger import native, risk, risk_log
from ledger.codec import Batch, encode_account, encode_transfer
from ledger.lmdb_store import _LmdbWrite
from ledger.rules.compiler import compile_ruleset
from ledger.rules.model import parse_ruleset
from ledger.schema import AccountState, Table
from ledger.state import LedgerState
from ledger.types import Account, EventKind, Result, Transfer
from tests.engine.test_rules_differential import RulesPair
from tests.rules.helpers import OPERATOR, deploy_record

pytestmark = pytest.mark.skipif(risk.Hook is None or not native.available(),
                                reason="the C rules hook is not built (no C compiler)")

RULES = {"name": "np", "version": 1, "rules": [
    {"id": "new-big", "expr": "risk.new_payee && transfer.amount > 700", "action": "reject", "code": 30}]}
TS = 1_700_000_000 * 10**9


def pk(dr: int, cr: int) -> bytes:
    return dr.to_bytes(16, "little") + cr.to_bytes(16, "little")


def rec(tid: int, dr: int, cr: int, amount: int) -> bytes:
    return encode_transfer(Transfer(tid, dr, cr, amount, ledger=1, code=1))


class Store:
    """A 'store' of committed pairs whose pair reader records every key it is asked for."""

    def __init__(self, pairs: set[bytes]) -> None:
        self.pairs = pairs
        self.asked: list[bytes] = []

    def get_pair(self, key: bytes) -> bytes | None:
        self.asked.append(key)
        return b"" if key in self.pairs else None

    def begin(self, table: Any) -> None:
        table.begin(lambda k: None, self.get_pair, lambda ks: [None] * len(ks))


def account(aid: int) -> AccountState:
    return AccountState(encode_account(Account(aid, ledger=1, code=1)), 0, 0, 0, 0, 0)


def hook_over(table: Any, records: list[bytes]) -> Any:
    program = compile_ruleset(parse_ruleset(RULES)).program
    return risk.Hook(program, b"".join(records), TS, 5, True, 8, {}, table, set(), {}, [], lambda *a: (-1, False))


def test_a_pair_is_looked_up_only_when_a_rule_reads_it_and_the_block_has_not_paid_it() -> None:
    store = Store({pk(1, 5), pk(3, 7)})  # committed: 1->5 and 3->7
    table = risk.RiskTable(1 << 10, 1 << 10)
    store.begin(table)
    records = [rec(1, 1, 5, 10), rec(2, 2, 6, 10),  # small: the rule stops at the amount, no pair read
               rec(3, 1, 5, 800), rec(4, 2, 6, 800),  # the same pairs again: read, touched earlier -> seen
               rec(5, 3, 7, 800), rec(6, 4, 8, 800)]  # read, not touched: committed / not committed
    hook = hook_over(table, records)
    a, b = account(1), account(5)
    assert hook(0, a, b) and hook(1, a, b)  # no rule matched: both recorded
    assert store.asked == [] and table.sizes()[3:] == (0, 2)  # two touched pairs, no lookup
    assert hook.evaluate(2, a, b) == -1 and hook.evaluate(3, a, b) == -1  # seen: paid earlier in the block
    assert store.asked == []  # a touched pair reads as seen without a lookup
    assert hook.evaluate(4, a, b) == -1  # committed: not a new payee
    assert hook.evaluate(5, a, b) == 0  # not committed: a new payee, the rule matches
    assert store.asked == [pk(3, 7), pk(4, 8)]
    assert table.seen(pk(1, 5)) and table.seen(pk(2, 6)) and table.seen(pk(3, 7)) and not table.seen(pk(4, 8))
    assert len(store.asked) == 2  # all answered from the table
    assert hook(4, a, b)  # read (present) and recorded: nothing to write for it
    assert table.pair_rows() == []
    assert table.touched_pair_rows() == [(pk(1, 5), b""), (pk(2, 6), b"")]
    table.commit({}, set())
    store.begin(table)  # the next block: touched pairs are present now, the looked-up ones cached
    assert table.seen(pk(1, 5)) and table.seen(pk(2, 6)) and table.seen(pk(3, 7)) and not table.seen(pk(4, 8))
    assert len(store.asked) == 2 and table.sizes()[3:] == (0, 0)
    table.abort()


def test_a_read_absent_pair_paid_later_is_new_and_an_aborted_block_forgets_its_touched_pairs() -> None:
    store = Store(set())
    table = risk.RiskTable(1 << 10, 1 << 10)
    store.begin(table)
    assert not table.seen(pk(4, 8))  # a Python path asked: looked up, absent
    hook = hook_over(table, [rec(1, 4, 8, 10), rec(2, 9, 10, 10)])
    a, b = account(1), account(5)
    assert hook(0, a, b) and hook(1, a, b)
    assert store.asked == [pk(4, 8)]
    assert table.pair_rows() == [(pk(4, 8), b"")]  # known absent: inserted as before
    assert table.touched_pair_rows() == [(pk(9, 10), b"")]  # never looked up: no-overwrite
    table.abort()
    store.begin(table)
    assert table.pair_rows() == [] and table.touched_pair_rows() == [] and table.sizes()[3:] == (0, 0)
    assert not table.seen(pk(9, 10)) and not table.seen(pk(4, 8))  # forgotten: unknown, looked up again
    assert store.asked == [pk(4, 8), pk(9, 10)]  # 4->8 stays a cached "absent"
    table.abort()


def test_the_block_lists_only_its_own_pairs_across_map_growth_commit_and_abort() -> None:
    """Seal and settle read the block's list of new / touched pairs, not the whole map: a map that
    grows past its first capacity (4096) inside a block still yields exactly the block's pairs, and the
    next block starts with an empty list (commit: present, abort: forgotten)."""
    store = Store(set())
    table = risk.RiskTable(1 << 16, 1 << 16)
    a, b = account(1), account(5)
    for blk in range(3):  # committed blocks: 2000 touched pairs each, the map grows across them
        store.begin(table)
        records = [rec(i, 100 + blk, 1000 + i, 10) for i in range(2000)]
        hook = hook_over(table, records)
        assert all(hook(i, a, b) for i in range(len(records)))
        assert table.touched_pair_rows() == sorted((pk(100 + blk, 1000 + i), b"") for i in range(2000))
        assert table.pair_rows() == []
        table.commit({}, set())
    store.begin(table)  # a block that grows the map past 8192 entries, then aborts
    assert not table.seen(pk(7, 7))  # looked up absent, then paid: new
    records = [rec(1, 7, 7, 10)] + [rec(2 + i, 200, 1000 + i, 10) for i in range(5000)]
    records += [rec(9000, 100, 1000, 10)]  # committed in the first block: nothing for this one
    hook = hook_over(table, records)
    assert all(hook(i, a, b) for i in range(len(records)))
    assert table.pair_rows() == [(pk(7, 7), b"")]
    assert table.touched_pair_rows() == sorted((pk(200, 1000 + i), b"") for i in range(5000))
    assert table.sizes()[3:] == (1, 5000)
    table.abort()
    store.begin(table)
    assert table.pair_rows() == [] and table.touched_pair_rows() == [] and table.sizes()[3:] == (0, 0)
    assert table.seen(pk(100, 1000)) and not table.seen(pk(200, 1000)) and not table.seen(pk(7, 7))
    table.abort()


@pytest.fixture
def rules_pair(tmp_path: Path) -> Iterator[RulesPair]:
    p = RulesPair(tmp_path)
    p.block(Batch(EventKind.CREATE_ACCOUNT, b"".join(encode_account(Account(i, ledger=1, code=1))
                                                      for i in range(1, 9))))
    p.block(Batch(EventKind.DEPLOY_RULESET, deploy_record(RULES)))
    yield p
    p.close()


def pay(p: RulesPair, rows: list[tuple[int, int, int, int]]) -> None:
    p.block(Batch(EventKind.CREATE_TRANSFER, b"".join(rec(*row) for row in rows)))


def test_committed_pairs_touched_again_write_nothing_and_both_engines_agree(
        rules_pair: RulesPair, monkeypatch: pytest.MonkeyPatch) -> None:
    """Block 1 pays 1->2 and 3->4 (small: touched). After a restart of the native ledger, block 2 pays 1->2
    again (touched, already committed), reads 1->2 (seen), 5->6 (new: rejected) and 3->4 (committed). The
    journal folds every block here. Each fold writes its distinct pairs as a run without looking anything
    up (block 2's run repeats block 1's pairs; two runs, fewer than the four a merge takes, so both stay); a
    lookup of either finds it; the legacy ``risk_pairs`` is never written; every table equals the Python
    engine's."""
    monkeypatch.setattr(risk_log, "FOLD_BLOCKS", 1)
    puts: list[tuple[str, str, int]] = []  # (engine, table, rows given) of the pair tables
    real_put_many = _LmdbWrite.put_many

    def put_many(self: _LmdbWrite, table: str, items: Any, append: bool = False, overwrite: bool = True) -> int:
        items = list(items)
        added = real_put_many(self, table, items, append=append, overwrite=overwrite)
        if table in (Table.RISK_PAIRS, Table.PAIR_RUNS):
            puts.append((native.active(), table, sum(len(v) // 32 for _, v in items)))
        return added

    monkeypatch.setattr(_LmdbWrite, "put_many", put_many)
    pay(rules_pair, [(100, 1, 2, 40), (101, 3, 4, 40)])
    assert ("native", Table.PAIR_RUNS, 2) in puts  # the fold's run: both pairs
    rules_pair.states["native"] = LedgerState(rules_pair.stores["native"], [OPERATOR.verifier])  # a restart
    puts.clear()
    pay(rules_pair, [(102, 1, 2, 40), (103, 1, 2, 800), (104, 5, 6, 800), (105, 3, 4, 800)])
    assert Result.RULE_REJECTED in rules_pair.results  # 5->6: a new payee (the only rejection so far)
    assert [p for p in puts if p[0] == "native"] == [("native", Table.PAIR_RUNS, 2)]  # block 2's run
    rules_pair.assert_stores_identical()
    with rules_pair.stores["native"].read() as txn:
        assert list(txn.range(Table.RISK_PAIRS)) == []
        assert [k for k, _ in txn.range(Table.PAIR_RUN_DIR)] == [(1).to_bytes(8, "big"), (2).to_bytes(8, "big")]
        assert [v for _, v in txn.range(Table.PAIR_RUNS)] == [pk(1, 2) + pk(3, 4)] * 2
