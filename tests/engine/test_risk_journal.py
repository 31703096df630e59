"""The risk journal (ledger/risk_log.py, table ``risk_log``; ledger/_native/risk_journal.c).

Unit level: the C row builder and fold agree byte for byte with the Python reference, malformed rows are
refused. End to end, both engines on real LMDB stores (every table identical, ``risk_log`` included): a
restart between folds (store closed and reopened: velocity counts continue, a journaled pair is not a new
payee), a fold at each trigger (blocks, states, pairs) with the journal never holding a threshold's worth
and ``risk`` / ``risk_pairs`` equal to the layout without a journal (``FOLD_BLOCKS = 1``) at each fold, a
rule workload with linked chains and rule-decided records compared with that layout after an explicit
fold, an aborted block (no row, no pins, also when it would have folded), a dry run over journaled
state, and one ledger switching engines between blocks (table reloaded from the journal).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ledger import native, risk, risk_log
from ledger.apply import driver
from ledger.codec import Batch, Proposal, encode_account, encode_transfer
from ledger.dry_run import dry_run
from ledger.lmdb_store import LmdbStore
from ledger.pair_runs import PairRuns, directory
from ledger.risk import KEY_OUT, RISK_STRUCT
from ledger.schema import Table
from ledger.state import LedgerState
from ledger.types import Account, EventKind, Result, Transfer
from tests.engine.test_differential import dump
from tests.engine.test_rules_differential import RulesPair, run_workload
from tests.rules.helpers import OPERATOR, deploy_record

needs_table = pytest.mark.skipif(risk.RiskTable is None or not native.available(),
                                 reason="the C risk table is not built (no C compiler)")

RULES = {"name": "journal", "version": 1, "rules": [
    {"id": "velocity", "priority": 0, "expr": "risk.debit.count_1m >= 5", "action": "reject", "code": 21},
    {"id": "new-big", "priority": 1, "expr": "risk.new_payee && transfer.amount > 700", "action": "reject",
     "code": 22},
    {"id": "psp", "priority": 2, "expr": "risk.psp.count_1h > 1000", "action": "flag"},
]}
ACCOUNTS = 12


def rnd_state(rnd: random.Random) -> bytes:
    return RISK_STRUCT.pack(*(rnd.randrange(0, 1 << 64) for _ in range(17)))


def rnd_rows(rnd: random.Random, n: int) -> list[bytes]:
    """Journal rows over a small key space (keys repeat across rows: the fold keeps the latest)."""
    out = []
    for _ in range(n):
        keys = {rnd.choice((b"o", b"i")) + rnd.randrange(30).to_bytes(16, "little") for _ in range(rnd.randrange(12))}
        keys |= {b"p" + rnd.randrange(3).to_bytes(4, "big") for _ in range(rnd.randrange(2))}
        # keys of every length that are prefixes of each other: a shorter key sorts first (docs/formats.md)
        keys |= {b"x" + bytes(rnd.randrange(17)) for _ in range(rnd.randrange(3))}
        pairs = [rnd.randrange(8).to_bytes(16, "little") + rnd.randrange(8).to_bytes(16, "little")
                 for _ in range(rnd.randrange(10))]
        value = risk_log.encode([(k, rnd_state(rnd)) for k in keys], pairs)
        if value is not None:
            out.append(value)
    return out


@needs_table
def test_the_c_row_builder_and_fold_agree_with_the_python_reference() -> None:
    rnd = random.Random(18)
    table = risk.RiskTable(64, 64)
    for _ in range(30):
        states = {rnd.choice((b"o", b"i")) + rnd.randrange(50).to_bytes(16, "little"): list(RISK_STRUCT.unpack(
            rnd_state(rnd))) for _ in range(rnd.randrange(20))}
        states.update({b"x" + bytes(rnd.randrange(17)): list(RISK_STRUCT.unpack(rnd_state(rnd)))
                       for _ in range(rnd.randrange(4))})
        paid = {rnd.randrange(6).to_bytes(16, "little") + rnd.randrange(6).to_bytes(16, "little")
                for _ in range(rnd.randrange(15))}
        table.begin(lambda k: None, lambda k: None, lambda ks: [None] * len(ks))
        got = table.journal(states, paid)
        table.abort()
        assert got == risk_log.encode([(k, RISK_STRUCT.pack(*v)) for k, v in states.items()], paid)
        rows = rnd_rows(rnd, rnd.randrange(1, 6))
        assert table.fold(rows) == risk_log.fold(rows)
    assert table.journal({}, set()) is None  # nothing changed: no row


@needs_table
def test_keys_that_share_long_prefixes_sort_like_the_python_reference() -> None:
    """One payer paying thousands of payees (pair keys that share their first 16 bytes), payees that share
    their low word, and state keys that differ only in their last bytes: the C row and fold keep the
    reference order (the sort orders a run of keys sharing a word by the next word, not by insertion)."""
    rnd = random.Random(7)
    payer = (5).to_bytes(16, "little")
    high = [rnd.getrandbits(64) << 64 for _ in range(3)]
    rows, table = [], risk.RiskTable(64, 64)
    for _ in range(4):
        paid = {payer + rnd.getrandbits(128).to_bytes(16, "little") for _ in range(1500)}
        paid |= {payer + (7 | rnd.choice(high)).to_bytes(16, "little") for _ in range(40)}
        paid |= {rnd.getrandbits(128).to_bytes(16, "little") + payer for _ in range(200)}
        states = {b"o" + bytes(15) + bytes((rnd.randrange(256),)): list(RISK_STRUCT.unpack(rnd_state(rnd)))
                  for _ in range(300)}
        states.update({b"i" + rnd.getrandbits(128).to_bytes(16, "little"): list(RISK_STRUCT.unpack(
            rnd_state(rnd))) for _ in range(300)})
        table.begin(lambda k: None, lambda k: None, lambda ks: [None] * len(ks))
        row = table.journal(states, paid)
        table.abort()
        assert row == risk_log.encode([(k, RISK_STRUCT.pack(*v)) for k, v in states.items()], paid)
        rows.append(row)
    assert table.fold(rows) == risk_log.fold(rows)


@needs_table
@pytest.mark.parametrize("bad", [b"", b"\x01\x00\x00\x00\x00\x00\x00\x00", b"\x00\x00\x00\x00\x01\x00\x00\x00" + b"x",
                                 b"\x01\x00\x00\x00\x00\x00\x00\x00\x12" + bytes(200)])
def test_a_malformed_row_is_refused_by_both(bad: bytes) -> None:
    with pytest.raises(ValueError, match="risk_log row is malformed"):
        risk_log.decode(bad)
    with pytest.raises(ValueError, match="risk_log row is malformed"):
        risk.RiskTable(4, 4).fold([bad])
    with pytest.raises(ValueError, match="risk_log row is malformed"):
        risk.RiskTable(4, 4).load([bad])


@needs_table
def test_one_key_and_one_pair_are_found_in_the_journal_as_the_whole_overlay_has_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """risk_log.state_in / has_pair (the dry run's per-key search, C when built) against the whole
    overlay: the newest row holding a key wins, absent keys and pairs are absent, both paths agree."""
    assert risk.journal_state is not None and risk.journal_has_pair is not None
    rnd = random.Random(19)
    for _ in range(40):
        rows = rnd_rows(rnd, rnd.randrange(0, 6))
        latest: dict[bytes, bytes] = {}
        pairs: set[bytes] = set()
        for value in rows:
            states, prs = risk_log.decode(value)
            latest.update(states)
            pairs.update(prs)
        keys = [k + i.to_bytes(16, "little") for k in (b"o", b"i") for i in range(32)]
        keys += [b"p" + i.to_bytes(4, "big") for i in range(4)]
        probes = [a.to_bytes(16, "little") + b.to_bytes(16, "little") for a in range(9) for b in range(9)]
        for compiled in (True, False):
            if not compiled:
                monkeypatch.setattr(risk, "journal_state", None)
                monkeypatch.setattr(risk, "journal_has_pair", None)
            assert [risk_log.state_in(rows, k) for k in keys] == [latest.get(k) for k in keys]
            assert [risk_log.has_pair(rows, pk) for pk in probes] == [pk in pairs for pk in probes]
            monkeypatch.undo()
    with pytest.raises(ValueError, match="risk_log row is malformed"):
        risk_log.state_in([b"\x01\x00\x00\x00\x00\x00\x00\x00"], b"o" + bytes(16))


def transfer(tid: int, dr: int, cr: int, amount: int, psp: int = 1) -> bytes:
    return encode_transfer(Transfer(tid, dr, cr, amount, ledger=1, code=1, psp_id=psp))


def new_pair(root: Path) -> RulesPair:
    p = RulesPair(root)
    p.block(Batch(EventKind.CREATE_ACCOUNT, b"".join(encode_account(Account(i, ledger=1, code=1))
                                                      for i in range(1, ACCOUNTS + 1))))
    p.block(Batch(EventKind.DEPLOY_RULESET, deploy_record(RULES)))
    return p


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[RulesPair]:
    p = new_pair(tmp_path / "journal")
    yield p
    p.close()


def rows_of(p: RulesPair) -> list[tuple[bytes, bytes]]:
    with p.stores["native"].read() as txn:
        return risk_log.rows(txn)


@needs_table
def test_a_restart_between_folds_continues_the_counts_and_knows_the_journaled_pairs(
        pair: RulesPair, tmp_path: Path) -> None:
    """Payer 1 pays payee 2 four times over two blocks (journaled, not folded); both stores are closed and
    reopened: the fifth payment in the same minute is rejected by velocity, and 1 -> 2 for 800 is not a new
    payee while 1 -> 3 for 800 is."""
    pair.block(Batch(EventKind.CREATE_TRANSFER, transfer(1, 1, 2, 10) + transfer(2, 1, 2, 10)))
    pair.block(Batch(EventKind.CREATE_TRANSFER, transfer(3, 1, 2, 10) + transfer(4, 1, 2, 10)))
    assert len(rows_of(pair)) == 2  # journaled: nothing of it in risk / risk_pairs yet
    with pair.stores["native"].read() as txn:
        assert txn.get(Table.RISK, KEY_OUT + (1).to_bytes(16, "little")) is None
        assert txn.get(Table.RISK_PAIRS, (1).to_bytes(16, "little") + (2).to_bytes(16, "little")) is None
    pair.close()
    for name in native.ENGINES:  # real LMDB closed and reopened, fresh ledgers: the journal read back
        pair.stores[name] = LmdbStore(str(tmp_path / "journal" / name), map_size_bytes=64 << 20)
        pair.states[name] = LedgerState(pair.stores[name], [OPERATOR.verifier])
    pair.block(Batch(EventKind.CREATE_TRANSFER, transfer(5, 4, 2, 800) + transfer(6, 4, 3, 10)), advance_s=0)
    pair.block(Batch(EventKind.CREATE_TRANSFER, transfer(7, 1, 2, 10)), advance_s=0)  # the 5th in the minute
    assert pair.results == {Result.OK, Result.RULE_REJECTED}
    before = set(pair.results)
    pair.results.clear()
    pair.block(Batch(EventKind.CREATE_TRANSFER, transfer(8, 4, 3, 800)), advance_s=61)  # 4 -> 3: journaled
    assert pair.results == {Result.OK}
    pair.block(Batch(EventKind.CREATE_TRANSFER, transfer(9, 5, 3, 800)), advance_s=1)  # 5 -> 3: new
    assert Result.RULE_REJECTED in pair.results and Result.RULE_REJECTED in before
    pair.assert_stores_identical()
    assert len(rows_of(pair)) >= 4


def pay_block(p: RulesPair, rnd: random.Random, first: int, n: int) -> None:
    recs = b"".join(transfer(first + i, *rnd.sample(range(1, ACCOUNTS + 1), 2), rnd.choice((5, 40, 900)),
                             psp=rnd.choice((0, 1, 2))) for i in range(n))
    p.block(Batch(EventKind.CREATE_TRANSFER, recs), advance_s=rnd.choice((1, 20, 70)))


def committed_view(p: RulesPair) -> tuple[dict[bytes, bytes], set[bytes]]:
    with p.stores["native"].read() as txn:
        return risk_log.committed(txn)


def tables(p: RulesPair) -> tuple[list[Any], set[bytes]]:
    """``risk`` and the stored pairs (legacy ``risk_pairs`` and the runs: how folds group them into runs
    differs between the layouts, the set does not)."""
    d = dump(p.stores["native"])
    with p.stores["native"].read() as txn:
        return d[Table.RISK], PairRuns.read(txn).all_pairs(txn)


def without_runs(d: dict[str, Any], store: LmdbStore) -> tuple[dict[str, Any], set[bytes]]:
    """A dump without the run tables, and the stored pairs instead (their grouping depends on the folds)."""
    with store.read() as txn:
        pairs = PairRuns.read(txn).all_pairs(txn)
    return {k: v for k, v in d.items() if k not in (Table.PAIR_RUNS, Table.PAIR_RUN_DIR)}, pairs


@needs_table
@pytest.mark.parametrize("trigger", ["blocks", "states", "pairs"])
def test_a_fold_at_each_trigger_leaves_the_layout_without_a_journal(
        pair: RulesPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trigger: str) -> None:
    """The same blocks with the journal (one threshold small) and without (FOLD_BLOCKS = 1): after every
    block the committed views agree and the journal holds less than each threshold; after each fold
    ``risk`` and the stored pairs equal the layout without a journal."""
    limits = {"blocks": (4, 1 << 30, 1 << 30), "states": (1 << 30, 40, 1 << 30), "pairs": (1 << 30, 1 << 30, 30)}
    plain = new_pair(tmp_path / "plain")
    rnd_j, rnd_p = random.Random(7), random.Random(7)
    folds = 0
    try:
        for b in range(12):
            for name, value in zip(("FOLD_BLOCKS", "FOLD_STATES", "FOLD_PAIRS"), limits[trigger], strict=True):
                monkeypatch.setattr(risk_log, name, value)
            had = len(rows_of(pair))
            pay_block(pair, rnd_j, 1000 * (b + 1), 12)
            monkeypatch.setattr(risk_log, "FOLD_BLOCKS", 1)
            pay_block(plain, rnd_p, 1000 * (b + 1), 12)
            assert committed_view(pair) == committed_view(plain)
            with pair.stores["native"].read() as txn:
                c = risk_log.Counts.read(txn)
            blocks, states, pairs = limits[trigger]
            assert c.blocks < blocks and c.states < states and c.pairs < pairs
            if c.blocks == 0 and had:  # this block folded the journal
                folds += 1
                assert tables(pair) == tables(plain)
        pair.assert_stores_identical()  # the pair runs too: written and merged alike by both engines
        plain.assert_stores_identical()
        assert folds >= 2
        assert len(rows_of(plain)) == 0
        with plain.stores["native"].read() as txn:  # 12 folds: runs merged (ids skipped), a few left
            ids = [rid for rid, _ in directory(txn)]
        assert ids[-1] > len(ids) and len(ids) <= 4
    finally:
        plain.close()


@needs_table
def test_a_rule_workload_equals_the_layout_without_a_journal_after_an_explicit_fold(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Linked chains, rule-decided records, callbacks and every risk feature (test_rules_differential's
    workload): journaled, then folded explicitly, every table equals the run without a journal (the pair
    runs hold the same pairs, grouped by other folds)."""
    runs = {}
    for name, fold_blocks in (("journal", 3), ("plain", 1)):
        monkeypatch.setattr(risk_log, "FOLD_BLOCKS", fold_blocks)
        p = RulesPair(tmp_path / name)
        try:
            run_workload(p, 1818, 8, 25, [1, 2, 3, 4, 5, 8, 9])
            with p.stores["native"].write() as txn:
                risk_log.fold_all(txn)
            runs[name] = without_runs(dump(p.stores["native"]), p.stores["native"])
        finally:
            p.close()
    assert runs["journal"] == runs["plain"]
    assert len(runs["plain"][1]) > 0


@needs_table
@pytest.mark.parametrize("would_fold", [False, True])
def test_an_aborted_block_journals_nothing_and_pins_nothing(
        pair: RulesPair, monkeypatch: pytest.MonkeyPatch, would_fold: bool) -> None:
    pay_block(pair, random.Random(3), 1000, 20)
    pay_block(pair, random.Random(4), 2000, 20)
    table = pair.states["native"]._committed.table
    rows, pinned, before = rows_of(pair), table.pinned(), dump(pair.stores["native"])
    assert len(rows) == 2 and pinned[0] > 0 and pinned[1] > 0
    if would_fold:
        monkeypatch.setattr(risk_log, "FOLD_BLOCKS", 3)
    real_seal = driver.seal

    def failing_seal(*args: Any) -> Any:
        real_seal(*args)
        assert args[0].side.folded == would_fold
        raise OSError("injected: the disk refused the commit")

    monkeypatch.setattr(driver, "seal", failing_seal)
    batch = Batch(EventKind.CREATE_TRANSFER, b"".join(transfer(3000 + i, 1 + i % 11, 12, 5) for i in range(20)))
    pair.block_failing(batch, "injected")
    monkeypatch.setattr(driver, "seal", real_seal)
    assert rows_of(pair) == rows and table.pinned() == pinned and dump(pair.stores["native"]) == before
    pair.block(batch, advance_s=5)  # the same block again, now committed (and folded when due)
    assert len(rows_of(pair)) == (0 if would_fold else 3)
    if would_fold:
        assert table.pinned() == (0, 0)  # folded: nothing pinned
    else:
        assert table.pinned()[1] > pinned[1]  # the block's pairs (payee 12) joined the pinned ones
    pay_block(pair, random.Random(5), 4000, 20)
    pair.assert_stores_identical()


@needs_table
def test_a_dry_run_sees_journaled_state(pair: RulesPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Journaled only (risk empty for the payer): the dry run's risk features equal those over the same
    blocks applied without a journal."""
    plain = new_pair(tmp_path / "plain")
    try:
        for b in range(3):
            pay_block(pair, random.Random(b), 1000 * (b + 1), 15)
            monkeypatch.setattr(risk_log, "FOLD_BLOCKS", 1)
            pay_block(plain, random.Random(b), 1000 * (b + 1), 15)
            monkeypatch.undo()
        rules = pair.states["native"].rules
        assert rules is not None
        raw = transfer(99_999, 3, 4, 300)
        got = []
        for p in (pair, plain):
            for store in p.stores.values():
                with store.read() as txn:
                    got.append(dry_run(txn, rules, raw, p.now + 10**9, 99))
        with pair.stores["native"].read() as txn:
            assert txn.get(Table.RISK, KEY_OUT + (3).to_bytes(16, "little")) is None  # journaled only
        assert got[0] == got[1] == got[2] == got[3]
        act = got[0].activation
        assert act and any(isinstance(v, int) and v > 0 for k, v in act.items() if "risk" in k), act
    finally:
        plain.close()


@needs_table
def test_one_ledger_switching_engines_between_blocks_keeps_the_journal_right(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One ledger whose blocks alternate between the engines (its C table forgotten by a Python block and
    reloaded from risk_log by the next native one; the Python overlay rebuilt from the same transaction)
    ends with every table equal to a ledger that ran native throughout; folds happen in between."""
    monkeypatch.setattr(risk_log, "FOLD_BLOCKS", 5)
    stores = [LmdbStore(str(tmp_path / n), map_size_bytes=64 << 20) for n in ("switching", "native")]
    states = [LedgerState(s, [OPERATOR.verifier]) for s in stores]
    now = 1_700_000_000 * 10**9
    rnd = random.Random(99)
    blocks = [Batch(EventKind.CREATE_ACCOUNT, b"".join(encode_account(Account(i, ledger=1, code=1))
                                                        for i in range(1, ACCOUNTS + 1))),
              Batch(EventKind.DEPLOY_RULESET, deploy_record(RULES))]
    for b in range(14):
        blocks.append(Batch(EventKind.CREATE_TRANSFER, b"".join(
            transfer(1000 * (b + 1) + i, *rnd.sample(range(1, ACCOUNTS + 1), 2), rnd.choice((5, 40, 900)),
                     psp=rnd.choice((0, 1))) for i in range(15))))
    previous = native.active()
    results: list[list[Any]] = [[], []]
    try:
        for n, batch in enumerate(blocks):
            now += 20 * 10**9
            for k, state in enumerate(states):
                native.select("python" if k == 0 and n % 3 == 1 else "native")
                results[k].append(state.apply_block(Proposal(now, (batch,))).batches)
    finally:
        native.select(previous)
    try:
        assert results[0] == results[1]
        assert Result.RULE_REJECTED in {r for bs in results[0] for b in bs for r in b.results}
        assert dump(stores[0]) == dump(stores[1])
    finally:
        for s in stores:
            s.close()
