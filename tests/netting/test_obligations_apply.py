"""OBLIGATION and SETTLEMENT entries applied by real LMDB ledgers, one per region, relayed in process."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from ledger.apply.obligations import CREDITOR, DEBTOR, obligation_row, settlement_leaf
from ledger.codec import Batch, EncodingError, Proposal, decode_leaf, decode_proposal, encode_proposal, validate_batch
from ledger.netting import (
    Obligation,
    ObligationStatus,
    accept_record,
    build_settlement,
    clearing_account_id,
    decode_obligation,
    initiate_record,
    net_positions,
    resolve_record,
    settlement_account_id,
)
from ledger.types import Account, AccountFlags, EventKind, Result
from tests.netting.regions import LEDGERS, Federation, acct, customer

EU, US, AP = "eu-west", "us-east", "ap-south"
NS = 1_000_000_000


def pay(oid: int, payer: int, payee: int, amount: int, debtor: str, creditor: str, ledger: int = 978,
        window_s: int = 30) -> bytes:
    ob = Obligation(oid.to_bytes(16, "little"), amount, ledger, debtor, creditor, payee.to_bytes(16, "little"), 0)
    return initiate_record(ob, payer.to_bytes(16, "little"), 7, window_s)


@pytest.fixture
def fed(tmp_path: Path) -> Federation:
    return Federation.create(str(tmp_path), [EU, US, AP])


def test_a_cross_region_payment_completes_in_both_logs(fed: Federation) -> None:
    eu, us = fed.regions[EU], fed.regions[US]
    payer, payee = customer(1, 978), customer(2, 978)
    assert eu.block(EventKind.OBLIGATION, pay(1, payer, payee, 500, EU, US)) == [Result.OK]
    due_to = acct(clearing_account_id("due-to", US, 978))
    assert eu.lg.balance(payer) == (500, 0, 0, 0) and eu.lg.balance(due_to) == (0, 0, 500, 0)
    with eu.lg.store.read() as txn:
        row = obligation_row(txn, (1).to_bytes(16, "little"))
    assert row is not None and row[0] == ObligationStatus.PENDING and row[1] == DEBTOR
    deadline = decode_obligation(row[3]).deadline_ns
    assert deadline == eu.lg.now_ns + 30 * NS  # the block's t0 + window
    assert fed.relay() == 2
    assert us.lg.balance(payee) == (0, 0, 0, 500)
    assert us.lg.balance(acct(clearing_account_id("due-from", EU, 978))) == (0, 500, 0, 0)
    assert eu.lg.balance(payer) == (0, 500, 0, 0) and eu.lg.balance(due_to) == (0, 0, 0, 500)
    with us.lg.store.read() as txn:
        crow = obligation_row(txn, (1).to_bytes(16, "little"))
    assert crow is not None and crow[0] == ObligationStatus.OPEN and crow[1] == CREDITOR
    assert crow[3] == row[3] and crow[4] == bytes(16)  # the same obligation; the payer never left eu-west
    with us.lg.store.read() as txn:
        leaf = decode_leaf(txn.get("leaves", crow[2].to_bytes(8, "big")) or b"")
    assert leaf.kind == EventKind.OBLIGATION and leaf.result == Result.OK and leaf.body[112:128] == bytes(16)
    assert fed.relay() == 0  # nothing left in flight
    assert fed.customer_sums() == {978: 0, 840: 0}


def test_a_late_obligation_is_refused_and_the_payer_leg_voided(fed: Federation) -> None:
    eu, us = fed.regions[EU], fed.regions[US]
    payer, payee = customer(1, 978), customer(2, 978)
    assert eu.block(EventKind.OBLIGATION, pay(2, payer, payee, 40, EU, US, window_s=5)) == [Result.OK]
    us.lg.now_ns = eu.lg.now_ns + 10 * NS  # the creditor's blocks are past the deadline
    fed.relay()
    oid = (2).to_bytes(16, "little")
    assert us.leaf_of(oid)[0] == ObligationStatus.VOIDED
    with us.lg.store.read() as txn:
        leaf = decode_leaf(txn.get("leaves", us.leaf_of(oid)[1].to_bytes(8, "big")) or b"")
    assert leaf.result == Result.OBLIGATION_DEADLINE_PASSED
    assert us.lg.balance(payee) == (0, 0, 0, 0)
    assert eu.leaf_of(oid)[0] == ObligationStatus.VOIDED and eu.lg.balance(payer) == (0, 0, 0, 0)
    with eu.lg.store.read() as txn:
        row = obligation_row(txn, oid)
    assert row is not None
    # the decision is final: the same obligation offered again changes nothing
    assert us.block(EventKind.OBLIGATION, accept_record(row[3])) == [Result.OBLIGATION_EXISTS]
    assert us.lg.balance(payee) == (0, 0, 0, 0)
    # and the debtor cannot resolve twice
    assert eu.block(EventKind.OBLIGATION, resolve_record(row[3], True, 0)) == [Result.OBLIGATION_NOT_PENDING]
    assert fed.customer_sums() == {978: 0, 840: 0}


def test_result_codes_of_initiate_and_accept(tmp_path: Path) -> None:
    fed = Federation.create(str(tmp_path), [EU, US], clearing=False)
    eu, us = fed.regions[EU], fed.regions[US]
    p = customer(1, 978)
    assert eu.block(EventKind.OBLIGATION, pay(3, p, 5, 1, EU, US)) == [Result.OBLIGATION_CLEARING_ACCOUNT_NOT_FOUND]
    eu.lg.accounts(Account(acct(clearing_account_id("due-to", US, 978)), 978, 8),
                   Account(acct(clearing_account_id("due-to", US, 840)), 840, 8),
                   Account(77, 978, 1, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS))
    bad_reserved = bytearray(pay(9, p, 5, 1, EU, US))
    bad_reserved[140] = 1
    results = eu.block(EventKind.OBLIGATION,
                       pay(4, 4242, 5, 1, EU, US),  # payer missing
                       pay(5, customer(1, 840), 5, 1, EU, US),  # payer on another ledger
                       pay(6, 77, 5, 1, EU, US),  # the payer may not go below zero
                       pay(7, p, 5, 1, EU, US, window_s=0),
                       bytes(bad_reserved),
                       pay(8, p, 5, 10, EU, US),
                       pay(8, p, 5, 10, EU, US))
    assert results == [Result.OBLIGATION_ACCOUNT_NOT_FOUND, Result.OBLIGATION_LEDGER_MISMATCH,
                       Result.EXCEEDS_CREDITS, Result.OBLIGATION_MALFORMED, Result.OBLIGATION_MALFORMED,
                       Result.OK, Result.OBLIGATION_EXISTS]
    with eu.lg.store.read() as txn:
        row = obligation_row(txn, (8).to_bytes(16, "little"))
    assert row is not None
    # creditor side: its due-from account is missing, then the payee
    assert us.block(EventKind.OBLIGATION, accept_record(row[3])) == [Result.OBLIGATION_CLEARING_ACCOUNT_NOT_FOUND]
    us.lg.accounts(Account(acct(clearing_account_id("due-from", EU, 978)), 978, 8))
    other = decode_obligation(row[3])
    moved = Obligation((10).to_bytes(16, "little"), 3, 978, EU, US, (4242).to_bytes(16, "little"), other.deadline_ns)
    assert us.block(EventKind.OBLIGATION, accept_record(moved.encode())) == [Result.OBLIGATION_ACCOUNT_NOT_FOUND]
    with_payer = bytearray(accept_record(row[3]))
    with_payer[112] = 1  # an ACCEPT never carries the payer
    assert us.block(EventKind.OBLIGATION, bytes(with_payer)) == [Result.OBLIGATION_MALFORMED]


def test_clients_submit_only_initiate_and_never_settlements() -> None:
    rec = pay(1, 1, 2, 3, EU, US)
    assert validate_batch(EventKind.OBLIGATION, rec, b"", b"").kind == EventKind.OBLIGATION
    ob = decode_obligation(rec[:96])
    with pytest.raises(EncodingError, match="role 1"):
        validate_batch(EventKind.OBLIGATION, rec + accept_record(ob.encode()), b"", b"")
    raw = build_settlement(1, [Obligation(b"\x01" * 16, 5, 978, EU, US, b"\x02" * 16, 9)]).encode()
    with pytest.raises(EncodingError, match="cannot be submitted by clients"):
        validate_batch(EventKind.SETTLEMENT, raw, b"", b"")
    p = Proposal(5, (Batch(EventKind.OBLIGATION, rec + accept_record(ob.encode())), Batch(EventKind.SETTLEMENT, raw)))
    assert decode_proposal(encode_proposal(p)) == p


def _pay_around(fed: Federation, rng: random.Random, first_id: int, n: int) -> int:
    names = sorted(fed.regions)
    for k in range(n):
        debtor, creditor = rng.sample(names, 2)
        lg = rng.choice(LEDGERS)
        rec = pay(first_id + k, customer(rng.randint(1, 5), lg), customer(rng.randint(1, 5), lg),
                  rng.randint(1, 10_000), debtor, creditor, lg, window_s=rng.choice([5, 30]))
        assert fed.regions[debtor].block(EventKind.OBLIGATION, rec, advance_s=rng.choice([0.5, 2.0])) == [Result.OK]
        if rng.random() < 0.5:
            fed.relay()
    return first_id + n


def test_settlement_clears_clearing_accounts_in_every_region(fed: Federation) -> None:
    rng = random.Random(5)
    _pay_around(fed, rng, 1, 30)
    fed.relay()
    obs = fed.open_obligations()
    assert obs
    batch = build_settlement(1, obs)
    raw = batch.encode()
    for r in fed.regions.values():
        assert r.block(EventKind.SETTLEMENT, raw) == [Result.OK]
    positions = net_positions(obs)
    for name, r in fed.regions.items():
        for lg in LEDGERS:
            for other in fed.regions:
                if other != name:
                    for d in ("due-to", "due-from"):
                        dp, dpo, cp, cpo = r.lg.balance(acct(clearing_account_id(d, other, lg)))
                        assert (dp, cp) == (0, 0) and dpo == cpo  # cleared
            dp, dpo, cp, cpo = r.lg.balance(acct(settlement_account_id(lg)))
            assert dpo - cpo == positions.get((lg, name), 0)  # the region's net position
        with r.lg.store.read() as txn:
            assert settlement_leaf(txn, batch.batch_id) is not None
            for ob in obs:
                row = obligation_row(txn, ob.id)
                assert row is None or row[0] == ObligationStatus.SETTLED
        assert r.block(EventKind.SETTLEMENT, raw) == [Result.SETTLEMENT_EXISTS]
    assert fed.customer_sums() == {978: 0, 840: 0}


def test_settlement_refusals(tmp_path: Path) -> None:
    fed = Federation.create(str(tmp_path), [EU, US, AP])
    eu, us, ap = fed.regions[EU], fed.regions[US], fed.regions[AP]
    eu.block(EventKind.OBLIGATION, pay(1, customer(1, 978), customer(2, 978), 100, EU, US))
    fed.relay()
    eu.block(EventKind.OBLIGATION, pay(2, customer(1, 978), customer(2, 978), 60, EU, US))  # still pending
    open_ob = fed.open_obligations()
    assert [o.id[0] for o in open_ob] == [1]
    raw = build_settlement(1, open_ob).encode()
    assert ap.block(EventKind.SETTLEMENT, raw) == [Result.SETTLEMENT_NOT_INVOLVED]
    with eu.lg.store.read() as txn:
        row = obligation_row(txn, (2).to_bytes(16, "little"))
    assert row is not None
    pending = build_settlement(2, [*open_ob, decode_obligation(row[3])]).encode()
    assert eu.block(EventKind.SETTLEMENT, pending) == [Result.SETTLEMENT_OBLIGATION_NOT_OPEN]
    bent = bytearray(raw)
    off = len(raw) - 2 * 37 + 21  # the low byte of the first position's magnitude
    bent[off] += 1
    bent[off + 37] += 1  # +1 / −1 → still sums to zero, no longer the net
    assert eu.block(EventKind.SETTLEMENT, bytes(bent)) == [Result.SETTLEMENT_NOT_NETTING]
    assert eu.block(EventKind.SETTLEMENT, raw[:-1]) == [Result.SETTLEMENT_MALFORMED]
    assert us.block(EventKind.SETTLEMENT, raw) == [Result.OK]  # the good batch still applies


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_partitioned_region_leaves_nothing_half_done(tmp_path: Path, seed: int) -> None:
    """Payments keep flowing while a region is cut off; after the heal every obligation is open or voided
    in both its logs alike, a settlement cycle clears the open ones, and Σ of each currency is unchanged."""
    rng = random.Random(seed)
    fed = Federation.create(str(tmp_path), [EU, US, AP])
    next_id = _pay_around(fed, rng, 1, 15)
    fed.cut = {rng.choice(sorted(fed.regions))}
    next_id = _pay_around(fed, rng, next_id, 25)
    for r in fed.regions.values():  # time passes during the partition: some deadlines go by
        r.lg.now_ns += rng.choice([0, 20]) * NS
    fed.relay()
    fed.cut = set()
    for _ in range(3):
        if not fed.relay():
            break
    statuses: Counter[int] = Counter()
    for r in fed.regions.values():
        with r.lg.store.read() as txn:
            for oid in range(1, next_id):
                mine = obligation_row(txn, oid.to_bytes(16, "little"))
                if mine is None:
                    continue
                assert mine[0] in (ObligationStatus.OPEN, ObligationStatus.VOIDED)
                ob = decode_obligation(mine[3])
                peer = fed.regions[ob.creditor if mine[1] == DEBTOR else ob.debtor]
                with peer.lg.store.read() as ptxn:
                    theirs = obligation_row(ptxn, ob.id)
                assert theirs is not None and theirs[0] == mine[0]  # never half
                statuses[mine[0]] += 1
    assert fed.customer_sums() == {978: 0, 840: 0}
    obs = fed.open_obligations()
    raw = build_settlement(1, obs).encode()
    involved = {o.debtor for o in obs} | {o.creditor for o in obs}
    for name in involved:
        assert fed.regions[name].block(EventKind.SETTLEMENT, raw) == [Result.OK]
    for lg in LEDGERS:
        settle = acct(settlement_account_id(lg))
        assert sum(r.lg.balance(settle)[1] - r.lg.balance(settle)[3] for r in fed.regions.values()) == 0
    assert statuses[ObligationStatus.OPEN] and statuses[ObligationStatus.VOIDED]  # both outcomes happened
