"""The schema module: every table named once, key codecs that order as documented."""

from __future__ import annotations

from ledger import schema
from ledger.schema import TABLES, Table, expiry_key, expiry_transfer_id, history_key, history_leaf_key, id_key
from ledger.store import MemoryStore


def test_every_table_is_listed_once_and_the_store_opens_them() -> None:
    names = [v for k, v in vars(Table).items() if k.isupper()]
    assert sorted(names) == sorted(TABLES)
    assert len(set(TABLES)) == len(TABLES)
    store = MemoryStore()
    with store.write() as txn:
        for name in TABLES:
            txn.put(name, b"k", b"v")
    with store.read() as txn:
        assert all(txn.get(name, b"k") == b"v" for name in TABLES)


def test_id_keys_order_ids_numerically() -> None:
    ids = [n.to_bytes(16, "little") for n in (1, 255, 256, 2**64, 2**127 + 3)]
    keys = [id_key(i) for i in ids]
    assert keys == sorted(keys)
    assert [int.from_bytes(k, "big") for k in keys] == [1, 255, 256, 2**64, 2**127 + 3]


def test_composite_keys_split_back() -> None:
    tid = bytes(range(16))
    assert expiry_transfer_id(expiry_key(123, tid)) == tid
    leaf = schema.index_key(77)
    assert history_leaf_key(history_key(tid, leaf)) == leaf
    assert schema.decode_index(leaf) == 77
    assert schema.scale_ledger(schema.scale_key(700)) == 700
