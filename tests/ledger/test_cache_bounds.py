"""The committed-state caches of the ledger are bounded, and evicting from them changes nothing:
two real LMDB ledgers, one with tiny cache limits, apply the same blocks to identical heads."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients.workload import TransferGenerator, account_records
from ledger.apply import scratch
from ledger.codec import TRANSFER_SIZE, Batch, Proposal
from ledger.lmdb_store import LmdbStore
from ledger.state import LedgerState
from ledger.types import AccountFlags, EventKind, Result

ACCOUNTS = 60


def _blocks() -> list[Proposal]:
    half = ACCOUNTS // 2  # half with the debit limit (some transfers fail), half without (balances move)
    accts = (account_records(half, first_id=1, flags=int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS))
             + account_records(ACCOUNTS - half, first_id=half + 1))
    out = [Proposal(1_000, (Batch(EventKind.CREATE_ACCOUNT, accts),))]
    recs, _ = TransferGenerator(ACCOUNTS, seed=5).records(3000)
    step = 100 * TRANSFER_SIZE
    for i, off in enumerate(range(0, len(recs), step)):
        out.append(Proposal(2_000 + i, (Batch(EventKind.CREATE_TRANSFER, recs[off:off + step]),)))
    return out


def _run(path: Path) -> tuple[LedgerState, list[tuple[int, ...]]]:
    state = LedgerState(LmdbStore(str(path), 1 << 28))
    results = [tuple(r for b in state.apply_block(p).batches for r in b.results) for p in _blocks()]
    return state, results


def test_evicting_committed_accounts_changes_no_result_and_no_byte(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    wide, wide_results = _run(tmp_path / "wide")
    assert len(wide._committed.accounts) == ACCOUNTS
    monkeypatch.setattr(scratch, "ACCOUNTS_CACHE_MAX", 8)
    monkeypatch.setattr(scratch, "RISK_CACHE_MAX", 8)
    tight, tight_results = _run(tmp_path / "tight")
    assert len(tight._committed.accounts) <= 8
    assert tight_results == wide_results
    flat = [r for rs in wide_results[1:] for r in rs]
    assert Result.OK in flat and any(r != Result.OK for r in flat)  # balances moved, limits were hit
    assert tight.head == wide.head  # block hash, chain head, state hash, tree size
    for aid in (i.to_bytes(16, "little") for i in range(1, ACCOUNTS + 1)):
        a, b = tight.account(aid), wide.account(aid)
        assert a is not None and b is not None and a.encode() == b.encode()
