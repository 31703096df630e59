"""The pure verifier on in-memory logs built by the real state machine (no network, no processes)."""

from __future__ import annotations

import io
from functools import cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clients.auditor import trust as trustmod
from clients.auditor.checks import (
    check_against_trusted,
    check_cosigned_against_trusted,
    compare_accounts,
    parse_u128,
    verify_note,
)
from clients.auditor.export import read_export, write_export
from clients.auditor.failures import (
    AuditFailure,
    BalanceMismatch,
    BlockHeaderMismatch,
    CheckpointSignatureError,
    ForkDetected,
    InconsistentLog,
    LeafMismatch,
    LogMismatch,
    LogTruncated,
    PspSignatureInvalid,
    RollbackDetected,
    TreeMismatch,
    UsageError,
)
from clients.auditor.replay import LogVerifier, iter_blocks
from clients.auditor.trust import TrustedCheckpoint, TrustStore
from ledger.note import Checkpoint, Signer, open_note
from tests.audit.memlog import MemLog, mixed_log, xfer

PSP = Signer.generate("psp-a")


@cache
def signed_log() -> MemLog:
    return mixed_log(psp=PSP)


def run(log: MemLog, leaves: list[bytes] | None = None, headers: list[bytes] | None = None,
        psp: tuple[Signer, ...] = (PSP,), checkpoints: tuple[tuple[int, bytes], ...] = ()) -> LogVerifier:
    v = LogVerifier(psp_keys=[s.verifier for s in psp], checkpoints=checkpoints)
    for h, ls in iter_blocks(headers if headers is not None else log.headers(),
                             iter(leaves if leaves is not None else log.leaves())):
        v.feed_block(h, ls)
    v.finish(Checkpoint.parse(open_note(log.note(), [log.signer.verifier]).body))
    return v


def test_mixed_log_verifies_and_replays_balances() -> None:
    log = signed_log()
    v = run(log)
    assert v.size == len(log.leaves()) and v.height == len(log.headers())
    assert v.stats.psp_verified > 40 and not v.stats.psp_unknown
    compare_accounts(v.account_states(), log.account_states(), "mem")


def test_unknown_psp_key_is_reported_not_fatal() -> None:
    v = run(signed_log(), psp=())
    assert v.stats.psp_verified == 0
    assert v.stats.psp_unknown == {PSP.key_id.hex(): v.stats.psp_unknown[PSP.key_id.hex()]}


def test_bad_psp_signature_names_the_leaf() -> None:
    log = signed_log()
    leaves = log.leaves()
    i = next(k for k, raw in enumerate(leaves) if len(raw) > 202)  # a signed transfer
    raw = bytearray(leaves[i])
    raw[-1] ^= 0x40  # last byte of the signature
    leaves[i] = bytes(raw)
    with pytest.raises(PspSignatureInvalid) as e:
        run(log, leaves)
    assert e.value.data["index"] == i and f"leaf {i}" in str(e.value) and "psp-a" in str(e.value)
    assert e.value.exit_code == 15


def flip_one_byte(data: st.DataObject, leaves: list[bytes], first: int) -> int:
    """XOR one byte of one leaf at index >= ``first`` with a non-zero value; return the leaf's index."""
    i = data.draw(st.integers(first, len(leaves) - 1), label="leaf")
    pos = data.draw(st.integers(0, len(leaves[i]) - 1), label="byte")
    raw = bytearray(leaves[i])
    raw[pos] ^= data.draw(st.integers(1, 255), label="xor")
    leaves[i] = bytes(raw)
    return i


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_single_byte_flip_in_any_entry_is_detected(data: st.DataObject) -> None:
    log = signed_log()
    leaves = log.leaves()
    i = flip_one_byte(data, leaves, 0)
    with pytest.raises(AuditFailure) as e:
        run(log, leaves)
    assert e.value.exit_code in (12, 14, 15)
    msg = str(e.value)
    assert f"leaf {i}" in msg or "block" in msg  # names the leaf, or the block whose root/state broke


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_any_single_byte_flip_in_any_block_header_is_detected(data: st.DataObject) -> None:
    log = signed_log()
    headers = log.headers()
    h = data.draw(st.integers(0, len(headers) - 1))
    pos = data.draw(st.integers(0, len(headers[h]) - 1))
    raw = bytearray(headers[h])
    raw[pos] ^= data.draw(st.integers(1, 255))
    headers[h] = bytes(raw)
    with pytest.raises(AuditFailure) as e:
        run(log, headers=headers)
    assert e.value.exit_code in (12, 13, 14)


def test_leaf_index_gap_names_index() -> None:
    log = signed_log()
    leaves = log.leaves()
    del leaves[10]
    with pytest.raises(LogMismatch) as e:
        run(log, leaves)
    assert "leaf 10" in str(e.value) and e.value.data["index"] == 10


def test_truncated_log_is_detected() -> None:
    log = signed_log()
    with pytest.raises(LogTruncated) as e:
        run(log, log.leaves()[:-3])
    assert e.value.data["got"] == e.value.data["expected"] - 3
    with pytest.raises(LogTruncated):
        run(log, headers=log.headers()[:-1])


def test_reordered_blocks_and_swapped_leaves() -> None:
    log = signed_log()
    hs = log.headers()
    hs[2], hs[3] = hs[3], hs[2]
    with pytest.raises(BlockHeaderMismatch) as e:
        run(log, headers=hs)
    assert "block" in str(e.value)
    leaves = log.leaves()
    leaves[30], leaves[31] = leaves[31], leaves[30]
    with pytest.raises(LeafMismatch):
        run(log, leaves)


def test_rewritten_history_before_trusted_size() -> None:
    log = signed_log()
    with pytest.raises(ForkDetected) as e:
        run(log, checkpoints=((20, b"\x11" * 32),))
    assert e.value.data["size"] == 20


def test_account_comparison_names_account_and_node() -> None:
    log = mixed_log()
    states = run(log).account_states()
    aid = next(iter(states))
    states[aid] = states[aid][:-9] + b"\x01" + states[aid][-8:]
    with pytest.raises(BalanceMismatch) as e:
        compare_accounts(states, log.account_states(), "node-x")
    assert "node-x" in str(e.value) and e.value.exit_code == 14


def test_checkpoint_signature_and_trust_rules() -> None:
    log = signed_log()
    note = log.note()
    cp = verify_note(note, [log.signer.verifier], "sovledger/test", "n1")
    other = Signer.generate("test/node-9")
    with pytest.raises(CheckpointSignatureError, match="none of them trusted"):
        verify_note(note, [other.verifier], None, "n1")
    forged = note.replace(note.split("— ")[1][20:24], "AAAA")
    with pytest.raises(CheckpointSignatureError):
        verify_note(forged, [log.signer.verifier], None, "n1")
    with pytest.raises(CheckpointSignatureError, match="origin"):
        verify_note(note, [log.signer.verifier], "sovledger/elsewhere", "n1")
    bigger = TrustedCheckpoint(cp.size + 1, cp.root, note)
    with pytest.raises(RollbackDetected):
        check_against_trusted(cp, note, bigger, "n1", None)
    with pytest.raises(ForkDetected):
        check_against_trusted(cp, note, TrustedCheckpoint(cp.size, b"\x00" * 32, note), "n1", None)
    assert "same tree" in check_against_trusted(cp, note, TrustedCheckpoint(cp.size, cp.root, note), "n1", None)


def test_export_round_trip_and_truncated_file() -> None:
    log = signed_log()
    buf = io.BytesIO()
    write_export(buf, {"checkpoint_note": log.note()}, log.headers(), log.leaves())
    exp = read_export(buf.getvalue())
    assert exp.complete and exp.headers == log.headers() and exp.leaves == log.leaves()
    cut = read_export(buf.getvalue()[:-500])
    assert not cut.complete and len(cut.leaves) < len(log.leaves())
    with pytest.raises(UsageError):
        read_export(b"not an export")


def test_trust_store_atomic_save_and_validation(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "t.json"
    store = TrustStore("sovledger/test", [Signer.generate("a").verifier.to_string()], [PSP.verifier.to_string()],
                       TrustedCheckpoint(5, b"\x01" * 32, "note"))
    trustmod.save(path, store)
    again = trustmod.load(path)
    assert again.to_json() == store.to_json()
    assert not list(path.parent.glob(".*tmp"))
    path.write_text('{"version": 1, "origin": "x", "node_keys": ["garbage"]}')
    with pytest.raises(trustmod.TrustStoreError, match="malformed"):
        trustmod.load(path)


def test_parse_u128() -> None:
    assert parse_u128("0x10") == 16 and parse_u128("42") == 42
    with pytest.raises(UsageError):
        parse_u128("zz")
    with pytest.raises(UsageError):
        parse_u128(str(1 << 128))


def test_tree_mismatch_carries_block_and_range() -> None:
    log = mixed_log()
    leaves = log.leaves()
    raw = bytearray(leaves[12])
    raw[24 + 50] ^= 1  # an amount byte: framing intact, only the hash changes
    leaves[12] = bytes(raw)
    v = LogVerifier(locator=lambda first, hashes: [12])
    with pytest.raises(TreeMismatch) as e:
        for h, ls in iter_blocks(log.headers(), iter(leaves)):
            v.feed_block(h, ls)
    d = e.value.data
    assert d["first_index"] <= 12 < d["tree_size"] and d["suspects"] == [12] and "leaf 12" in str(e.value)


def test_replayed_balances_out_of_u128_range_name_the_account() -> None:
    """Recorded effects that release more than was pending drive a replayed account out of range:
    the state hash step names the block and the account instead of crashing."""
    v = LogVerifier()
    aid = (42).to_bytes(16, "little")
    assert v.balances.create(aid, bytes(64), 0)
    v.balances.add_packed(v.balances.index[aid], -5)
    with pytest.raises(BalanceMismatch, match="account 42 outside its u128 balances"):
        v._state_hash()
    v = LogVerifier()
    assert v.balances.create(aid, bytes(64), 0)
    v.balances.add_packed(v.balances.index[aid], 1 << 512)  # a sum past 4 × u128 is out of range too
    with pytest.raises(BalanceMismatch, match="account 42"):
        v._state_hash()


@cache
def plain_log_with_failures() -> MemLog:
    """Plain transfers where every seventh fails (unknown account 99, or zero amount): no effect, same bulk path."""
    log = MemLog()
    log.accounts(9)
    for b in range(4):
        log.transfers([xfer(1000 * (b + 1) + i, 99 if i % 14 == 0 else 1 + i % 9, 1 + (i * 4 + 1) % 9,
                            0 if i % 14 == 7 else 1 + i) for i in range(300) if i % 9 != (i * 4 + 1) % 9])
    return log


@cache
def plain_log() -> MemLog:
    """Blocks of plain single-phase transfers only (the verifier's bulk path), with u128 amounts whose
    per-account sums carry across every 32-bit limb."""
    log = MemLog()
    log.accounts(9)
    for b in range(4):
        log.transfers([xfer(1000 * (b + 1) + i, 1 + i % 9, 1 + (i * 4 + 1) % 9, (0xFFFF_FFFF << (32 * (i % 3))) + i)
                       for i in range(300) if i % 9 != (i * 4 + 1) % 9])
    return log


@pytest.mark.parametrize("failures", [False, True], ids=["all_ok", "with_failed_transfers"])
def test_plain_blocks_replay_in_bulk_and_match_the_exact_path(monkeypatch: pytest.MonkeyPatch, failures: bool) -> None:
    log = plain_log_with_failures() if failures else plain_log()
    calls: list[bool] = []
    bulk = LogVerifier._plain_run

    def spy(self: LogVerifier, joined: bytes, first: int, ts_first: int) -> bool:
        calls.append(bulk(self, joined, first, ts_first))
        return calls[-1]

    monkeypatch.setattr(LogVerifier, "_plain_run", spy)
    fast = run(log, psp=())
    assert calls == [True] * 4  # the four transfer blocks took the bulk path (the account block is not plain)
    compare_accounts(fast.account_states(), log.account_states(), "mem")
    monkeypatch.setattr(LogVerifier, "_plain_run", lambda *a: False)
    exact = run(log, psp=())
    assert exact.account_states() == fast.account_states() and exact.state_hash == fast.state_hash


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_single_byte_flip_in_a_plain_block_is_detected(data: st.DataObject) -> None:
    log = data.draw(st.sampled_from([plain_log, plain_log_with_failures]), label="log")()
    leaves = log.leaves()
    i = flip_one_byte(data, leaves, 9)  # after the accounts: a plain (or failed) transfer
    with pytest.raises(AuditFailure) as e:
        run(log, leaves, psp=())
    assert e.value.exit_code in (12, 14)
    assert f"leaf {i}" in str(e.value) or "block" in str(e.value)


def test_bulk_carry_out_of_u128_names_the_account() -> None:
    v = LogVerifier()
    aid = (7).to_bytes(16, "little")
    assert v.balances.create(aid, bytes(64), 0)
    v.balances.add_packed(0, ((1 << 128) - 1) << 128)  # debits_posted at its maximum
    v._state_hash()
    one = np.ones(1, np.uint64)
    v.balances.add_posted(np.zeros(1, np.intp), np.zeros(1, np.intp), one, 0 * one)
    with pytest.raises(BalanceMismatch, match="account 7 outside its u128 balances"):
        v._state_hash()


def test_a_changed_leaf_is_named_before_what_replaying_it_breaks() -> None:
    """Rewrite leaf 0's account id to the id a later leaf creates: replaying the block would fail at
    the later leaf ("created twice"), but the cause to report is the changed leaf 0, which no longer
    matches the block's Merkle root."""
    from ledger.codec import LEAF_HEADER_SIZE
    from ledger.types import EventKind

    log = signed_log()
    leaves = log.leaves()
    creates = [k for k, raw in enumerate(leaves) if raw[1] == EventKind.CREATE_ACCOUNT]
    first, later = creates[0], creates[2]
    raw = bytearray(leaves[first])
    raw[LEAF_HEADER_SIZE:LEAF_HEADER_SIZE + 16] = leaves[later][LEAF_HEADER_SIZE:LEAF_HEADER_SIZE + 16]
    leaves[first] = bytes(raw)
    with pytest.raises(TreeMismatch) as e:
        run(log, leaves)
    assert e.value.exit_code == 12 and "differs from what was committed" in str(e.value)
    assert e.value.data["first_index"] <= first < e.value.data["tree_size"]


def test_cosigned_checkpoint_behind_the_trusted_one_is_no_rollback() -> None:
    """`audit verify --witnesses`: witnesses cosign with a lag, so the region's cosigned checkpoint may be
    older than the trusted one. Not a rollback, as long as it is a prefix of the trusted tree and the
    node's own checkpoint still extends the trusted one; a bad proof stays InconsistentLog, and the
    node's own checkpoint below trusted stays RollbackDetected."""
    from ledger.hashing import leaf_hash
    from ledger.merkle import MemoryNodes, consistency_proof

    log = MemLog()
    log.accounts(4)
    log.transfers([xfer(10, 1, 2, 5)])
    notes = [log.note()]  # the cosigned one (witnesses lag)
    log.transfers([xfer(11 + i, 2, 3, 7) for i in range(5)])
    notes.append(log.note())  # the trusted one (a plain checkpoint, e.g. from `audit trust init`)
    log.transfers([xfer(20 + i, 3, 4, 9) for i in range(3)])
    notes.append(log.note())  # the node's own, newest
    cosigned, at_trust, own = (verify_note(n, [log.signer.verifier], "sovledger/test", "n1") for n in notes)
    assert cosigned.size < at_trust.size < own.size
    trusted = TrustedCheckpoint(at_trust.size, at_trust.root, notes[1])
    nodes = MemoryNodes([leaf_hash(raw) for raw in log.leaves()])
    asked: list[tuple[int, int]] = []

    def consistency(first: int, second: int) -> list[bytes]:
        asked.append((first, second))
        return consistency_proof(nodes, first, second)

    with pytest.raises(RollbackDetected):  # without witnesses the plain rule is unchanged
        check_against_trusted(cosigned, notes[0], trusted, "n1", consistency)
    text = check_cosigned_against_trusted(cosigned, notes[0], own, notes[2], trusted, "n1", consistency)
    assert f"cosigned checkpoint (size {cosigned.size}) is behind your trusted checkpoint (size {trusted.size})" \
        in text and "wait for the witnesses" in text
    assert asked == [(trusted.size, own.size), (cosigned.size, trusted.size)]  # both proofs fetched and checked
    with pytest.raises(RollbackDetected):  # the node's own checkpoint below trusted is still a rollback
        check_cosigned_against_trusted(cosigned, notes[0], cosigned, notes[0], trusted, "n1", consistency)

    def bad_prefix(first: int, second: int) -> list[bytes]:
        proof = consistency_proof(nodes, first, second)
        return [b"\x00" * 32, *proof[1:]] if first == cosigned.size else proof

    with pytest.raises(InconsistentLog, match="not a prefix of the trusted checkpoint"):
        check_cosigned_against_trusted(cosigned, notes[0], own, notes[2], trusted, "n1", bad_prefix)
    forked = TrustedCheckpoint(trusted.size, b"\x07" * 32, notes[1])  # a trusted root the node's log lacks
    with pytest.raises(InconsistentLog):
        check_cosigned_against_trusted(cosigned, notes[0], own, notes[2], forked, "n1", consistency)
    with pytest.raises(InconsistentLog):  # the node's own checkpoint must extend the trusted tree too
        check_cosigned_against_trusted(cosigned, notes[0], own, notes[2], trusted, "n1",
                                       lambda a, b: [] if a == trusted.size else consistency(a, b))
    caught_up = TrustedCheckpoint(cosigned.size, cosigned.root, notes[0])  # not behind: the usual check
    assert "same tree" in check_cosigned_against_trusted(cosigned, notes[0], own, notes[2], caught_up, "n1",
                                                         consistency)
