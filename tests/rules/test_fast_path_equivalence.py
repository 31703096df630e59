"""The fast rules path gives byte-identical results to the plain reference path, in the same run.

Reference path: every transfer through the general ``create_transfer`` (no fast loop), the full
activation and each rule its own CEL program evaluated in order (no compiled form of the rule set),
and the risk window arithmetic as first written (below)."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from bench.rules import _rules
from ledger.apply import transfers
from ledger.apply.scratch import Block, Event
from ledger.codec import TRANSFER_SIZE, Batch, Proposal, encode_account, encode_transfer
from ledger.risk import SUM_MAX, WINDOWS_NS, new_state, record, window_features
from ledger.rules.compiler import _groups, rewrite
from ledger.state import LedgerState
from ledger.store import MemoryStore
from ledger.types import Account, EventKind, Transfer
from tests.rules.helpers import OPERATOR, deploy_record

NS = 1_000_000_000


def reference_features(st: list[int] | None, ts: int) -> tuple[int, ...]:
    if st is None:
        return 0, 0, 0, 0, 0, 0
    counts = [0, 0, 0]
    sums = [0, 0, 0]
    for w, size in enumerate(WINDOWS_NS):
        base = w * 5
        bucket = ts // size
        if bucket == st[base]:
            prev_c, prev_s, cur_c, cur_s = st[base + 1], st[base + 2], st[base + 3], st[base + 4]
        elif bucket == st[base] + 1:
            prev_c, prev_s, cur_c, cur_s = st[base + 3], st[base + 4], 0, 0
        else:
            continue
        remaining = size - (ts - bucket * size)
        counts[w] = prev_c * remaining // size + cur_c
        sums[w] = prev_s * remaining // size + cur_s
    return counts[0], counts[1], counts[2], sums[0], sums[1], sums[2]


def reference_record(st: list[int], ts: int, amount: int) -> None:
    for w, size in enumerate(WINDOWS_NS):
        base = w * 5
        bucket = ts // size
        if bucket != st[base]:
            if bucket == st[base] + 1:
                st[base + 1], st[base + 2] = st[base + 3], st[base + 4]
            else:
                st[base + 1] = st[base + 2] = 0
            st[base], st[base + 3], st[base + 4] = bucket, 0, 0
        st[base + 3] = min(st[base + 3] + 1, SUM_MAX)
        st[base + 4] = min(st[base + 4] + amount, SUM_MAX)
    ewma, n = st[15], st[16]
    amount = min(amount, SUM_MAX)
    st[15] = amount if n == 0 else max(0, ewma + ((amount - ewma) >> 3))
    st[16] = min(n + 1, SUM_MAX)


def test_risk_window_arithmetic_matches_the_reference() -> None:
    rng = random.Random(7)
    for _ in range(300):
        fast, ref = new_state(), new_state()
        ts = rng.randrange(1, 1 << 62)
        for _ in range(rng.randrange(1, 40)):
            ts += rng.choice([0, 1, NS, 30 * NS, 61 * NS, 3599 * NS, 86_401 * NS, rng.randrange(1 << 50)])
            amount = rng.choice([1, 10**6, SUM_MAX - 1, SUM_MAX, (1 << 128) - 1, rng.randrange(1, 1 << 70)])
            assert window_features(fast, ts) == reference_features(ref, ts)
            record(fast, ts, amount)
            reference_record(ref, ts, amount)
            assert fast == ref


def _workload(seed: int, blocks: int, per_block: int, accounts: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    tid = 1
    for _ in range(blocks):
        recs = []
        for _ in range(per_block):
            d = rng.randint(1, accounts)
            c = rng.choice([x for x in range(1, accounts + 1) if x != d])
            code = rng.choice([1, 1, 1, *range(1000, 1015)])
            amount = rng.choice([rng.randint(1, 1000), 200_000_000])
            recs.append(encode_transfer(Transfer(tid, d, c, amount, 1, code, psp_id=rng.randint(1, 3))))
            tid += 1
        out.append(b"".join(recs))
    return out


def _general_path_only(blk: Block, recs: list[Any], records: bytes, sigs: list[bytes], events: list[Event]) -> None:
    for i, rec in enumerate(recs):
        raw = records[i * TRANSFER_SIZE : (i + 1) * TRANSFER_SIZE]
        events.append(transfers.create_transfer(blk, rec, raw, sigs[i] if sigs else b""))


@contextmanager
def _reference(state: LedgerState, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each rule its own program; the fast loop bypassed."""
    rules = state.rules
    assert rules is not None
    single = _groups(rules.rules, [rewrite(r.expr)[0] for r in rules.rules], size=1)
    plain = dataclasses.replace(rules, groups=single)
    state.rules = dataclasses.replace(plain, fast=plain.decide_reference)  # no compiled form either
    with monkeypatch.context() as m:
        m.setattr(transfers, "_apply_unlinked", _general_path_only)
        yield


def _run(workload: list[bytes], reference: bool, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    store = MemoryStore()
    state = LedgerState(store, [OPERATOR.verifier])
    ts = 1_700_000_000 * NS
    doc = {"name": "eq", "version": 1, "rules": _rules(20)}
    state.apply_block(Proposal(ts, (Batch(EventKind.CREATE_ACCOUNT, b"".join(
        encode_account(Account(i, 1, 1)) for i in range(1, 31))), Batch(EventKind.DEPLOY_RULESET, deploy_record(doc)))))
    results = []
    with _reference(state, monkeypatch) if reference else contextmanager(lambda: iter([None]))():
        for n, recs in enumerate(workload):
            out = state.apply_block(Proposal(ts + (n + 1) * 7 * NS, (Batch(EventKind.CREATE_TRANSFER, recs),)))
            results.append(out.batches[0].results)
    with store.read() as txn:
        tables = {t: list(txn.range(t)) for t in ("leaves", "blocks", "accounts", "risk", "risk_pairs",
                                                   "exceptions", "transfers", "expiry")}
    return {"results": results, "head": state.head, "tables": tables}


def test_fast_rules_path_matches_the_reference_path(monkeypatch: pytest.MonkeyPatch) -> None:
    workload = _workload(3, blocks=6, per_block=300, accounts=30)
    fast = _run(workload, reference=False, monkeypatch=monkeypatch)
    ref = _run(workload, reference=True, monkeypatch=monkeypatch)
    outcomes = {r for block in fast["results"] for r in block}
    assert len(outcomes) > 1 and fast["tables"]["exceptions"], "the workload must make rules decide something"
    assert fast["results"] == ref["results"]
    assert fast["head"] == ref["head"]
    for name, rows in fast["tables"].items():
        assert rows == ref["tables"][name], name
