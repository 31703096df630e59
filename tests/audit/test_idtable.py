"""The replay's numpy id table answers exactly what a dict would (rows of known ids, None otherwise)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from clients.auditor.idtable import IdTable

ids16 = st.binary(min_size=16, max_size=16)


def words(ids: list[bytes]) -> np.ndarray:  # type: ignore[type-arg]
    return np.frombuffer(b"".join(ids), "<u8").reshape(-1, 2).copy()


@settings(max_examples=150, deadline=None)
@given(known=st.lists(ids16, min_size=1, max_size=300, unique=True), data=st.data())
def test_lookup_matches_a_dict(known: list[bytes], data: st.DataObject) -> None:
    table = IdTable(words(known))
    index = {k: r for r, k in enumerate(known)}
    queries = data.draw(st.lists(st.sampled_from(known), min_size=1, max_size=200))
    rows = table.lookup(words(queries))
    assert rows is not None and rows.tolist() == [index[q] for q in queries]
    stranger = data.draw(ids16.filter(lambda x: x not in index))
    assert table.lookup(words([*queries, stranger])) is None


def test_sequential_and_colliding_ids() -> None:
    seq = [i.to_bytes(16, "little") for i in range(1, 5000)]
    # same XOR of halves, different ids: a fold of the two halves would collide, the table must not care
    twins = [(i.to_bytes(8, "little") * 2) for i in range(1, 300)]
    known = seq + twins
    table = IdTable(words(known))
    rows = table.lookup(words(known[::-1]))
    assert rows is not None and rows.tolist() == list(range(len(known)))[::-1]
