"""The risk table's open addressing (ledger/_native/risk_table.c): a slot holds (hash tag << 32 | index) and
a key's first slot is picked by the tag, so a growing map re-adds its slots from the tags alone. Keys whose
tags are equal always start at the same slot at every map size; these tests find such keys (the table's
own hash, ``_risk.key_hash``) and check both maps tell them apart, across growth, commit and abort."""

from __future__ import annotations

from typing import Any

import pytest

from ledger import native, risk
from ledger.codec import TRANSFER_STRUCT, encode_account, encode_transfer
from ledger.risk import KEY_OUT
from ledger.schema import AccountState
from ledger.types import Account, Transfer

pytestmark = pytest.mark.skipif(risk.Hook is None or not native.available(),
                                reason="the C rules hook is not built (no C compiler)")

TS = 1_700_000_000 * 10**9


def key_hash(key: bytes) -> int:
    from ledger._native import _risk
    return _risk.key_hash(key)


def same_tag(keys: list[bytes]) -> tuple[bytes, bytes]:
    """Two of keys whose hashes share the high 32 bits (a birthday search)."""
    seen: dict[int, bytes] = {}
    for k in keys:
        tag = key_hash(k) >> 32
        if tag in seen:
            return seen[tag], k
        seen[tag] = k
    raise AssertionError("no two keys share a tag: search more keys")


def pk(dr: int, cr: int) -> bytes:
    return dr.to_bytes(16, "little") + cr.to_bytes(16, "little")


def rec(tid: int, dr: int, cr: int, amount: int) -> bytes:
    return encode_transfer(Transfer(tid, dr, cr, amount, ledger=1, code=1))


def account(aid: int) -> AccountState:
    return AccountState(encode_account(Account(aid, ledger=1, code=1)), 0, 0, 0, 0, 0)


def run(table: Any, records: list[bytes]) -> None:
    """The C hook over records with no rule: each one's risk states and pair recorded."""
    hook = risk.Hook(b"", b"".join(records), TS, 1, False, 15, {}, table, set(), {}, [], lambda *a: (-1, False))
    a, b = account(1), account(2)
    assert all(hook(i, a, b) for i in range(len(records)))


def test_the_hash_is_the_tables_and_spreads_keys() -> None:
    assert key_hash(pk(1, 2)) == key_hash(pk(1, 2)) != key_hash(pk(2, 1))
    assert len({key_hash(pk(1, c)) >> 32 for c in range(4096)}) > 4090
    with pytest.raises(TypeError):
        key_hash("x")  # type: ignore[arg-type]


def test_pairs_sharing_a_tag_stay_apart_across_growth_commit_and_abort() -> None:
    a, b = same_tag([pk(1, c) for c in range(2, 400_000)])
    assert a != b and key_hash(a) >> 32 == key_hash(b) >> 32
    asked: list[bytes] = []

    def get_pair(key: bytes) -> bytes | None:
        asked.append(key)
        return None

    table = risk.RiskTable(1 << 16, 1 << 16)
    table.begin(lambda k: None, get_pair, lambda ks: [None] * len(ks))
    run(table, [rec(1, 1, int.from_bytes(a[16:], "little"), 5)])  # a touched: no lookup
    assert asked == [] and table.touched_pair_rows() == [(a, b"")]
    table.commit({}, set())
    table.begin(lambda k: None, get_pair, lambda ks: [None] * len(ks))
    assert not table.seen(b) and asked == [b]  # the same first slot as a: told apart by the key
    assert table.seen(a) and asked == [b]
    others = [pk(3, c) for c in range(10_000)]  # the map grows from 4096 to 16384 entries in this block
    run(table, [rec(10 + i, 3, c, 5) for i, c in enumerate(range(10_000))]
        + [rec(1, 1, int.from_bytes(b[16:], "little"), 5)])
    assert table.pair_rows() == [(b, b"")]  # b: looked up absent, then paid: new
    assert table.touched_pair_rows() == sorted((k, b"") for k in others)
    assert table.seen(a) and table.seen(b) and all(table.seen(k) for k in others[::97])
    table.abort()  # a kept (committed); b absent again (its lookup stays); the touched others unknown again
    asked.clear()
    table.begin(lambda k: None, get_pair, lambda ks: [None] * len(ks))
    assert table.seen(a) and asked == []
    assert not table.seen(b) and asked == []
    assert not table.seen(others[5]) and asked == [others[5]]
    table.abort()


def test_state_keys_sharing_a_tag_keep_their_own_states_across_growth() -> None:
    x, y = same_tag([KEY_OUT + i.to_bytes(16, "little") for i in range(1, 400_000)])
    dx, dy = int.from_bytes(x[1:], "little"), int.from_bytes(y[1:], "little")
    table = risk.RiskTable(1 << 16, 1 << 16)
    table.begin(lambda k: None, lambda k: None, lambda ks: [None] * len(ks))
    records = [rec(1, dx, 7, 100), rec(2, dy, 7, 3)]
    records += [rec(10 + i, 100 + i, 7, 1) for i in range(3000)]  # the state map grows (1024 .. 8192)
    records += [rec(5, dx, 7, 100), rec(6, dy, 7, 3), rec(7, dy, 7, 3)]
    run(table, records)
    expected = {x: risk.new_state(), y: risk.new_state()}
    for raw in records:
        t = TRANSFER_STRUCT.unpack(raw)
        if KEY_OUT + t[1] in expected:
            risk.record_py(expected[KEY_OUT + t[1]], TS, t[3])
    rows = dict(table.rows())
    assert rows[x] == risk.encode_state(expected[x]) != rows[y] == risk.encode_state(expected[y])
    table.commit({}, set())
    assert table.state(x) == expected[x] and table.state(y) == expected[y]
