"""The vault on one replica (real files): sealing, disclosure, peer copies, and shredding on erasure."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.pii import ErasureReason, PiiError, commit, verify_commitment
from node.vault import NotYourSubject, SubjectExists, Vault
from node.vault_store import SLOT_SIZE, SealedRecord, SubjectErased, SubjectUnknown, VaultCorrupt
from tests.pii.helpers import files_containing

FIELDS = {"name": "Zofia Wiśniewska-Plaintext", "email": "zofia@example.org", "country": "PL"}
ERASED: dict[bytes, tuple[int, int]] = {}


def vault(path: Path) -> Vault:
    return Vault(path, ERASED.get)


def test_put_and_disclose_round_trip_and_commitment(tmp_path: Path) -> None:
    v = vault(tmp_path / "v")
    sealed, key, created = v.put(11, FIELDS, psp_id=3)
    assert created and len(key) == 32
    d = v.disclose(11)
    assert dict(d.record.fields) == FIELDS and d.psp_id == 3 and d.commitment == sealed.commitment
    verify_commitment(d.record, d.salt, sealed.commitment)
    # nothing readable on disk: neither a field value nor … (the key is in keys.bin only)
    assert files_containing(tmp_path, [b"Plaintext", b"zofia@example.org"]) == []
    assert [p.name for p, _ in files_containing(tmp_path, [key])] == ["keys.bin"]


def test_put_is_idempotent_and_immutable(tmp_path: Path) -> None:
    v = vault(tmp_path / "v")
    salt = bytes(range(32))
    first = v.put(11, FIELDS, 3, salt)
    again = v.put(11, FIELDS, 3, salt)
    assert not again[2] and again[0] == first[0]
    assert first[0].commitment == commit(v.disclose(11).record, salt)
    with pytest.raises(SubjectExists):
        v.put(11, {**FIELDS, "country": "DE"}, 3)
    with pytest.raises(PiiError, match="field name"):
        v.put(12, {"Bad": "x"}, 3)


def test_psp_sees_only_its_subjects(tmp_path: Path) -> None:
    v = vault(tmp_path / "v")
    v.put(11, FIELDS, 3)
    with pytest.raises(NotYourSubject):
        v.disclose(11, psp_id=4)
    with pytest.raises(SubjectUnknown):
        v.disclose(99)


def test_survives_reopen(tmp_path: Path) -> None:
    v = vault(tmp_path / "v")
    sealed, _, _ = v.put(11, FIELDS, 3)
    v.close()
    again = vault(tmp_path / "v")
    assert again.disclose(11).commitment == sealed.commitment


def test_shred_leaves_no_key_and_no_record_and_answers_erased(tmp_path: Path) -> None:
    v = vault(tmp_path / "v")
    sealed, key, _ = v.put(11, FIELDS, 3)
    other, other_key, _ = v.put(12, {"name": "Keep Me"}, 3)
    assert v.shred(sealed.commitment, ErasureReason.SUBJECT_REQUEST, 42) == 11
    assert files_containing(tmp_path, [key, sealed.ciphertext, sealed.nonce + sealed.ciphertext[:8]]) == []
    keys = (tmp_path / "v" / "keys.bin").read_bytes()
    assert len(keys) == 2 * SLOT_SIZE and bytes(SLOT_SIZE) in keys  # the slot is zeros, in place
    with pytest.raises(SubjectErased, match="erased") as e:
        v.disclose(11)
    assert e.value.block == 42 and "subject_request" in str(e.value)
    assert v.shred(sealed.commitment, 1, 42) is None  # idempotent
    assert v.disclose(12).commitment == other.commitment  # the neighbour is intact
    v.close()
    reopened = vault(tmp_path / "v")
    with pytest.raises(SubjectErased):
        reopened.disclose(11)
    with pytest.raises(SubjectErased):  # an erased subject id is never taken back
        reopened.put(11, FIELDS, 3)
    assert reopened.accept(sealed, key) is False
    _ = other_key


def v_plain(v: Vault) -> bytes:
    d = v.disclose(11)
    return d.salt + d.record.canonical()


def test_accept_peer_copy_and_refuse_damage_or_erased(tmp_path: Path) -> None:
    a, b = vault(tmp_path / "a"), vault(tmp_path / "b")
    sealed, key, _ = a.put(11, FIELDS, 3)
    assert b.accept(sealed, key) is True
    assert b.disclose(11).record == a.disclose(11).record
    damaged = SealedRecord(11, sealed.commitment, 4, sealed.nonce, sealed.ciphertext)  # psp id altered
    c = vault(tmp_path / "c")
    with pytest.raises(VaultCorrupt):
        c.accept(damaged, key)
    from node.vault_store import seal

    forged = seal(key, 11, b"\x01" * 32, 3, v_plain(a))  # authentic under the key, wrong commitment
    with pytest.raises(VaultCorrupt, match="commitment"):
        c.accept(forged, key)
    ERASED[sealed.commitment] = (7, 1)
    try:
        assert c.accept(sealed, key) is False  # the log already erased it: never stored
        with pytest.raises(SubjectErased):
            c.disclose(11)
        with pytest.raises(SubjectErased):  # b has it, but the log says erased: shredded on access
            b.disclose(11)
        assert files_containing(tmp_path / "b", [key]) == []
    finally:
        ERASED.clear()
