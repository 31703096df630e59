"""The compiled transfer engine (ledger/_native/apply.c) against the Python reference, case by case.

Targeted blocks reach every transfer result code (including the u128 overflow edges, the timeout
overflow, chains failing mid-way, pending transfers created and posted in one batch, a pending
transfer whose creating chain was undone); each block must give byte-identical outcomes, headers
and store contents on both engines, and the native path must really have run (a counter on the
hook). Signed batches (PSP signature auxes) and mixed account/transfer blocks are compared too;
blocks under rule sets: tests/engine/test_rules_differential.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger import native
from ledger.apply import native_transfers
from ledger.apply.scratch import Block, Event
from ledger.codec import Batch, encode_account, encode_transfer
from ledger.types import U128_MAX, Account, EventKind, Result, Transfer
from ledger.types import TransferFlags as TF
from tests.engine.test_differential import ACCOUNTS, T0, Pair

pytestmark = pytest.mark.skipif(not native.available(), reason="native engine not built (no C compiler)")

MAX = U128_MAX
P, POST, VOID, L = TF.PENDING, TF.POST_PENDING_TRANSFER, TF.VOID_PENDING_TRANSFER, TF.LINKED
TRANSFER_CODES = {r for r in Result if 1 <= r <= 9 or 40 <= r <= 108} - {Result.RESERVED_FIELD} - {
    r for r in Result if 20 <= r <= 26}


def t(tid: int, dr: int = 4, cr: int = 2, amount: int = 10, **kw: int | bytes) -> Transfer:
    fields: dict[str, int | bytes] = {"ledger": 1, "code": 1, **kw}
    return Transfer(tid, dr, cr, amount, **fields)  # type: ignore[arg-type]


def pv(tid: int, pid: int, flags: int = POST, amount: int = 0, dr: int = 0, cr: int = 0, **kw: int) -> Transfer:
    """A post (default) or void of pending transfer ``pid``; zero fields mean "as the pending one"."""
    fields: dict[str, int] = {"ledger": 0, "code": 0, **kw}
    return Transfer(tid, dr, cr, amount, flags=flags, pending_id=pid, **fields)  # type: ignore[arg-type]


class Counting:
    """Counts batches the native engine applied (the hook in ledger/apply/transfers.py)."""

    def __init__(self) -> None:
        self.batches = 0
        self._apply = native_transfers.apply

    def __call__(self, blk: Block, batch: Batch, events: list[Event]) -> None:
        self.batches += 1
        self._apply(blk, batch, events)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Counting:
    c = Counting()
    monkeypatch.setattr(native_transfers, "apply", c)
    return c


def _pair(root: Path, start: int = T0) -> Pair:
    p = Pair(root)
    p.now = start
    extra = tuple(Account(i, ledger=1, code=1) for i in range(10, 18))
    p.block((Batch(EventKind.CREATE_ACCOUNT, b"".join(encode_account(a) for a in ACCOUNTS + extra)),))
    p.transfers([t(100, 4, 2, 1_000_000), t(101, 3, 4, 1_000)])
    return p


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    p = _pair(tmp_path)
    yield p
    p.close()


def test_every_transfer_result_code(pair: Pair, counted: Counting) -> None:
    # field checks, accounts, limits
    pair.transfers([
        t(1, flags=1 << 15), t(0), t(MAX), t(2, flags=P | POST), t(3, ledger=0), t(4, code=0),
        t(5, 0, 2), t(6, MAX, 2), t(7, 4, 0), t(8, 4, MAX), t(9, 4, 4), t(10, pending_id=3), t(11, timeout_s=1),
        t(12, amount=0), t(13, 9, 2), t(14, 4, 9), t(15, 4, 5, ledger=2), t(16, 4, 2, ledger=2),
        t(17, 1, 2, 5), t(18, 4, 3, 5_000),  # EXCEEDS_CREDITS (1 has no credits), EXCEEDS_DEBITS (3)
    ])
    # u128 edges
    pair.transfers([t(200, 10, 11, MAX), t(201, 10, 12, 1), t(202, 12, 11, 1), t(203, 13, 12, MAX, flags=P),
                    t(204, 13, 14, 1, flags=P), t(205, 14, 12, 1, flags=P), t(206, 13, 14, 1), t(207, 14, 12, 1),
                    t(208, 16, 15, 5, flags=P), t(209, 16, 17, MAX - 2)])
    pair.transfers([pv(210, 208, amount=5)])  # a post overflowing debits posted
    # two-phase
    pair.transfers([t(300, flags=P, timeout_s=1), t(301, amount=100, flags=P), t(302), t(305, flags=P)])
    pair.transfers([
        pv(310, 302), pv(311, 301, dr=3), pv(312, 301, cr=3), pv(313, 301, ledger=2), pv(314, 301, code=2),
        pv(315, 301, amount=101), pv(316, 301, VOID, amount=5), pv(317, 301, amount=40), pv(318, 301),
        pv(319, 305, VOID), pv(320, 305, VOID), pv(321, 999), pv(322, 0), pv(323, MAX), pv(324, 324),
        pv(325, 301, timeout_s=1),
    ], advance_s=2)  # 300 expires at the start of this block
    pair.transfers([pv(330, 300)])
    # created and settled in one batch; a chain creating a pending transfer undone, then redone
    pair.transfers([t(340, flags=P), pv(341, 340), t(350, flags=P | L), pv(351, 350, POST | L), t(352, 9, 2),
                    pv(353, 350), t(350, flags=P), pv(354, 350, VOID), t(360, flags=L)])  # last chain open
    # retries: exact and with each field different
    pair.transfers([t(400, user_data=1, psp_id=7, external_ref=b"r", pii_commitment=bytes(32))])
    pair.transfers([
        t(400, user_data=1, psp_id=7, external_ref=b"r", pii_commitment=bytes(32)),  # exact: no new leaf
        t(400, flags=P), t(400, 3, 2), t(400, 4, 3), t(400, amount=11), t(400, user_data=2), t(301, amount=100,
                                                                                                flags=P, timeout_s=3),
        t(400, code=2, user_data=1), pv(317, 305, amount=40), pv(317, 301, amount=40, ledger=1),
        t(400, user_data=1, psp_id=7, external_ref=b"s"), t(400, user_data=1, psp_id=7, external_ref=b"r",
                                                          pii_commitment=b"\x01" * 32),
        t(400, user_data=1, psp_id=8, external_ref=b"r", pii_commitment=bytes(32)),
    ])
    pair.assert_stores_identical()
    missing = {r.name for r in TRANSFER_CODES - {Result.OVERFLOWS_TIMEOUT} - pair.results}
    assert not missing, f"never produced: {sorted(missing)}"
    assert counted.batches == 9, "the native engine did not apply the transfer batches"


def test_timeout_overflow_near_u64_time(tmp_path: Path, counted: Counting) -> None:
    p = _pair(tmp_path, start=(1 << 64) - 10**18)  # block time near the end of u64 nanoseconds
    try:
        p.transfers([t(1, flags=P, timeout_s=(1 << 32) - 1), t(2, flags=P, timeout_s=1)])
        assert Result.OVERFLOWS_TIMEOUT in p.results
        p.assert_stores_identical()
    finally:
        p.close()
    assert counted.batches == 2


def test_signed_and_mixed_blocks(pair: Pair, counted: Counting) -> None:
    recs = b"".join(encode_transfer(x) for x in (t(500), t(501, 9, 2), t(502, flags=L), t(503)))
    signed = Batch(EventKind.CREATE_TRANSFER, recs, signer_key_id=b"k" * 8, signatures=bytes(range(64)) * 4)
    accounts = Batch(EventKind.CREATE_ACCOUNT, encode_account(Account(30, ledger=1, code=1)))
    to_new = Batch(EventKind.CREATE_TRANSFER, encode_transfer(t(504, 4, 30)))
    pair.block((signed, accounts, to_new, signed))  # the second signed batch: retries in one block
    pair.assert_stores_identical()
    assert counted.batches == 3


def test_native_numbering_knows_every_event_field() -> None:
    """A new ``Event`` field must be taught to ledger/_native/seal.c (number_leaves), then listed here."""
    from ledger.apply import seal

    assert frozenset(Event.__dataclass_fields__) == seal.NATIVE_EVENT_FIELDS
