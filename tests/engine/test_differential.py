"""Both engines on the same workloads: identical results, leaves, block headers, state hashes and
store contents (every table of a real LMDB store).

Workloads are generated (Hypothesis and a seeded corpus): plain, pending, post, void and linked
transfers over a small id space so that retries, conflicting retries, failed chains, limits,
overflows, expiries and unknown accounts all occur; every result code a workload produced is
compared, not only successes.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import native
from ledger.codec import Batch, Proposal, encode_account, encode_transfer
from ledger.lmdb_store import LmdbStore
from ledger.note import Verifier
from ledger.schema import TABLES
from ledger.state import LedgerState
from ledger.store import Store
from ledger.types import U128_MAX, Account, EventKind, Result, Transfer
from ledger.types import AccountFlags as AF
from ledger.types import TransferFlags as TF

pytestmark = pytest.mark.skipif(not native.available(), reason="native engine not built (no C compiler)")

NS = 1_000_000_000
T0 = 1_700_000_000 * NS
ACCOUNTS = (
    Account(1, ledger=1, code=1, flags=AF.DEBITS_MUST_NOT_EXCEED_CREDITS),
    Account(2, ledger=1, code=1, flags=AF.HISTORY),
    Account(3, ledger=1, code=1, flags=AF.CREDITS_MUST_NOT_EXCEED_DEBITS),
    Account(4, ledger=1, code=1),
    Account(5, ledger=2, code=1),
)
ACCOUNT_IDS = (0, 1, 2, 3, 4, 5, 9, (1 << 128) - 1)  # 0, max and 9 (missing) fail
FLAGS = (0, 0, 0, TF.LINKED, TF.PENDING, TF.PENDING | TF.LINKED, TF.POST_PENDING_TRANSFER,
         TF.VOID_PENDING_TRANSFER, TF.POST_PENDING_TRANSFER | TF.VOID_PENDING_TRANSFER, 1 << 15)
AMOUNTS = (0, 1, 7, 100, 10_000, U128_MAX, U128_MAX - 5)


def transfer_from(rnd: random.Random) -> Transfer:
    """Half well-formed transfers between ledger-1 accounts (mostly succeed), half anything."""
    if rnd.random() < 0.5:
        dr, cr = rnd.sample((1, 2, 3, 4), 2)
        return Transfer(id=rnd.randint(1, 60), debit_account_id=dr, credit_account_id=cr, amount=rnd.randint(1, 500),
                        ledger=1, code=1, flags=rnd.choice((0, 0, TF.LINKED, TF.PENDING)), timeout_s=rnd.choice((0, 2)))
    flags = rnd.choice(FLAGS)
    return Transfer(
        id=rnd.choice((0, *range(1, 40))), debit_account_id=rnd.choice(ACCOUNT_IDS),
        credit_account_id=rnd.choice(ACCOUNT_IDS), amount=rnd.choice(AMOUNTS), ledger=rnd.choice((0, 1, 1, 1, 2)),
        code=rnd.choice((0, 1, 1, 1, 2)), flags=flags, pending_id=rnd.choice((0, 0, *range(1, 40))),
        timeout_s=rnd.choice((0, 0, 0, 1, 3)), user_data=rnd.choice((0, 5)),
    )


def workload(seed: int, blocks: int, per_block: int) -> list[list[Transfer]]:
    """Random transfers; about one in eight is an exact resend of an earlier one (a PSP retry)."""
    rnd = random.Random(seed)
    sent: list[Transfer] = []
    out = []
    for _ in range(blocks):
        block = [rnd.choice(sent) if sent and rnd.random() < 0.125 else transfer_from(rnd)
                 for _ in range(rnd.randint(1, per_block))]
        sent.extend(block)
        out.append(block)
    return out


def dump(store: Store) -> dict[str, list[tuple[bytes, bytes]]]:
    with store.read() as txn:
        return {table: list(txn.range(table)) for table in TABLES}


class Pair:
    """The same proposals applied by the Python engine to one store and the native one to another."""

    def __init__(self, root: Path, operator_keys: Sequence[Verifier] = ()) -> None:
        self.stores = {name: LmdbStore(str(root / name), map_size_bytes=64 << 20) for name in native.ENGINES}
        self.states = {name: LedgerState(store, operator_keys) for name, store in self.stores.items()}
        self.now = T0
        self.results: set[int] = set()

    def block(self, batches: tuple[Batch, ...], advance_s: int = 1) -> None:
        self.now += advance_s * NS
        outcomes = {}
        previous = native.active()
        try:
            for name, state in self.states.items():
                assert native.select(name) == name  # really this engine, not a fallback
                outcomes[name] = state.apply_block(Proposal(self.now, batches))
        finally:
            native.select(previous)
        py, nat = outcomes["python"], outcomes["native"]
        assert nat.header == py.header
        assert nat.block_hash == py.block_hash
        assert nat.batches == py.batches
        for b in py.batches:
            self.results.update(b.results)

    def transfers(self, transfers: list[Transfer], advance_s: int = 1) -> None:
        self.block((Batch(EventKind.CREATE_TRANSFER, b"".join(encode_transfer(t) for t in transfers)),), advance_s)

    def assert_stores_identical(self) -> None:
        assert dump(self.stores["native"]) == dump(self.stores["python"])

    def close(self) -> None:
        for store in self.stores.values():
            store.close()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    p = Pair(tmp_path)
    p.block((Batch(EventKind.CREATE_ACCOUNT, b"".join(encode_account(a) for a in ACCOUNTS)),))
    p.transfers([Transfer(100, 4, 2, 1_000_000, ledger=1, code=1), Transfer(101, 3, 4, 1_000, ledger=1, code=1)])
    yield p
    p.close()


@pytest.mark.parametrize("seed", range(4))
def test_seeded_corpus(pair: Pair, seed: int) -> None:
    for i, transfers in enumerate(workload(seed, blocks=25, per_block=30)):
        pair.transfers(transfers, advance_s=1 + i % 3)  # 1-3 s steps: pending timeouts expire
    pair.assert_stores_identical()
    # the corpus reaches the interesting paths, so the comparison above covers them
    for code in (Result.OK, Result.LINKED_EVENT_FAILED, Result.TRANSFER_EXISTS, Result.EXCEEDS_CREDITS,
                 Result.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID, Result.PENDING_TRANSFER_NOT_FOUND,
                 Result.RESERVED_FLAG):
        assert code in pair.results, f"seed {seed} never produced {code.name}"


@settings(max_examples=25)
@given(seed=st.integers(0, 2**32 - 1), blocks=st.integers(1, 6), per_block=st.integers(1, 20))
def test_hypothesis_workloads(tmp_path_factory: pytest.TempPathFactory, seed: int, blocks: int,
                              per_block: int) -> None:
    p = Pair(tmp_path_factory.mktemp("pair"))
    try:
        p.block((Batch(EventKind.CREATE_ACCOUNT, b"".join(encode_account(a) for a in ACCOUNTS)),))
        for transfers in workload(seed, blocks, per_block):
            p.transfers(transfers, advance_s=2)
        p.assert_stores_identical()
    finally:
        p.close()


def test_two_phase_and_expiry(pair: Pair) -> None:
    pair.transfers([Transfer(1, 4, 2, 50, ledger=1, code=1, flags=TF.PENDING, timeout_s=2),
                    Transfer(2, 4, 2, 60, ledger=1, code=1, flags=TF.PENDING),
                    Transfer(3, 4, 2, 70, ledger=1, code=1, flags=TF.PENDING)])
    pair.transfers([Transfer(4, 0, 0, 20, ledger=0, code=0, flags=TF.POST_PENDING_TRANSFER, pending_id=2),
                    Transfer(5, 0, 0, 0, ledger=0, code=0, flags=TF.VOID_PENDING_TRANSFER, pending_id=3)])
    pair.transfers([Transfer(6, 4, 2, 1, ledger=1, code=1)], advance_s=5)  # pending 1 expires first
    pair.transfers([Transfer(7, 0, 0, 0, ledger=0, code=0, flags=TF.POST_PENDING_TRANSFER, pending_id=1)])
    assert Result.PENDING_TRANSFER_EXPIRED in pair.results
    pair.assert_stores_identical()


def test_large_block_many_tree_levels(pair: Pair) -> None:
    """One block of 3000 plain transfers: many Merkle levels complete inside one block."""
    pair.transfers([Transfer(10_000 + i, 4, 2, 1 + i % 9, ledger=1, code=1) for i in range(3000)])
    pair.transfers([Transfer(20_000 + i, 2, 4, 1, ledger=1, code=1, flags=TF.LINKED * (i % 4 != 3))
                    for i in range(1001)])
    pair.assert_stores_identical()
