"""ledger/netting.py: byte forms, multilateral net positions, and the settlement verdict (Hypothesis)."""

from __future__ import annotations

from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.netting import (
    OBLIGATION_RECORD_SIZE,
    OBLIGATION_SIZE,
    NettingError,
    NettingFailure,
    Obligation,
    Role,
    build_settlement,
    clearing_account_id,
    decode_obligation,
    decode_record,
    decode_settlement,
    initiate_record,
    net_positions,
    net_transfers,
    settlement_account_id,
    verify_settlement,
)
from ledger.types import U128_MAX

REGIONS = ["eu-west", "us-east", "ap-south", "sa-east"]


def ob(i: int, amount: int, debtor: str, creditor: str, ledger: int = 978) -> Obligation:
    return Obligation(i.to_bytes(16, "little"), amount, ledger, debtor, creditor, (1000 + i).to_bytes(16, "little"),
                      5_000_000_000)


@st.composite
def obligations(draw: st.DrawFn, max_size: int = 30) -> list[Obligation]:
    n = draw(st.integers(1, max_size))
    ids = draw(st.lists(st.integers(1, 2**64), min_size=n, max_size=n, unique=True))
    out = []
    for i in ids:
        debtor, creditor = draw(st.lists(st.sampled_from(REGIONS), min_size=2, max_size=2, unique=True))
        amount = draw(st.one_of(st.integers(1, 10**6), st.integers(1, U128_MAX // 64)))
        out.append(ob(i, amount, debtor, creditor, draw(st.sampled_from([978, 840]))))
    return out


def test_obligation_bytes_are_fixed() -> None:
    o = ob(7, 12345, "eu-west", "us-east")
    raw = o.encode()
    assert len(raw) == OBLIGATION_SIZE == 96
    assert raw[:16] == (7).to_bytes(16, "little") and raw[16:32] == (12345).to_bytes(16, "little")
    assert raw[32:36] == (978).to_bytes(4, "little") and raw[36:40] == bytes(4)
    assert raw[40:56] == b"eu-west".ljust(16, b"\0") and raw[56:72] == b"us-east".ljust(16, b"\0")
    assert raw[72:88] == (1007).to_bytes(16, "little") and raw[88:96] == (5_000_000_000).to_bytes(8, "little")
    assert decode_obligation(raw) == o


@pytest.mark.parametrize("bad", [
    lambda r: r[:95],
    lambda r: r[:36] + b"\x01" + r[37:],  # reserved
    lambda r: bytes(16) + r[16:],  # id zero
    lambda r: r[:16] + bytes(16) + r[32:],  # amount zero
    lambda r: r[:56] + r[40:56] + r[72:],  # same region twice
    lambda r: r[:40] + b"eu west".ljust(16, b"\0") + r[56:],  # not a region name
])
def test_bad_obligations_do_not_decode(bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NettingError):
        decode_obligation(bad(ob(7, 1, "eu-west", "us-east").encode()))


def test_initiate_record() -> None:
    raw = initiate_record(ob(7, 5, "eu-west", "us-east"), b"\x09" * 16, 42, 30)
    assert len(raw) == OBLIGATION_RECORD_SIZE == 144
    rec = decode_record(raw)
    assert rec.role == Role.INITIATE and rec.payer == b"\x09" * 16 and rec.psp_id == 42 and rec.window_s == 30
    assert decode_obligation(rec.obligation).deadline_ns == 0  # the debtor region's ledger sets it
    with pytest.raises(NettingError):
        decode_record(raw[:96] + b"\x07" + raw[97:])  # unknown role


def test_account_ids_are_derived_and_distinct() -> None:
    ids = {clearing_account_id(d, r, lg) for d in ("due-to", "due-from") for r in REGIONS for lg in (978, 840)}
    ids |= {settlement_account_id(978), settlement_account_id(840)}
    assert len(ids) == 2 * len(REGIONS) * 2 + 2
    with pytest.raises(NettingError):
        clearing_account_id("owed", "eu-west", 978)


def test_three_regions_example() -> None:
    obs = [ob(1, 100, "eu-west", "us-east"), ob(2, 70, "us-east", "eu-west"), ob(3, 50, "us-east", "ap-south"),
           ob(4, 20, "ap-south", "eu-west")]
    pos = net_positions(obs)
    assert pos == {(978, "ap-south"): 30, (978, "eu-west"): -10, (978, "us-east"): -20}
    transfers = net_transfers(pos)
    assert [(t.payer, t.payee, t.amount) for t in transfers] == [("us-east", "ap-south", 20),
                                                                 ("eu-west", "ap-south", 10)]
    v = verify_settlement(build_settlement(1, obs).encode())
    assert v.ok and v.gross_count == 4 and v.net_count == 2


@settings(max_examples=200, deadline=None)
@given(obligations())
def test_net_positions_sum_to_zero_per_currency(obs: list[Obligation]) -> None:
    sums: dict[int, int] = defaultdict(int)
    for (ledger, _r), v in net_positions(obs).items():
        sums[ledger] += v
    assert all(v == 0 for v in sums.values())


@settings(max_examples=200, deadline=None)
@given(obligations())
def test_netting_preserves_each_pairs_balance(obs: list[Obligation]) -> None:
    """What every region receives minus pays is the same gross and net: the net transfers realise the positions."""
    pos = net_positions(obs)
    realised: dict[tuple[int, str], int] = defaultdict(int)
    for t in net_transfers(pos):
        assert t.amount > 0 and t.payer != t.payee
        realised[(t.ledger, t.payee)] += t.amount
        realised[(t.ledger, t.payer)] -= t.amount
    assert {k: v for k, v in realised.items() if v} == pos
    per_ledger_regions: dict[int, set[str]] = defaultdict(set)
    for ledger, region in pos:
        per_ledger_regions[ledger].add(region)
    for ledger, regions in per_ledger_regions.items():
        assert sum(1 for t in net_transfers(pos) if t.ledger == ledger) <= len(regions) - 1


@settings(max_examples=100, deadline=None)
@given(obligations(), st.integers(0, 2**64 - 1))
def test_settlement_round_trip_and_verdict(obs: list[Obligation], cycle: int) -> None:
    batch = build_settlement(cycle, obs)
    raw = batch.encode()
    assert decode_settlement(raw) == batch
    known = {o.id: o for o in obs}
    v = verify_settlement(raw, known)
    assert v.ok and v.gross_count == len(obs) and v.net_count == len(net_transfers(net_positions(obs)))


@settings(max_examples=100, deadline=None)
@given(obligations(), st.data())
def test_a_changed_amount_is_caught(obs: list[Obligation], data: st.DataObject) -> None:
    batch = build_settlement(1, obs)
    raw = bytearray(batch.encode())
    i = data.draw(st.integers(0, len(obs) - 1))
    off = 24 + 12 + i * OBLIGATION_SIZE + 16  # the amount of obligation i
    raw[off] ^= 1 if raw[off] & 1 else 3
    v = verify_settlement(bytes(raw), {o.id: o for o in obs})
    assert not v.ok and v.failure in (NettingFailure.POSITIONS_MISMATCH, NettingFailure.NOT_ZERO_SUM,
                                      NettingFailure.MALFORMED, NettingFailure.OBLIGATION_DIFFERS)


def test_each_failure_has_its_own_verdict() -> None:
    obs = [ob(1, 100, "eu-west", "us-east"), ob(2, 30, "us-east", "eu-west")]
    good = build_settlement(3, obs).encode()
    assert verify_settlement(b"junk").failure == NettingFailure.MALFORMED
    swapped = good[:36] + good[36 + 96 : 36 + 192] + good[36:132] + good[36 + 192 :]
    assert verify_settlement(swapped).failure == NettingFailure.UNSORTED
    twice = good[:36] + good[36:132] + good[36:132] + good[36 + 192 :]
    assert verify_settlement(twice).failure == NettingFailure.DUPLICATE_OBLIGATION
    # positions that sum to zero but are not the net: +80/-80 instead of +70/-70
    tail = bytearray(good)
    for k in range(2):
        start = len(good) - (2 - k) * 37 + 21
        tail[start] += 10
    assert verify_settlement(bytes(tail)).failure == NettingFailure.POSITIONS_MISMATCH
    lopsided = bytearray(good)
    lopsided[len(good) - 37 + 21] += 1
    assert verify_settlement(bytes(lopsided)).failure == NettingFailure.NOT_ZERO_SUM
    assert verify_settlement(good, {obs[0].id: obs[0]}).failure == NettingFailure.UNKNOWN_OBLIGATION
    other = Obligation(obs[1].id, 30, 978, "us-east", "eu-west", bytes(15) + b"\x01", 1)
    assert verify_settlement(good, {obs[0].id: obs[0], obs[1].id: other}).failure == NettingFailure.OBLIGATION_DIFFERS
    assert verify_settlement(good, {o.id: o for o in obs}).ok


def test_byte_forms_from_first_principles() -> None:
    """docs/formats.md §16 recomputed with only blake3 and struct: derived ids, a batch and its digest."""
    import struct

    import blake3

    def region(name: str) -> bytes:
        return name.encode().ljust(16, b"\0")

    assert clearing_account_id("due-to", "us-east", 978) == blake3.blake3(
        b"\x07due-to" + region("us-east") + struct.pack("<I", 978)).digest()[:16]
    assert settlement_account_id(840) == blake3.blake3(b"\x07settlement" + struct.pack("<I", 840)).digest()[:16]
    o1, o2 = ob(2, 70, "us-east", "eu-west"), ob(1, 100, "eu-west", "us-east")
    def ob_bytes(o: Obligation) -> bytes:
        return (o.id + o.amount.to_bytes(16, "little") + struct.pack("<I", o.ledger) + bytes(4) + region(o.debtor)
                + region(o.creditor) + o.payee + struct.pack("<Q", o.deadline_ns))
    expected = (b"sovledger/settlement/v1\n" + struct.pack("<QI", 9, 2) + ob_bytes(o2) + ob_bytes(o1)
                + struct.pack("<I", 2)
                + struct.pack("<I", 978) + region("eu-west") + b"\x01" + (30).to_bytes(16, "little")
                + struct.pack("<I", 978) + region("us-east") + b"\x00" + (30).to_bytes(16, "little"))
    batch = build_settlement(9, [o1, o2])
    assert batch.encode() == expected
    assert batch.batch_id == blake3.blake3(b"\x08" + expected).digest()[:16]


def test_operators_create_only_region_accounts() -> None:
    """node/psp_guard.py lets an operator certificate create the netting accounts and nothing else."""
    from ledger.codec import Batch, encode_account
    from ledger.netting import is_region_account, region_bytes
    from ledger.types import Account, EventKind
    from node.errors import Unauthorised
    from node.psp_guard import check_batch
    from node.tls import Identity

    def rec(aid: bytes, region: str = "", ledger: int = 978) -> bytes:
        ud = int.from_bytes(region_bytes(region), "little") if region else 0
        return encode_account(Account(int.from_bytes(aid, "little"), ledger, 8, user_data=ud))

    good = [rec(clearing_account_id("due-to", "us-east", 978), "us-east"),
            rec(clearing_account_id("due-from", "ap-south", 978), "ap-south"), rec(settlement_account_id(978))]
    assert all(is_region_account(r) for r in good)
    bad = [rec(clearing_account_id("due-to", "us-east", 978), "ap-south"),  # the region does not match the id
           rec(clearing_account_id("due-to", "us-east", 840), "us-east"),  # nor the ledger
           rec((7).to_bytes(16, "little"))]
    assert not any(is_region_account(r) for r in bad)
    operator = Identity("operator", "ops", 1)
    assert check_batch(operator, Batch(EventKind.CREATE_ACCOUNT, b"".join(good))) == []
    for r in bad:
        with pytest.raises(Unauthorised, match="clearing and settlement accounts"):
            check_batch(operator, Batch(EventKind.CREATE_ACCOUNT, r))


def test_a_region_offers_only_what_it_owes() -> None:
    """node/netting.py: the Offer caller's certificate names the debtor region (federation REGION/…)."""
    from node.errors import Unauthorised
    from node.netting import check_debtor
    from node.tls import Identity

    owed_by_eu = [ob(1, 5, "eu-west", "us-east"), ob(2, 7, "eu-west", "us-east")]
    check_debtor(Identity("federation", "eu-west/node-node-1", 1), owed_by_eu)
    check_debtor(None, owed_by_eu)  # --insecure: no identities
    with pytest.raises(Unauthorised, match="owed by region eu-west"):
        check_debtor(Identity("federation", "ap-south/node-node-1", 2), owed_by_eu)
