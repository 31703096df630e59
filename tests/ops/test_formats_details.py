"""docs/formats.md §12, checked against the state machine with hashes computed here from first
principles (blake3 + struct), so the page an outside verifier reads cannot drift from the code."""

from __future__ import annotations

from pathlib import Path

import blake3

from ledger.codec import BlockHeader, Proposal, decode_leaf
from ledger.reader import LedgerReader
from ledger.types import Account, EventKind, Result, Transfer, TransferFlags
from tests.ledger.harness import NS, Ledger


def header(led: Ledger, height: int) -> BlockHeader:
    return LedgerReader(led.store).block(height)


def test_leafless_block_time_is_its_t0_and_changes_no_state() -> None:
    led = Ledger()
    assert led.accounts(Account(1, 1, 1), Account(2, 1, 1)) == [Result.OK, Result.OK]
    before = led.state.head
    proposal_ts = before.last_timestamp_ns + 5 * NS
    led.state.apply_block(Proposal(proposal_ts, ()))
    head = led.state.head
    h = header(led, head.height)
    assert h.leaf_count == 0 and h.first_index == before.tree_size == h.tree_size
    assert h.timestamp_ns == proposal_ts == head.last_timestamp_ns  # §12.1: time = t0 without leaves
    assert h.chain_head == before.chain_head and h.merkle_root == header(led, before.height).merkle_root
    # §12.2: a block that changes nothing: BLAKE3(0x04 ‖ previous)
    assert h.state_hash == blake3.blake3(b"\x04" + before.state_hash).digest()
    # the next block's t0 = max(T, time + 1)
    led.state.apply_block(Proposal(1, ()))
    assert header(led, head.height + 1).timestamp_ns == proposal_ts + 1


def test_state_hash_is_net_change_sorted_by_little_endian_id_bytes() -> None:
    led = Ledger()
    assert led.accounts(Account(1, 1, 1), Account(256, 1, 1), Account(3, 1, 1)) == [Result.OK] * 3
    prev = led.state.head.state_hash
    # 1 → 256 posted; 3 is touched by a pending transfer that is voided in the same block (net zero)
    out = led.transfers(
        Transfer(id=10, debit_account_id=1, credit_account_id=256, amount=7, ledger=1, code=1),
        Transfer(id=11, debit_account_id=3, credit_account_id=1, amount=9, ledger=1, code=1,
                 flags=TransferFlags.PENDING),
        Transfer(id=12, debit_account_id=0, credit_account_id=0, amount=0, ledger=0, code=0, pending_id=11,
                 flags=TransferFlags.VOID_PENDING_TRANSFER),
    )
    assert out == [Result.OK] * 3
    want = blake3.blake3(b"\x04" + prev)
    ids = sorted([(256).to_bytes(16, "little"), (1).to_bytes(16, "little")])  # 3 is unchanged: left out
    assert ids[0] == (256).to_bytes(16, "little")  # little-endian bytes: 256 sorts before 1
    with led.store.read() as txn:
        for aid in ids:
            want.update(aid + (txn.get("accounts", aid) or b""))
    assert header(led, led.state.head.height).state_hash == want.digest()


def test_expiry_order_and_which_timestamp_reaches_it() -> None:
    led = Ledger()
    assert led.accounts(Account(1, 1, 1), Account(2, 1, 1)) == [Result.OK, Result.OK]
    pend = [Transfer(id=i, debit_account_id=1, credit_account_id=2, amount=1, ledger=1, code=1,
                     flags=TransferFlags.PENDING, timeout_s=1) for i in (1, 256, 2)]
    led.transfers(*pend)
    created_t0 = header(led, led.state.head.height).timestamp_ns
    led.state.apply_block(Proposal(created_t0 + NS - 1, ()))  # one ns early: nothing expires
    assert header(led, led.state.head.height).leaf_count == 0
    led.state.apply_block(Proposal(created_t0 + NS, ()))  # t0 = expires_at: all three expire
    h = header(led, led.state.head.height)
    leaves = [decode_leaf(x) for x in LedgerReader(led.store).leaves(h.first_index, h.tree_size).__next__()]
    assert [lf.kind for lf in leaves] == [EventKind.EXPIRE_PENDING] * 3
    assert all(lf.result == 0 and lf.aux == b"" for lf in leaves)
    assert [lf.body for lf in leaves] == sorted(i.to_bytes(16, "little") for i in (1, 256, 2))


def test_linked_chain_result_codes() -> None:
    led = Ledger()
    assert led.accounts(Account(1, 1, 1), Account(2, 1, 1)) == [Result.OK, Result.OK]
    L = TransferFlags.LINKED
    ok = dict(debit_account_id=1, credit_account_id=2, amount=1, ledger=1, code=1)
    out = led.transfers(Transfer(id=1, flags=L, **ok), Transfer(id=2, flags=L, **{**ok, "amount": 0}),
                        Transfer(id=3, flags=L, **ok), Transfer(id=4, **ok))
    assert out == [Result.LINKED_EVENT_FAILED, Result.AMOUNT_MUST_NOT_BE_ZERO, Result.LINKED_EVENT_FAILED,
                   Result.LINKED_EVENT_FAILED]
    out = led.transfers(Transfer(id=5, flags=L, **ok), Transfer(id=6, flags=L, **ok))
    assert out == [Result.LINKED_EVENT_FAILED, Result.LINKED_EVENT_CHAIN_OPEN]
    assert led.balance(1) == (0, 0, 0, 0)


def test_empty_log_checkpoint_lines(tmp_path: Path) -> None:
    from ledger.note import Checkpoint, Signer, open_note
    from node.signing import CheckpointService

    led = Ledger()
    signer = Signer.generate("eu/node-1")
    svc = CheckpointService(LedgerReader(led.store), signer, "sovledger/eu", tmp_path / "guard.json")
    svc.on_start(led.state.head)
    cp = Checkpoint.parse(open_note(svc.latest().note, [signer.verifier]).body)
    assert (cp.size, cp.root) == (0, blake3.blake3(b"").digest())
    assert cp.extensions == (f"block 0 {'0' * 64}", f"chain {'0' * 64}", "time 0")
