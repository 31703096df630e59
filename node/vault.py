"""The PII vault of one replica: put, disclose, accept a peer's copy, shred on erasure.

Personal data never enters the log. A subject's record (canonical PII, ledger/pii.py) and its
random salt are sealed under a fresh per-subject data key; the sealed record and the key are kept
in different files (node/vault_store.py) and replicated peer to peer inside the region (node/
vault_service.py), never through Raft. Erasure is a log entry (commitment + reason); when a replica
applies it — from the log or from a snapshot — the vault overwrites the key and the record in
place. docs/privacy.md explains the whole design.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ledger.pii import SALT_SIZE, PiiError, PiiRecord, commit, decode_canonical_pii
from node.vault_store import (
    KEY_SIZE,
    KeyStore,
    RecordFiles,
    SealedRecord,
    SubjectErased,
    SubjectUnknown,
    Tombstones,
    VaultCorrupt,
    VaultError,
    seal,
    unseal,
)

#: commitment -> (block height, reason) of its erasure event, from the ledger's applied state
ErasedLookup = Callable[[bytes], "tuple[int, int] | None"]


class SubjectExists(VaultError):
    def __init__(self, subject_id: int) -> None:
        super().__init__(f"subject {subject_id:#x} already holds different data; records are immutable — "
                         "erase it or use a new subject id")


class NotYourSubject(VaultError):
    def __init__(self, subject_id: int) -> None:
        super().__init__(f"subject {subject_id:#x} belongs to another PSP")


@dataclass(frozen=True, slots=True)
class Disclosure:
    """What an authorised reader gets: the record, its salt and the commitment the log carries."""

    record: PiiRecord
    salt: bytes
    commitment: bytes
    psp_id: int


class Vault:
    def __init__(self, directory: Path, erased: ErasedLookup) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._keys = KeyStore(directory / "keys.bin")
        self._records = RecordFiles(directory / "records")
        self._tombs = Tombstones(directory / "erased.bin")
        self._erased = erased
        self._lock = threading.RLock()
        self._by_commitment: dict[bytes, int] = {}
        for subject in self._keys.subjects():
            rec = self._records.read(subject)
            if rec is not None:
                self._by_commitment[rec.commitment] = subject

    def close(self) -> None:
        self._keys.close()

    # -- writes ---------------------------------------------------------------------------------

    def put(self, subject_id: int, fields: Mapping[str, str], psp_id: int,
            salt: bytes | None = None) -> tuple[SealedRecord, bytes, bool]:
        """Seal and store a new subject; (sealed record, data key, created). An identical retry is
        not an error (created False); different data for a known subject is."""
        record = PiiRecord(subject_id, dict(fields))
        canonical = record.canonical()  # raises PiiError naming the field
        with self._lock:
            self._refuse_erased(subject_id)
            existing = self._open(subject_id)
            if existing is not None:
                disclosure, sealed, key = existing
                same = disclosure.record.canonical() == canonical and disclosure.psp_id == psp_id
                if not same or (salt is not None and salt != disclosure.salt):
                    raise SubjectExists(subject_id)
                return sealed, key, False
            salt = salt if salt is not None else os.urandom(SALT_SIZE)
            if len(salt) != SALT_SIZE:
                raise PiiError(f"salt must be {SALT_SIZE} bytes, got {len(salt)}")
            key = os.urandom(KEY_SIZE)
            sealed = seal(key, subject_id, commit(record, salt), psp_id, salt + canonical)
            self._store(sealed, key)
            return sealed, key, True

    def accept(self, sealed: SealedRecord, key: bytes) -> bool:
        """A peer's copy (replication or catch-up). Refused (False) if the subject was erased."""
        plain = unseal(key, sealed)  # authenticates: a damaged copy is never stored
        if commit(decode_canonical_pii(plain[SALT_SIZE:]), plain[:SALT_SIZE]) != sealed.commitment:
            raise VaultCorrupt(f"copy of subject {sealed.subject_id:#x} does not match its commitment")
        with self._lock:
            if self._tombs.get(sealed.subject_id) is not None:
                return False
            erased = self._erased(sealed.commitment)
            if erased is not None:
                self._tombs.add(sealed.subject_id, sealed.commitment, erased[1], erased[0])
                return False
            if self._keys.get(sealed.subject_id) is None:
                self._store(sealed, key)
            return True

    def _store(self, sealed: SealedRecord, key: bytes) -> None:
        # record first, key second: a crash in between leaves a ciphertext nobody can open
        self._records.write(sealed)
        self._keys.put(sealed.subject_id, key)
        self._by_commitment[sealed.commitment] = sealed.subject_id

    def shred(self, commitment: bytes, reason: int, block: int) -> int | None:
        """Apply an erasure event: destroy key and record of the subject with this commitment."""
        with self._lock:
            subject = self._by_commitment.pop(commitment, None)
            if subject is None:
                return None
            self._tombs.add(subject, commitment, reason, block)
            self._keys.destroy(subject)
            self._records.shred(subject)
            return subject

    def shred_all(self, erasures: Iterable[tuple[int, bytes, int]]) -> list[int]:
        """(block height, commitment, reason) events from the log, applied idempotently."""
        return [s for block, c, reason in erasures if (s := self.shred(c, reason, block)) is not None]

    # -- reads ----------------------------------------------------------------------------------

    def disclose(self, subject_id: int, psp_id: int | None = None) -> Disclosure:
        """The subject's data for an authorised reader; psp_id restricts to that PSP's subjects."""
        with self._lock:
            self._refuse_erased(subject_id)
            opened = self._open(subject_id)
            if opened is None:
                raise SubjectUnknown(subject_id)
            disclosure = opened[0]
            erased = self._erased(disclosure.commitment)
            if erased is not None:  # the log says erased but this replica has not shredded yet
                self.shred(disclosure.commitment, erased[1], erased[0])
                self._refuse_erased(subject_id)
            if psp_id is not None and psp_id != disclosure.psp_id:
                raise NotYourSubject(subject_id)
            return disclosure

    def commitment_of(self, subject_id: int) -> bytes:
        with self._lock:
            self._refuse_erased(subject_id)
            rec = self._records.read(subject_id)
            if rec is None or self._keys.get(subject_id) is None:
                raise SubjectUnknown(subject_id)
            return rec.commitment

    def inventory_page(self, start: int, limit: int) -> tuple[list[int], int | None]:
        """One page of the subjects this replica holds a key for, in key-file slot order from slot
        ``start``: (subjects, the slot the next page starts at, or None after the last page). A subject
        put while pages are read may land in a slot already passed; the next catch-up round sees it."""
        with self._lock:
            subjects, at = self._keys.page(start, limit, scan_max=16 * limit)
            return subjects, (at if at < self._keys.slot_count() else None)

    def holds(self, subject_id: int) -> bool:
        """Whether this replica holds the subject's key."""
        with self._lock:
            return subject_id in self._keys

    def export(self, subject_id: int) -> tuple[SealedRecord, bytes] | None:
        with self._lock:
            rec, key = self._records.read(subject_id), self._keys.get(subject_id)
            return (rec, key) if rec is not None and key is not None else None

    def _refuse_erased(self, subject_id: int) -> None:
        tomb = self._tombs.get(subject_id)
        if tomb is not None:
            raise SubjectErased(subject_id, tomb[1], tomb[2])

    def _open(self, subject_id: int) -> tuple[Disclosure, SealedRecord, bytes] | None:
        rec, key = self._records.read(subject_id), self._keys.get(subject_id)
        if rec is None or key is None:
            return None
        plain = unseal(key, rec)
        salt, canonical = plain[:SALT_SIZE], plain[SALT_SIZE:]
        return Disclosure(decode_canonical_pii(canonical), salt, rec.commitment, rec.psp_id), rec, key
