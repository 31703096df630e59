"""One contract, two stores: MemoryStore and LmdbStore must behave identically."""

from __future__ import annotations

import pytest

from ledger.invariant import InvariantViolation
from ledger.lmdb_store import LmdbStore
from ledger.store import MemoryStore, Store, StoreFull


def test_put_get_and_atomic_commit(any_store: Store) -> None:
    with any_store.write() as w:
        w.put("meta", b"a", b"1")
        w.put_many("leaves", [(b"\x00" * 7 + bytes([i]), bytes([i])) for i in range(5)], append=True)
        assert w.get("meta", b"a") == b"1"  # a write txn sees its own writes
    with any_store.read() as r:
        assert r.get("meta", b"a") == b"1"
        assert r.get("meta", b"missing") is None
        assert r.get_many("leaves", [b"\x00" * 7 + b"\x01", b"nope"]) == [b"\x01", None]


def test_exception_discards_the_whole_transaction(any_store: Store) -> None:
    with any_store.write() as w:
        w.put("meta", b"k", b"old")
    with pytest.raises(RuntimeError), any_store.write() as w:
        w.put("meta", b"k", b"new")
        w.put("accounts", b"x", b"y")
        raise RuntimeError("boom")
    with any_store.read() as r:
        assert r.get("meta", b"k") == b"old"
        assert r.get("accounts", b"x") is None


def test_range_is_ordered_half_open_and_limited(any_store: Store) -> None:
    with any_store.write() as w:
        for k in (b"b", b"a", b"d", b"c", b"e"):
            w.put("history", k, k.upper())
        w.delete("history", b"d")
    with any_store.read() as r:
        assert [k for k, _ in r.range("history")] == [b"a", b"b", b"c", b"e"]
        assert list(r.range("history", b"b", b"e")) == [(b"b", b"B"), (b"c", b"C")]
        assert [k for k, _ in r.range("history", b"a", None, 2)] == [b"a", b"b"]
        assert r.last("history") == (b"e", b"E")
        assert r.last("blocks") is None
        assert list(r.range("history", b"f")) == []


def test_an_out_of_order_append_fails_the_transaction_instead_of_dropping_rows(any_store: Store) -> None:
    """LMDB's MDB_APPEND silently skips a key at or below the last one; the store must refuse instead."""
    with any_store.write() as w:
        w.put_many("nodes", [(b"\x00b", b"1"), (b"\x00c", b"2")], append=True)
    for rows in ([(b"\x00a", b"3")], [(b"\x00d", b"4"), (b"\x00d", b"5")], [(b"\x00c", b"6")]):
        with pytest.raises(InvariantViolation, match="out of key order"), any_store.write() as w:
            w.put_many("nodes", rows, append=True)
    with any_store.read() as r:
        assert list(r.range("nodes")) == [(b"\x00b", b"1"), (b"\x00c", b"2")]  # the failed txns left nothing


def test_put_many_without_overwrite_inserts_only_missing_keys(any_store: Store) -> None:
    """overwrite=False (LMDB's MDB_NOOVERWRITE): a key already stored or put earlier in the same transaction
    keeps its value and is not counted; a missing one (or one deleted in this transaction) is inserted."""
    with any_store.write() as w:
        assert w.put_many("risk_pairs", [(b"a", b"1"), (b"c", b"3"), (b"e", b"5")]) == 3
    with any_store.write() as w:
        w.put("risk_pairs", b"b", b"2")
        w.delete("risk_pairs", b"e")
        rows = [(b"a", b"x"), (b"b", b"x"), (b"d", b"x"), (b"d", b"y"), (b"e", b"x"), (b"f", b"x")]
        assert w.put_many("risk_pairs", rows, overwrite=False) == 3  # d (once), e, f
        assert w.get("risk_pairs", b"a") == b"1" and w.get("risk_pairs", b"d") == b"x"
    with any_store.read() as r:
        assert list(r.range("risk_pairs")) == [(b"a", b"1"), (b"b", b"2"), (b"c", b"3"), (b"d", b"x"),
                                               (b"e", b"x"), (b"f", b"x")]
    with pytest.raises(InvariantViolation, match="append"), any_store.write() as w:
        w.put_many("risk_pairs", [(b"z", b"")], append=True, overwrite=False)


def test_unknown_table_is_an_error(any_store: Store) -> None:
    with pytest.raises(KeyError), any_store.read() as r:
        r.get("nope", b"x")


def test_lmdb_map_full_is_store_full_and_keeps_committed_data(tmp_path: object) -> None:
    store = LmdbStore(str(tmp_path), map_size_bytes=1 << 20)
    with store.write() as w:
        w.put("meta", b"kept", b"yes")
    with pytest.raises(StoreFull, match="map_size_bytes"), store.write() as w:
        for i in range(10_000):
            w.put("leaves", i.to_bytes(8, "big"), b"x" * 500)
    with store.read() as r:
        assert r.get("meta", b"kept") == b"yes"
        assert r.get("leaves", (0).to_bytes(8, "big")) is None
    store.close()


def test_memory_capacity_is_store_full() -> None:
    store = MemoryStore(capacity_bytes=1000)
    with pytest.raises(StoreFull), store.write() as w:
        w.put("leaves", b"k", b"x" * 2000)
    with store.read() as r:
        assert r.get("leaves", b"k") is None


def test_get_many_in_a_write_txn_sees_its_own_writes_in_key_order(any_store: Store) -> None:
    keys = [bytes([i]) * 16 for i in range(40)]
    with any_store.write() as w:
        w.put_many("transfers", [(k, k[:3]) for k in keys[::3]])
        asked = [*keys[::-1], b"\xff" * 16]  # more than a handful (one cursor walk), not in key order
        assert w.get_many("transfers", asked) == [k[:3] if i % 3 == 0 else None for i, k in
                                                  reversed(list(enumerate(keys)))] + [None]
        missing = [bytes([0xEE, i]) * 8 for i in range(12)]
        assert w.get_many("transfers", missing) == [None] * 12


def test_last_inside_a_write_sees_its_own_puts_and_deletes(any_store: Store) -> None:
    with any_store.write() as w:
        w.put_many("history", [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")])
    with any_store.write() as w:
        assert w.last("history") == (b"c", b"3")
        w.delete("history", b"c")
        assert w.last("history") == (b"b", b"2")
        w.delete("history", b"b")
        w.put("history", b"a", b"new")
        assert w.last("history") == (b"a", b"new")
        w.put("history", b"d", b"4")
        assert w.last("history") == (b"d", b"4")
        w.delete("history", b"a")
        w.delete("history", b"d")
        assert w.last("history") is None
