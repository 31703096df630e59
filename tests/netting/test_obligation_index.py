"""The status index of cross-region obligations (table ``obligation_status``, ledger/apply/obligations.py):
after payments, late refusals, relays and a settlement on real LMDB ledgers, ``obligations_with`` read
through the index equals a full scan of the ``obligations`` table for every status and side; a store
written before the index (its entries removed) is indexed again when the ledger is opened."""

from __future__ import annotations

import random
from pathlib import Path

from ledger.apply.obligations import CREDITOR, DEBTOR
from ledger.netting import ObligationStatus, build_settlement, decode_obligation
from ledger.schema import Table
from ledger.types import EventKind, Result
from tests.netting.regions import Federation
from tests.netting.test_obligations_apply import AP, EU, US, _pay_around

Listing = dict[tuple[int, int], list[tuple[int, int, bytes]]]


def _scan(fed: Federation) -> dict[str, Listing]:
    """What every (status, side) holds per region, from a full scan of the obligations table."""
    out: dict[str, Listing] = {}
    for name, r in fed.regions.items():
        listing: Listing = {(st, side): [] for st in ObligationStatus for side in (DEBTOR, CREDITOR)}
        with r.lg.store.read() as txn:
            for oid, raw in txn.range(Table.OBLIGATIONS):
                listing[(raw[0], raw[1])].append((raw[1], int.from_bytes(raw[2:10], "little"), oid))
        out[name] = listing
    return out


def _indexed(fed: Federation) -> dict[str, Listing]:
    from ledger.apply.obligations import obligations_with

    out: dict[str, Listing] = {}
    for name, r in fed.regions.items():
        listing: Listing = {}
        with r.lg.store.read() as txn:
            for st in ObligationStatus:
                for side in (DEBTOR, CREDITOR):
                    listing[(st, side)] = [(s, i, ob.id) for s, i, ob in obligations_with(txn, st, side)]
                both = obligations_with(txn, st)
                assert both == [x for side in (DEBTOR, CREDITOR) for x in obligations_with(txn, st, side)]
                assert obligations_with(txn, st, DEBTOR, 2) == obligations_with(txn, st, DEBTOR)[:2]
        out[name] = listing
    return out


def test_the_status_index_follows_every_transition_and_is_rebuilt(tmp_path: Path) -> None:
    fed = Federation.create(str(tmp_path), [EU, US, AP])
    rng = random.Random(11)
    _pay_around(fed, rng, 1, 40)
    assert _indexed(fed) == _scan(fed)
    fed.relay()
    obs = fed.open_obligations()
    assert obs
    raw = build_settlement(1, obs).encode()
    for r in fed.regions.values():
        assert r.block(EventKind.SETTLEMENT, raw) == [Result.OK]
    _pay_around(fed, rng, 100, 10)  # some still pending, some open after the settlement
    scanned = _scan(fed)
    assert _indexed(fed) == scanned
    statuses = {st for listing in scanned.values() for (st, _side), rows in listing.items() if rows}
    assert {ObligationStatus.PENDING, ObligationStatus.SETTLED} <= statuses  # the walk reached several
    for name, r in fed.regions.items():  # a store from before the index: its entries gone
        with r.lg.store.write() as txn:
            for key, _ in list(txn.range(Table.OBLIGATION_STATUS)):
                txn.delete(Table.OBLIGATION_STATUS, key)
        r.lg.reopen()
        assert r.lg.state.indexed_obligations == sum(len(v) for v in scanned[name].values())
        r.lg.reopen()
        assert r.lg.state.indexed_obligations == 0  # once
    assert _indexed(fed) == scanned
    for listing in scanned.values():  # the decoded obligation is the stored one
        for rows in listing.values():
            assert all(len(oid) == 16 for _s, _i, oid in rows)
    with fed.regions[EU].lg.store.read() as txn:
        for oid, row in txn.range(Table.OBLIGATIONS):
            assert decode_obligation(row[10:106]).id == oid
