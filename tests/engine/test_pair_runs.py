"""The pair runs (ledger/pair_runs.py, ledger/_native/pair_runs.c): the C merge against its Python reference,
the per-run filters, a model test of folds and lookups against a Python set (legacy table, overlapping and
empty folds, reopened stores), identical tables from the C and Python merges, the logarithmic run count,
and an aborted fold that must leave lookups right (docs/formats.md, tables pair_runs / pair_run_dir)."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import pair_runs
from ledger.lmdb_store import LmdbStore
from ledger.pair_runs import COUNT, RUN_ID, PairRuns, add_run, merge_pairs
from ledger.schema import Table
from ledger.store import MemoryStore
from tests.engine.test_differential import dump

needs_c = pytest.mark.skipif(pair_runs.c_merge is None, reason="the C extension is not built")


def pk(dr: int, cr: int) -> bytes:
    return dr.to_bytes(16, "little") + cr.to_bytes(16, "little")


def packed(pairs: set[bytes]) -> bytes:
    return b"".join(sorted(pairs))


pair_keys = st.tuples(st.integers(0, 40), st.integers(0, 40)).map(lambda t: pk(*t))


@needs_c
@settings(max_examples=300, deadline=None)
@given(st.lists(pair_keys, max_size=60), st.lists(pair_keys, max_size=60))
def test_the_c_merge_equals_the_python_reference(a: list[bytes], b: list[bytes]) -> None:
    """Sorted inputs with duplicates inside and across them, empty ones: the same bytes, each pair once."""
    ra, rb = b"".join(sorted(a)), b"".join(sorted(b))
    got = pair_runs.c_merge(ra, rb)
    assert got == merge_pairs(ra, rb) == packed(set(a) | set(b))


@needs_c
@pytest.mark.parametrize("merge", ["c", "python"])
def test_both_merges_refuse_unsorted_or_ragged_runs(merge: str) -> None:
    fn = pair_runs.c_merge if merge == "c" else merge_pairs
    with pytest.raises(ValueError, match="not sorted"):
        fn(pk(2, 0) + pk(1, 0), b"")
    with pytest.raises(ValueError, match="not sorted"):
        fn(b"", pk(5, 5) + pk(5, 4))
    with pytest.raises(ValueError, match="32 bytes"):
        fn(pk(1, 1) + b"x", b"")


@needs_c
def test_a_filter_has_no_false_negatives_and_few_false_positives() -> None:
    rnd = random.Random(18)
    members = {rnd.randbytes(32) for _ in range(20000)}
    f = pair_runs.PairFilter(packed(members))
    assert len(f) == len(members) and f.nbytes >= 2 * len(members)  # >= 16 bits per pair
    assert all(f.may(p) for p in members)
    others = [rnd.randbytes(32) for _ in range(50000)]
    fp = sum(f.may(p) for p in others)
    assert fp < 0.01 * len(others)  # about 0.1-0.3 % expected
    hits = pair_runs.filter_hits((f, None, pair_runs.PairFilter(b"")), next(iter(members)))
    assert hits == (0, 1)  # None: no filter, always a hit; the empty run's filter: never


def _store(path: Path) -> LmdbStore:
    return LmdbStore(str(path), map_size_bytes=256 << 20)


def _check_shape(txn: Any) -> list[tuple[int, int]]:
    """The directory is consistent with the chunks, and the merge rule left every run more than twice the run
    three places newer (so at most 3 x (log2(pairs) + 1) runs)."""
    runs = pair_runs.directory(txn)
    for rid, n in runs:
        chunks = list(txn.range(Table.PAIR_RUNS, RUN_ID.pack(rid), RUN_ID.pack(rid + 1)))
        data = b"".join(v for _, v in chunks)
        assert len(data) == 32 * n and all(len(v) <= 32 * pair_runs.CHUNK for _, v in chunks)
        assert all(k[8:] == v[-32:] for k, v in chunks)  # key: run id || the chunk's last pair
        got = pair_runs.split(data)
        assert got == sorted(set(got))  # sorted, each pair once within a run
    counts = [n for _, n in runs]
    width = pair_runs.MERGE_WIDTH
    for i in range(len(counts) - width + 1):  # what the rule leaves: no four newest-to-be it would merge
        assert counts[i] > pair_runs.MERGE_RATIO * counts[i + width - 1], counts
    total = sum(counts)
    assert len(runs) <= (3 * (math.log2(total) + 1) if total else 0)
    return runs


fold_ops = st.lists(st.one_of(
    st.tuples(st.just("fold"), st.lists(pair_keys, max_size=40)),
    st.tuples(st.just("fold"), st.just([])),
    st.tuples(st.just("look"), pair_keys),
    st.tuples(st.just("reopen"), st.none()),
), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(pair_keys, max_size=15), fold_ops)
def test_model_folds_and_lookups_against_a_set(tmp_path_factory: pytest.TempPathFactory,
                                               legacy: list[bytes], ops: list[tuple[str, Any]]) -> None:
    """Random folds (overlapping pairs, empty folds), lookups and reopened stores over a legacy
    ``risk_pairs``: every lookup and the whole stored set equal a Python set, with the C merge and the
    Python merge in two stores that stay byte-identical; the shape stays within the merge rule."""
    root = tmp_path_factory.mktemp("runs")
    merges = {"c": pair_runs.c_merge or merge_pairs, "python": merge_pairs}
    stores = {name: _store(root / name) for name in merges}
    model = set(legacy)
    cache: dict[str, PairRuns | None] = dict.fromkeys(merges)
    try:
        for store in stores.values():
            with store.write() as txn:
                txn.put_many(Table.RISK_PAIRS, [(p, b"") for p in sorted(set(legacy))])
        for op, arg in ops:
            for name, store in stores.items():
                if op == "fold":
                    with store.write() as txn:
                        cache[name] = add_run(txn, packed(set(arg)), cache[name], merges[name])
                elif op == "look":
                    with store.read() as txn:
                        runs = cache[name] or PairRuns.read(txn)
                        cache[name] = runs
                        assert runs.has(txn, arg) == (arg in model)
                        assert (runs.getter(txn)(arg) is not None) == (arg in model)
                        fresh = PairRuns.read(txn, build=False)  # no filters: seeks only
                        assert fresh.has(txn, arg) == (arg in model)
                else:
                    store.close()
                    stores[name] = _store(root / name)
                    cache[name] = None  # a restart: the filters are rebuilt from the store
            if op == "fold":
                model |= set(arg)
        for store in stores.values():
            with store.read() as txn:
                assert PairRuns.read(txn).all_pairs(txn) == model
                _check_shape(txn)
                assert list(txn.range(Table.RISK_PAIRS)) == [(p, b"") for p in sorted(set(legacy))]  # never written
        assert dump(stores["c"]) == dump(stores["python"])
    finally:
        for store in stores.values():
            store.close()


def test_run_count_stays_logarithmic(tmp_path: Path) -> None:
    """400 folds of random sizes (1..600 new pairs, some repeated): at most 3 x (log2(pairs) + 1) runs at
    every step (what the rule guarantees for any sizes) and, for these, about 3 x log4 (fewer than 20), every
    pair found; merges happened (run ids skipped), each merging four runs into one."""
    rnd = random.Random(1818)
    store = _store(tmp_path / "s")
    try:
        everything: list[bytes] = []
        runs: PairRuns | None = None
        worst = 0
        for i in range(400):
            new = {pk(i, j) for j in range(rnd.randrange(1, 600))}
            again = set(rnd.sample(everything, min(len(everything), rnd.randrange(20))))
            with store.write() as txn:
                runs = add_run(txn, packed(new | again), runs)
            everything.extend(new)
            with store.read() as txn:
                worst = max(worst, len(_check_shape(txn)))
        assert worst <= 3 * (math.log2(len(everything)) + 1) and worst < 20, worst
        with store.read() as txn:
            ids = [rid for rid, _ in pair_runs.directory(txn)]
        assert ids[-1] > 400  # one id per fold and one per merge
        with store.read() as txn:
            fresh = PairRuns.read(txn)
            assert all(fresh.has(txn, p) for p in rnd.sample(everything, 2000))
            assert not any(fresh.has(txn, pk(5000 + j, j)) for j in range(2000))
            assert fresh.all_pairs(txn) == set(everything)
    finally:
        store.close()


def _three_runs(txn: Any) -> PairRuns:
    """Runs 1, 2, 3 of 100 pairs each (payers 1, 4, 5): the next fold of more than 50 pairs merges all four."""
    runs = None
    for payer in (1, 4, 5):
        runs = add_run(txn, packed({pk(payer, i) for i in range(100)}), runs)
    assert runs is not None and [rid for rid, _ in runs.runs] == [1, 2, 3]
    return runs


def test_an_aborted_fold_changes_neither_the_store_nor_the_committed_filters(tmp_path: Path) -> None:
    """A fold whose transaction aborts writes run N with pairs X; the retried fold writes run N with other
    pairs Y. A filter of the aborted run kept under id N would hide Y's pairs: lookups must find Y, not X."""
    store = _store(tmp_path / "s")
    try:
        with store.write() as txn:
            committed = _three_runs(txn)
        with store.read() as txn:
            assert committed.has(txn, pk(4, 7))  # the committed runs' filters are built
        before = dict(committed.filters)
        assert sorted(before) == [1, 2, 3]
        with pytest.raises(OSError, match="injected"), store.write() as txn:
            pending = add_run(txn, packed({pk(2, i) for i in range(300)}), committed)
            assert [rid for rid, _ in pending.runs] == [5]  # 1..4 merged (100 <= 2 x 300)
            assert pending.has(txn, pk(2, 5))  # the aborted run's filter is built, in the pending runs only
            raise OSError("injected: the commit failed")
        assert committed.filters == before and [rid for rid, _ in committed.runs] == [1, 2, 3]
        with store.read() as txn:
            assert pair_runs.directory(txn) == [(1, 100), (2, 100), (3, 100)]
            assert not committed.has(txn, pk(2, 5))
        with store.write() as txn:
            committed = add_run(txn, packed({pk(3, i) for i in range(300)}), committed)
        with store.read() as txn:
            assert pair_runs.directory(txn) == [(5, 600)]
            assert all(committed.has(txn, pk(3, i)) and committed.has(txn, pk(1, i)) for i in range(100))
            assert not any(committed.has(txn, pk(2, i)) for i in range(300))
            assert txn.get(Table.PAIR_RUN_DIR, RUN_ID.pack(5)) == COUNT.pack(600)
    finally:
        store.close()


@needs_c
@settings(max_examples=200, deadline=None)
@given(st.lists(pair_keys, max_size=130), pair_keys)
def test_the_c_chunk_search_equals_the_python_reference(chunk: list[bytes], probe: bytes) -> None:
    packed_chunk = packed(set(chunk))
    for p in [probe, *chunk[:5]]:
        assert pair_runs.c_chunk_has(packed_chunk, p) == pair_runs.chunk_has_py(packed_chunk, p) == (p in chunk)


@pytest.mark.parametrize("kind", ["lmdb", "memory"])
def test_seek_and_seeker_see_the_open_transactions_writes(tmp_path: Path, kind: str) -> None:
    """The lookups' seek (and the getter's cursor-bound seeker) on both store kinds, inside a write
    transaction that adds and deletes chunks after the seeker was made (as a fold does after lookups)."""
    store: Any = _store(tmp_path / "s") if kind == "lmdb" else MemoryStore()
    try:
        with store.write() as txn:
            _three_runs(txn)
        with store.write() as txn:
            runs = PairRuns.read(txn)
            get = runs.getter(txn)
            assert get(pk(1, 7)) == b"" and get(pk(2, 7)) is None
            after = add_run(txn, packed({pk(2, i) for i in range(300)}), runs)  # merged: runs 1..3 deleted
            assert [rid for rid, _ in after.runs] == [5]
            found = txn.seek(Table.PAIR_RUNS, RUN_ID.pack(1))  # the first key >= run 1: run 5's
            assert found is not None and found[0][:8] == RUN_ID.pack(5)
            assert after.getter(txn)(pk(2, 7)) == b"" and after.getter(txn)(pk(1, 7)) == b""
            assert txn.seeker(Table.PAIR_RUNS)(RUN_ID.pack(6)) is None
    finally:
        store.close()


@needs_c
def test_the_legacy_table_has_a_filter_too_and_keeps_it_across_folds(tmp_path: Path) -> None:
    """A legacy ``risk_pairs`` (never written now) gets one filter, after the runs': an absent pair reads
    neither the runs nor the legacy table (no filter hit), a legacy pair is found, and a fold keeps it."""
    store = _store(tmp_path / "s")
    try:
        legacy = {pk(7, i) for i in range(5000)}
        with store.write() as txn:
            txn.put_many(Table.RISK_PAIRS, [(p, b"") for p in sorted(legacy)])
            runs = add_run(txn, packed({pk(8, i) for i in range(100)}))
        with store.read() as txn:
            runs = PairRuns.read(txn)
            filters = runs.filter_tuple(txn)
            assert len(filters) == 2 and len(filters[1]) == len(legacy)  # run 1, then the legacy table
            absent = [pk(9, i) for i in range(2000)]
            assert sum(bool(pair_runs.filter_hits(filters, p)) for p in absent) < 40
            get = runs.getter(txn)
            assert all(get(p) == b"" for p in legacy) and not any(get(p) for p in absent)
        with store.write() as txn:
            after = add_run(txn, packed({pk(8, i) for i in range(100, 400)}), runs)
        assert after.filters[pair_runs.LEGACY] is runs.filters[pair_runs.LEGACY]
    finally:
        store.close()
