"""The signer guard file (node/guard_file.py): two checksummed slots, one pwrite per store.

Pure encode/decode (round trip, bit flips in every field, torn and corrupt slots, wrong size), the
writer on a real file (slot alternation, no rename, a torn last write falls back to the previous
guard), migration of the old ``signer-guard.json``, and the refusals built on it (startup, signer).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.note import Signer
from ledger.reader import LedgerReader
from ledger.types import Account
from node.guard_file import (
    FILE_SIZE,
    GUARD_FILE,
    LEGACY_GUARD_FILE,
    SLOT_OFFSETS,
    SLOT_SIZE,
    GuardFile,
    GuardRecord,
    GuardUnreadable,
    decode_file,
    decode_legacy,
    decode_slot,
    encode_file,
    encode_slot,
    read_guard,
)
from node.signing import CheckpointService, InconsistentCheckpoint
from node.startup import StartupRefused, _load_guard
from tests.ledger.harness import Ledger

U64 = st.integers(min_value=0, max_value=2**64 - 1)
ROOTS = st.binary(min_size=32, max_size=32)
RECORDS = st.builds(GuardRecord, U64, U64, ROOTS)


def _file(a: bytes, b: bytes) -> bytes:
    raw = bytearray(FILE_SIZE)
    raw[SLOT_OFFSETS[0]:SLOT_OFFSETS[0] + SLOT_SIZE] = a
    raw[SLOT_OFFSETS[1]:SLOT_OFFSETS[1] + SLOT_SIZE] = b
    return bytes(raw)


@given(RECORDS)
def test_slot_round_trip(rec: GuardRecord) -> None:
    raw = encode_slot(rec)
    assert len(raw) == SLOT_SIZE
    assert decode_slot(raw) == rec


@given(RECORDS)
def test_new_file_holds_the_record_in_slot_a(rec: GuardRecord) -> None:
    raw = encode_file(rec)
    assert len(raw) == FILE_SIZE
    assert decode_file(raw) == (rec, 0)


def test_slot_bytes_are_as_documented() -> None:
    rec = GuardRecord(7, 2050, bytes(range(32)))
    raw = encode_slot(rec)
    assert raw[:4] == b"SLGD"
    assert raw[4:6] == (1).to_bytes(2, "little") and raw[6:8] == b"\0\0"
    assert raw[8:16] == (7).to_bytes(8, "little") and raw[16:24] == (2050).to_bytes(8, "little")
    assert raw[24:56] == bytes(range(32))
    assert raw[56:64] == blake3.blake3(raw[:56]).digest()[:8]


@given(RECORDS, st.integers(min_value=0, max_value=SLOT_SIZE * 8 - 1))
def test_any_bit_flip_in_a_slot_makes_it_invalid(rec: GuardRecord, bit: int) -> None:
    raw = bytearray(encode_slot(rec))
    raw[bit // 8] ^= 1 << (bit % 8)
    assert decode_slot(bytes(raw)) is None


@pytest.mark.parametrize("field,offset", [("magic", 0), ("version", 4), ("reserved", 6), ("seq", 8),
                                          ("size", 16), ("root", 24), ("checksum", 56)])
def test_a_flipped_field_falls_back_to_the_other_slot(field: str, offset: int) -> None:
    old, new = GuardRecord(4, 100, b"\x01" * 32), GuardRecord(5, 120, b"\x02" * 32)
    b = bytearray(encode_slot(new))
    b[offset] ^= 0x80
    assert decode_file(_file(encode_slot(old), bytes(b))) == (old, 0), field


@given(st.integers(min_value=0, max_value=2**62), U64, ROOTS, U64, ROOTS,
       st.integers(min_value=0, max_value=SLOT_SIZE - 1))
def test_a_torn_slot_write_leaves_the_previous_guard(seq: int, size: int, root: bytes, size2: int,
                                                     root2: bytes, cut: int) -> None:
    """Slot A holds seq+1, slot B seq; the write of seq+2 into B stopped after ``cut`` bytes."""
    prev, cur = GuardRecord(seq, size, root), GuardRecord(seq + 1, size, root)
    nxt = GuardRecord(seq + 2, size2, root2)
    torn = encode_slot(nxt)[:cut] + encode_slot(prev)[cut:]
    want = nxt if torn == encode_slot(nxt) else cur
    assert decode_file(_file(encode_slot(cur), torn))[0] == want


def test_highest_sequence_wins_in_either_slot() -> None:
    lo, hi = GuardRecord(8, 1, b"\x03" * 32), GuardRecord(9, 2, b"\x04" * 32)
    assert decode_file(_file(encode_slot(lo), encode_slot(hi))) == (hi, 1)
    assert decode_file(_file(encode_slot(hi), encode_slot(lo))) == (hi, 0)


def test_both_slots_corrupt_or_wrong_size_is_refused() -> None:
    rec = GuardRecord(3, 10, b"\x05" * 32)
    bad = bytearray(encode_slot(rec))
    bad[20] ^= 1
    with pytest.raises(GuardUnreadable, match="neither slot"):
        decode_file(_file(bytes(bad), bytes(bad)))
    with pytest.raises(GuardUnreadable, match="neither slot"):
        decode_file(bytes(FILE_SIZE))
    for size in (0, FILE_SIZE - 1, FILE_SIZE + 1):
        with pytest.raises(GuardUnreadable, match="bytes, not 1024"):
            decode_file(encode_file(rec)[:size] if size <= FILE_SIZE else encode_file(rec) + b"\0")


# -- the writer on a real file -------------------------------------------------------------------


def test_stores_alternate_slots_in_place(tmp_path: Path) -> None:
    path = tmp_path / GUARD_FILE
    g = GuardFile(path)
    assert g.record is None and not path.exists()
    g.store(1, b"\x10" * 32)
    inode = path.stat().st_ino
    first = path.read_bytes()
    assert decode_file(first) == (GuardRecord(1, 1, b"\x10" * 32), 0)
    g.store(5, b"\x11" * 32)
    second = path.read_bytes()
    assert second[:SLOT_SIZE] == first[:SLOT_SIZE]  # slot A untouched: B took the write
    assert decode_file(second) == (GuardRecord(2, 5, b"\x11" * 32), 1)
    g.store(9, b"\x12" * 32)
    assert decode_file(path.read_bytes()) == (GuardRecord(3, 9, b"\x12" * 32), 0)
    assert path.stat().st_ino == inode and path.stat().st_size == FILE_SIZE  # no rename, no growth
    assert not path.with_name(GUARD_FILE + ".tmp").exists()
    g.close()
    reopened = GuardFile(path)  # a restart continues the sequence in the other slot
    assert reopened.record == GuardRecord(3, 9, b"\x12" * 32)
    reopened.store(11, b"\x13" * 32)
    assert decode_file(path.read_bytes()) == (GuardRecord(4, 11, b"\x13" * 32), 1)
    reopened.close()


def test_a_torn_last_write_on_disk_reads_as_the_previous_guard(tmp_path: Path) -> None:
    path = tmp_path / GUARD_FILE
    g = GuardFile(path)
    g.store(3, b"\x20" * 32)
    g.store(4, b"\x21" * 32)  # went to slot B
    g.close()
    with open(path, "r+b") as f:  # the power failed half way through that slot write
        f.seek(SLOT_OFFSETS[1] + 30)
        f.write(b"\xff" * 10)
    assert read_guard(path) == GuardRecord(1, 3, b"\x20" * 32)
    again = GuardFile(path)
    again.store(4, b"\x21" * 32)  # overwrites the torn slot, not the good one
    assert decode_file(path.read_bytes()) == (GuardRecord(2, 4, b"\x21" * 32), 1)
    again.close()


def test_corrupt_guard_refuses_start(tmp_path: Path) -> None:
    path = tmp_path / GUARD_FILE
    path.write_bytes(bytes(FILE_SIZE))
    with pytest.raises(StartupRefused, match=r"signer guard is unreadable.*neither slot"):
        _load_guard(path)
    path.write_bytes(encode_file(GuardRecord(1, 2, b"\x00" * 32))[:600])
    with pytest.raises(StartupRefused, match="600 bytes, not 1024"):
        _load_guard(path)
    with pytest.raises(GuardUnreadable):
        GuardFile(path)  # the signer refuses it too


# -- migration from signer-guard.json ------------------------------------------------------------


def _legacy(directory: Path, size: int, root: bytes) -> Path:
    p = directory / LEGACY_GUARD_FILE
    p.write_text(json.dumps({"size": size, "root": base64.b64encode(root).decode(), "origin": "sovledger/eu"}))
    return p


def test_legacy_json_is_still_read(tmp_path: Path) -> None:
    _legacy(tmp_path, 42, b"\x30" * 32)
    assert read_guard(tmp_path / GUARD_FILE) == GuardRecord(1, 42, b"\x30" * 32)
    assert _load_guard(tmp_path / GUARD_FILE) == (42, b"\x30" * 32)
    (tmp_path / LEGACY_GUARD_FILE).write_text("{not json")
    with pytest.raises(StartupRefused, match=rf"unreadable.*{LEGACY_GUARD_FILE}"):
        _load_guard(tmp_path / GUARD_FILE)
    with pytest.raises(GuardUnreadable):
        decode_legacy(json.dumps({"size": 1, "root": base64.b64encode(b"short").decode()}))


def _ledger_with_entries() -> Ledger:
    led = Ledger()
    led.accounts(Account(id=1, ledger=1, code=1), Account(id=2, ledger=1, code=1))
    return led


def test_signer_migrates_the_legacy_guard_and_keeps_its_protection(tmp_path: Path) -> None:
    led = _ledger_with_entries()
    reader = LedgerReader(led.store)
    signer = Signer.generate("eu/node-1")
    head = led.state.head
    assert head.tree_size > 0
    _legacy(tmp_path, head.tree_size, reader.root_at(head.tree_size))
    svc = CheckpointService(reader, signer, "sovledger/eu", tmp_path / GUARD_FILE)
    assert not (tmp_path / LEGACY_GUARD_FILE).exists()
    assert read_guard(tmp_path / GUARD_FILE) == GuardRecord(1, head.tree_size, reader.root_at(head.tree_size))
    svc.on_start(head)  # consistent with the migrated guard: signs
    assert svc.latest().size == head.tree_size
    svc.close()
    # a guard (migrated from JSON) above the store's size: the signer refuses, as before
    big = tmp_path / "big"
    big.mkdir()
    _legacy(big, head.tree_size + 5, b"\x40" * 32)
    svc2 = CheckpointService(reader, signer, "sovledger/eu", big / GUARD_FILE)
    with pytest.raises(InconsistentCheckpoint, match="already signed size"):
        svc2.on_start(head)
    assert read_guard(big / GUARD_FILE) == GuardRecord(1, head.tree_size + 5, b"\x40" * 32)
    svc2.close()


def test_signer_writes_one_slot_per_new_checkpoint(tmp_path: Path) -> None:
    led = _ledger_with_entries()
    reader = LedgerReader(led.store)
    svc = CheckpointService(reader, Signer.generate("eu/node-1"), "sovledger/eu", tmp_path / GUARD_FILE)
    svc.on_start(led.state.head)
    before = read_guard(tmp_path / GUARD_FILE)
    assert before is not None and before.size == led.state.head.tree_size
    led.accounts(Account(id=3, ledger=1, code=1))
    svc.on_block(led.state.head)
    after = read_guard(tmp_path / GUARD_FILE)
    assert after is not None and after.seq == before.seq + 1 and after.size == led.state.head.tree_size
    assert os.path.getsize(tmp_path / GUARD_FILE) == FILE_SIZE
    svc.close()


# -- restore (sovledger/backup.py) reads the guard through the same module ----------------------


@pytest.mark.parametrize("fmt", ["bin", "json"])
def test_restore_refuses_a_backup_below_the_guard_and_force_moves_it_aside(tmp_path: Path, fmt: str) -> None:
    from sovledger.backup import BackupError, _check_guard

    if fmt == "bin":
        g = GuardFile(tmp_path / GUARD_FILE)
        g.store(500, b"\x50" * 32)
        g.close()
        name = GUARD_FILE
    else:
        _legacy(tmp_path, 500, b"\x50" * 32)
        name = LEGACY_GUARD_FILE
    _check_guard(tmp_path, {"tree_size": 500}, force=False)  # not below: fine
    with pytest.raises(BackupError, match="already signed a tree of 500 entries"):
        _check_guard(tmp_path, {"tree_size": 499}, force=False)
    assert (tmp_path / name).exists()
    _check_guard(tmp_path, {"tree_size": 499}, force=True)
    assert not (tmp_path / name).exists() and (tmp_path / f"{name}.before-restore").exists()
    assert read_guard(tmp_path / GUARD_FILE) is None


def test_restore_refuses_an_unreadable_guard(tmp_path: Path) -> None:
    from sovledger.backup import BackupError, _check_guard

    (tmp_path / GUARD_FILE).write_bytes(b"\0" * 10)
    with pytest.raises(BackupError, match="signer guard is unreadable"):
        _check_guard(tmp_path, {"tree_size": 1}, force=False)
