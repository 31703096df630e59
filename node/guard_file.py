"""The signer guard file: the last checkpoint (tree size, root) this node's key signed.

One module owns the format; the signer (node/signing.py), the startup checks (node/startup.py)
and backup/restore (sovledger/backup.py) all read it through here. ``docs/formats.md`` §6.2
gives the exact bytes.

``signer-guard.bin`` is a fixed 1024-byte file with two 64-byte slots, A at offset 0 and B at
offset 512 (different 512-byte sectors, so a torn write of one slot cannot touch the other).
A store overwrites the slot NOT holding the newest valid record with sequence number + 1: one
``pwrite`` + one ``fdatasync`` on a descriptor kept open, no rename. A reader takes the valid slot
with the highest sequence; a torn or corrupt slot is ignored (the other still holds the previous
guard, which is a sound — only older — guard). Both slots invalid, or a file of the wrong size,
is refused like an unreadable guard.

Data directories from before this format hold ``signer-guard.json``; it is read once, converted
to the binary file and removed (``open_guard``).
"""

from __future__ import annotations

import base64
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import blake3

from node.durable import fsync_dir

GUARD_FILE = "signer-guard.bin"
LEGACY_GUARD_FILE = "signer-guard.json"  # before the binary format: {"size", "root" (base64), "origin"}

MAGIC = b"SLGD"
VERSION = 1
SLOT_SIZE = 64
SLOT_OFFSETS = (0, 512)
FILE_SIZE = 1024
_BODY = struct.Struct("<4sHHQQ32s")  # magic, version, reserved (0), seq, tree size, root = 56 bytes
CHECKSUM_SIZE = 8  # the first 8 bytes of BLAKE3 over the 56 body bytes


class GuardUnreadable(Exception):
    """The guard file exists but holds no valid record (or cannot be read)."""


@dataclass(frozen=True, slots=True)
class GuardRecord:
    seq: int
    size: int
    root: bytes


def encode_slot(rec: GuardRecord) -> bytes:
    """The 64 bytes of one slot holding ``rec``."""
    if len(rec.root) != 32:
        raise ValueError(f"a guard root is 32 bytes, not {len(rec.root)}")
    body = _BODY.pack(MAGIC, VERSION, 0, rec.seq, rec.size, rec.root)
    return body + blake3.blake3(body).digest()[:CHECKSUM_SIZE]


def decode_slot(raw: bytes) -> GuardRecord | None:
    """The record in one slot, or None when the slot is torn, corrupt, empty or of another version."""
    if len(raw) != SLOT_SIZE:
        return None
    body, check = raw[:_BODY.size], raw[_BODY.size:]
    if blake3.blake3(body).digest()[:CHECKSUM_SIZE] != check:
        return None
    magic, version, reserved, seq, size, root = _BODY.unpack(body)
    if magic != MAGIC or version != VERSION or reserved != 0:
        return None
    return GuardRecord(seq, size, root)


def decode_file(raw: bytes) -> tuple[GuardRecord, int]:
    """The newest valid record of a whole guard file and the index (0 = A, 1 = B) of its slot."""
    if len(raw) != FILE_SIZE:
        raise GuardUnreadable(f"the guard file is {len(raw)} bytes, not {FILE_SIZE}")
    best: tuple[GuardRecord, int] | None = None
    for i, off in enumerate(SLOT_OFFSETS):
        rec = decode_slot(raw[off:off + SLOT_SIZE])
        if rec is not None and (best is None or rec.seq > best[0].seq):
            best = (rec, i)
    if best is None:
        raise GuardUnreadable("neither slot of the guard file holds a valid record (both torn or corrupt)")
    return best


def encode_file(rec: GuardRecord) -> bytes:
    """A new guard file: ``rec`` in slot A, the same guard with sequence ``rec.seq - 1`` in slot B."""
    raw = bytearray(FILE_SIZE)
    raw[0:SLOT_SIZE] = encode_slot(rec)
    raw[512:512 + SLOT_SIZE] = encode_slot(GuardRecord(max(rec.seq - 1, 0), rec.size, rec.root))
    return bytes(raw)


def decode_legacy(text: str) -> GuardRecord:
    """The record of an old ``signer-guard.json`` (sequence 1)."""
    try:
        data = json.loads(text)
        root = base64.b64decode(data["root"], validate=True)
        size = int(data["size"])
    except (ValueError, KeyError, TypeError) as e:
        raise GuardUnreadable(f"{type(e).__name__}: {e}") from e
    if len(root) != 32 or size < 0:
        raise GuardUnreadable(f"size {size} / root of {len(root)} bytes is not a guard")
    return GuardRecord(1, size, root)


def read_guard(path: Path) -> GuardRecord | None:
    """The guard at ``path`` (the binary file), else the legacy JSON next to it, else None.

    Read-only (startup checks, restore). Raises ``GuardUnreadable`` naming the file."""
    legacy = path.with_name(LEGACY_GUARD_FILE)
    try:
        if path.exists():
            return decode_file(path.read_bytes())[0]
        if legacy.exists():
            return decode_legacy(legacy.read_text())
    except GuardUnreadable as e:
        raise GuardUnreadable(f"{path if path.exists() else legacy}: {e}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise GuardUnreadable(f"{path if path.exists() else legacy}: {e}") from e
    return None


def guard_exists(path: Path) -> bool:
    return path.exists() or path.with_name(LEGACY_GUARD_FILE).exists()


class GuardFile:
    """The writer: created (or migrated from the legacy JSON) once, then one slot write per store."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        self._next_slot = 0
        self._seq = 0
        self.record = read_guard(path)
        if self.record is not None:
            self._seq = self.record.seq

    def store(self, size: int, root: bytes) -> None:
        """Make (size, root) the guard durably: one positioned write + fdatasync (creating the file once)."""
        rec = GuardRecord(self._seq + 1, size, root)
        if self._fd < 0 and not self.path.exists():
            self._create(rec)
        else:
            self._open()
            slot = encode_slot(rec)
            if os.pwrite(self._fd, slot, SLOT_OFFSETS[self._next_slot]) != SLOT_SIZE:
                raise OSError(f"short write to {self.path}")
            os.fdatasync(self._fd)
            self._next_slot ^= 1
        self._seq = rec.seq
        self.record = rec

    def migrate(self) -> None:
        """Convert a legacy ``signer-guard.json`` into the binary file and remove it (no-op otherwise)."""
        legacy = self.path.with_name(LEGACY_GUARD_FILE)
        if self.path.exists() or not legacy.exists() or self.record is None:
            return
        self._create(self.record)
        legacy.unlink()
        fsync_dir(self.path.parent)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _open(self) -> None:
        if self._fd >= 0:
            return
        fd = os.open(self.path, os.O_RDWR)
        try:
            raw = os.pread(fd, FILE_SIZE + 1, 0)
            _, newest = decode_file(raw)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._next_slot = fd, newest ^ 1

    def _create(self, rec: GuardRecord) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, encode_file(rec))
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)
        self.close()
        self._fd, self._next_slot = fd, 1  # slot A holds the newest record
