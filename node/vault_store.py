"""The vault's files on one replica: data keys, encrypted records, erasure tombstones.

Layout under ``DATA/vault/`` (docs/privacy.md, docs/formats.md "Personal data"):

- ``keys.bin``: the per-subject data keys, fixed 64-byte slots (state u8, 15 zero bytes, subject
  id 16, key 32). Erasure overwrites the slot in place with zeros and fsyncs: the key's bytes are
  gone from the file's blocks, not merely unlinked. No data key is ever written anywhere else.
- ``records/<subject hex>.rec``: one file per subject: header (tag, subject id, commitment, psp
  id, nonce) then the AEAD ciphertext of salt ‖ canonical PII, the header as associated data.
  Erasure overwrites the file with zeros, fsyncs, unlinks it.
- ``erased.bin``: tombstones (subject id 16, commitment 32, reason u16, block height u64), so a
  vault answers "erased" rather than "unknown" and never takes the subject back from a peer.

Not a database on purpose: LMDB and every log-structured store keep freed pages with old bytes
in them, so overwrite-in-place on fixed offsets is the only layout where "delete" means "gone".
"""

from __future__ import annotations

import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ledger.pii import ErasureReason
from node.durable import fsync_dir

KEY_SIZE: Final = 32
NONCE_SIZE: Final = 12
SLOT: Final = struct.Struct("<B15s16s32s")  # state, reserved, subject id, data key
SLOT_SIZE: Final = SLOT.size  # 64
SLOT_USED: Final = 1
RECORD_TAG: Final = b"SLVR\x01"
RECORD_HEADER: Final = struct.Struct("<5s16s32sI12s")  # tag, subject id, commitment, psp id, nonce
TOMBSTONE: Final = struct.Struct("<16s32sHQ")  # subject id, commitment, reason, block height of the erasure
RECORD_FILE_MAX: Final = 64 << 10


class VaultError(Exception):
    """Base class of the vault's expected errors."""


class SubjectUnknown(VaultError):
    def __init__(self, subject_id: int) -> None:
        super().__init__(f"subject {subject_id:#x} is not in this region's vault")


class SubjectErased(VaultError):
    def __init__(self, subject_id: int, reason: int, block: int) -> None:
        self.reason, self.block = reason, block
        name = ErasureReason(reason).name.lower() if reason in ErasureReason._value2member_map_ else str(reason)
        super().__init__(f"subject {subject_id:#x} was erased (reason {name}, erasure event in block {block}); "
                         "its data key and records are destroyed and cannot be disclosed")


class VaultCorrupt(VaultError):
    """A record failed authentication under its key: damaged on disk, never served."""


@dataclass(frozen=True, slots=True)
class SealedRecord:
    """One subject as it is stored and replicated: header fields and ciphertext (no key)."""

    subject_id: int
    commitment: bytes
    psp_id: int
    nonce: bytes
    ciphertext: bytes

    def header(self) -> bytes:
        return RECORD_HEADER.pack(RECORD_TAG, self.subject_id.to_bytes(16, "little"), self.commitment,
                                  self.psp_id, self.nonce)

    def encode(self) -> bytes:
        return self.header() + self.ciphertext

    @staticmethod
    def decode(raw: bytes) -> SealedRecord:
        if len(raw) <= RECORD_HEADER.size or len(raw) > RECORD_FILE_MAX:
            raise VaultCorrupt(f"sealed record is {len(raw)} bytes")
        tag, subject, commitment, psp_id, nonce = RECORD_HEADER.unpack_from(raw)
        if tag != RECORD_TAG:
            raise VaultCorrupt("sealed record has an unknown tag")
        return SealedRecord(int.from_bytes(subject, "little"), commitment, psp_id, nonce,
                            raw[RECORD_HEADER.size :])


def seal(key: bytes, subject_id: int, commitment: bytes, psp_id: int, plaintext: bytes) -> SealedRecord:
    nonce = os.urandom(NONCE_SIZE)  # one record per key: a random nonce never repeats under it
    head = SealedRecord(subject_id, commitment, psp_id, nonce, b"")
    return SealedRecord(subject_id, commitment, psp_id, nonce,
                        ChaCha20Poly1305(key).encrypt(nonce, plaintext, head.header()))


def unseal(key: bytes, rec: SealedRecord) -> bytes:
    from cryptography.exceptions import InvalidTag

    try:
        return ChaCha20Poly1305(key).decrypt(rec.nonce, rec.ciphertext, rec.header())
    except InvalidTag:
        raise VaultCorrupt(f"record of subject {rec.subject_id:#x} fails authentication") from None


class KeyStore:
    """Fixed-slot key file; every write and every erasure is fsynced before returning."""

    def __init__(self, path: Path) -> None:
        self._path = path
        new = not path.exists()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if new:
            fsync_dir(path.parent)
        self._slots: dict[int, int] = {}  # subject -> slot number
        self._by_slot: list[int | None] = []  # slot number -> subject (None: free)
        self._free: list[int] = []
        size = os.fstat(self._fd).st_size
        for n in range(size // SLOT_SIZE):
            state, _res, subject, _key = SLOT.unpack(os.pread(self._fd, SLOT_SIZE, n * SLOT_SIZE))
            if state == SLOT_USED:
                self._slots[int.from_bytes(subject, "little")] = n
                self._by_slot.append(int.from_bytes(subject, "little"))
            else:
                self._free.append(n)
                self._by_slot.append(None)
        self._count = size // SLOT_SIZE

    def close(self) -> None:
        os.close(self._fd)

    def subjects(self) -> list[int]:
        return list(self._slots)

    def __contains__(self, subject_id: int) -> bool:
        return subject_id in self._slots

    def page(self, start: int, limit: int, scan_max: int) -> tuple[list[int], int]:
        """Up to ``limit`` subjects in slot order from slot ``start``, looking at no more than ``scan_max``
        slots; and the slot to continue from (``slot_count()`` when the file is done)."""
        out: list[int] = []
        n = start
        end = min(len(self._by_slot), start + scan_max)
        while n < end and len(out) < limit:
            subject = self._by_slot[n]
            if subject is not None:
                out.append(subject)
            n += 1
        return out, n

    def slot_count(self) -> int:
        return len(self._by_slot)

    def get(self, subject_id: int) -> bytes | None:
        n = self._slots.get(subject_id)
        if n is None:
            return None
        return bytes(SLOT.unpack(os.pread(self._fd, SLOT_SIZE, n * SLOT_SIZE))[3])

    def put(self, subject_id: int, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError("a data key is 32 bytes")
        n = self._slots.get(subject_id)
        if n is None:
            n = self._free.pop() if self._free else self._count
            self._count = max(self._count, n + 1)
        os.pwrite(self._fd, SLOT.pack(SLOT_USED, bytes(15), subject_id.to_bytes(16, "little"), key), n * SLOT_SIZE)
        os.fsync(self._fd)
        self._slots[subject_id] = n
        if n == len(self._by_slot):
            self._by_slot.append(subject_id)
        else:
            self._by_slot[n] = subject_id

    def destroy(self, subject_id: int) -> bool:
        """Overwrite the subject's slot with zeros in place and fsync; True if there was one."""
        n = self._slots.pop(subject_id, None)
        if n is None:
            return False
        os.pwrite(self._fd, bytes(SLOT_SIZE), n * SLOT_SIZE)
        os.fsync(self._fd)
        self._free.append(n)
        self._by_slot[n] = None
        return True


class RecordFiles:
    """One sealed record per file, written atomically, shredded (zeros + fsync) before unlinking."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        directory.mkdir(parents=True, exist_ok=True)

    def _path(self, subject_id: int) -> Path:
        return self._dir / f"{subject_id:032x}.rec"

    def write(self, rec: SealedRecord) -> None:
        final = self._path(rec.subject_id)
        tmp = final.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(rec.encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_dir(self._dir)

    def read(self, subject_id: int) -> SealedRecord | None:
        try:
            return SealedRecord.decode(self._path(subject_id).read_bytes())
        except FileNotFoundError:
            return None

    def shred(self, subject_id: int) -> None:
        for path in (self._path(subject_id), self._path(subject_id).with_suffix(".tmp")):
            try:
                fd = os.open(path, os.O_WRONLY)
            except FileNotFoundError:
                continue
            try:
                os.pwrite(fd, bytes(os.fstat(fd).st_size), 0)
                os.fsync(fd)
            finally:
                os.close(fd)
            path.unlink()
        fsync_dir(self._dir)


class Tombstones:
    """Append-only list of erased subjects (no personal data: pseudonymous id, commitment, reason)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._by_subject: dict[int, tuple[bytes, int, int]] = {}
        raw = path.read_bytes() if path.exists() else b""
        for off in range(0, len(raw) - len(raw) % TOMBSTONE.size, TOMBSTONE.size):
            subject, commitment, reason, block = TOMBSTONE.unpack_from(raw, off)
            self._by_subject[int.from_bytes(subject, "little")] = (commitment, reason, block)
        self._lock = threading.Lock()

    def get(self, subject_id: int) -> tuple[bytes, int, int] | None:
        return self._by_subject.get(subject_id)

    def add(self, subject_id: int, commitment: bytes, reason: int, block: int) -> None:
        with self._lock:
            if subject_id in self._by_subject:
                return
            with open(self._path, "ab") as f:
                f.write(TOMBSTONE.pack(subject_id.to_bytes(16, "little"), commitment, reason, block))
                f.flush()
                os.fsync(f.fileno())
            self._by_subject[subject_id] = (commitment, reason, block)
