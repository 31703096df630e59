"""Checkpoint signing-key rotation: the KEY_ROTATION record and the chain of keys (docs/formats.md).

A node announces its next checkpoint key in the log, signed by its current key. The record is
fixed-size (``ROTATION_SIZE`` bytes, little-endian)::

    origin        64  UTF-8, zero padded   the log this key signs checkpoints of ("sovledger/REGION")
    key_name      64  UTF-8, zero padded   the signed-note key name, the same for old and new key
    node          u32                      the node's Raft number (node id "node-N")
    old_key_id    4                        C2SP key id of the key that signs this record
    old_public    32                       its Ed25519 public key
    new_key_id    4                        C2SP key id of the announced key
    new_public    32                       its Ed25519 public key
    effective     u64                      earliest tree size the new key may sign (0: right after)
    signature     64                       Ed25519 by the old key over ROTATION_SIGN_PREFIX ‖ bytes 0..211

The new key signs every checkpoint of size ≥ ``takeover = max(effective, leaf index + 1)``; the
old key signs only checkpoints below it. Pure module: the ledger, the node and the auditor use it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

from ledger.note import ALG_ED25519, NoteError, Signer, Verifier, key_id, open_note, split_note

ROTATION_STRUCT: Final = struct.Struct("<64s64sI4s32s4s32sQ")
ROTATION_SIGNED_SIZE: Final = ROTATION_STRUCT.size  # 212
ROTATION_SIZE: Final = ROTATION_SIGNED_SIZE + 64  # 276
ROTATION_SIGN_PREFIX: Final = b"sovledger/key-rotation/v1\n"
_TEXT_MAX: Final = 64


class RotationError(ValueError):
    """A KEY_ROTATION record that cannot be decoded (the message says why)."""


@dataclass(frozen=True, slots=True)
class KeyRotation:
    origin: str
    key_name: str
    node: int
    old: Verifier
    new: Verifier
    effective_size: int
    signature: bytes

    def signed_bytes(self) -> bytes:
        return _pack(self.origin, self.key_name, self.node, self.old, self.new, self.effective_size)

    def encode(self) -> bytes:
        return self.signed_bytes() + self.signature

    def signature_ok(self) -> bool:
        return self.old.verify(ROTATION_SIGN_PREFIX + self.signed_bytes(), self.signature)

    def takeover(self, leaf_index: int) -> int:
        """The first tree size whose checkpoints the new key signs."""
        return max(self.effective_size, leaf_index + 1)


def _text(value: str, what: str) -> bytes:
    raw = value.encode()
    if not raw or len(raw) > _TEXT_MAX or b"\x00" in raw:
        raise RotationError(f"{what} must be 1..{_TEXT_MAX} UTF-8 bytes without NUL, got {value!r}")
    return raw


def _pack(origin: str, key_name: str, node: int, old: Verifier, new: Verifier, effective: int) -> bytes:
    return ROTATION_STRUCT.pack(_text(origin, "origin"), _text(key_name, "key name"), node, old.key_id,
                                old.public_key, new.key_id, new.public_key, effective)


def make_rotation(origin: str, node: int, old: Signer, new: Signer, effective_size: int = 0) -> KeyRotation:
    """A rotation record announcing ``new``, signed by ``old`` (both keys must share the name)."""
    if old.name != new.name:
        raise RotationError(f"the new key is named {new.name!r}, the old one {old.name!r}; names must match")
    signed = _pack(origin, old.name, node, old.verifier, new.verifier, effective_size)
    return KeyRotation(origin, old.name, node, old.verifier, new.verifier, effective_size,
                       old.sign(ROTATION_SIGN_PREFIX + signed))


def decode_rotation(raw: bytes) -> KeyRotation:
    if len(raw) != ROTATION_SIZE:
        raise RotationError(f"KEY_ROTATION record is {len(raw)} bytes, expected {ROTATION_SIZE}")
    origin_b, name_b, node, old_id, old_pub, new_id, new_pub, effective = ROTATION_STRUCT.unpack_from(raw)
    try:
        origin = origin_b.rstrip(b"\x00").decode()
        name = name_b.rstrip(b"\x00").decode()
    except UnicodeDecodeError:
        raise RotationError("origin or key name is not UTF-8") from None
    if not origin or not name:
        raise RotationError("origin and key name must not be empty")
    old = Verifier(name, old_pub, ALG_ED25519)
    new = Verifier(name, new_pub, ALG_ED25519)
    if key_id(name, ALG_ED25519, old_pub) != old_id or key_id(name, ALG_ED25519, new_pub) != new_id:
        raise RotationError("a key id does not match its public key")
    if old_id == new_id:
        raise RotationError("the new key is the old key")
    return KeyRotation(origin, name, node, old, new, effective, raw[ROTATION_SIGNED_SIZE:])


# -- the auditor's chain of keys ---------------------------------------------------------------


class UntrustedCheckpointKey(Exception):
    """A checkpoint is not signed by a key the trust store holds or the log chains to (message says which)."""


@dataclass(slots=True)
class KeyWindow:
    """A trusted key and the checkpoint sizes it may sign: ``valid_from <= size < retired_at``."""

    verifier: Verifier
    valid_from: int = 0
    retired_at: int | None = None
    announced_at: int | None = None  # leaf index of the rotation that announced it (None: trust store)

    def covers(self, size: int) -> bool:
        return self.valid_from <= size and (self.retired_at is None or size < self.retired_at)


@dataclass(slots=True)
class KeyChain:
    """Keys trusted from the trust store, extended in log order by rotations a trusted key signed."""

    origin: str
    keys: dict[bytes, KeyWindow] = field(default_factory=dict)
    unchained: list[tuple[int, str]] = field(default_factory=list)  # (leaf index, announced key) not trusted

    @staticmethod
    def from_trusted(origin: str, verifiers: list[Verifier]) -> KeyChain:
        return KeyChain(origin, {v.key_id: KeyWindow(v) for v in verifiers})

    def feed(self, leaf_index: int, rot: KeyRotation) -> bool:
        """A committed (result OK) rotation at ``leaf_index``; True when the new key is now trusted."""
        old = self.keys.get(rot.old.key_id)
        if (old is None or old.verifier != rot.old or rot.origin != self.origin or not old.covers(leaf_index)
                or not rot.signature_ok()):
            self.unchained.append((leaf_index, rot.new.to_string()))
            return False
        takeover = rot.takeover(leaf_index)
        old.retired_at = takeover if old.retired_at is None else min(old.retired_at, takeover)
        self.keys[rot.new.key_id] = KeyWindow(rot.new, takeover, None, leaf_index)
        return True

    def learned(self) -> list[KeyWindow]:
        return [w for w in self.keys.values() if w.announced_at is not None]

    def check_checkpoint(self, note: str, size: int, source: str) -> list[str]:
        """Names of the keys whose valid signature covers ``size``; raise ``UntrustedCheckpointKey`` if none."""
        try:
            signed = open_note(note, [w.verifier for w in self.keys.values()])
        except NoteError as e:
            _, sigs = split_note(note)
            ids = ", ".join(f"{s.name}+{s.key_id.hex()}" for s in sigs) or "none"
            raise UntrustedCheckpointKey(
                f"{source}: checkpoint of size {size} is signed by key(s) {ids}, which neither the trust store "
                f"holds nor a trusted key announced in the log (KEY_ROTATION entry); refusing it ({e})") from None
        ok: list[KeyWindow] = []
        stale: list[KeyWindow] = []
        for sig in signed.verified:
            w = self.keys[sig.key_id]
            (ok if w.covers(size) else stale).append(w)
        if not ok:
            w = stale[0]
            raise UntrustedCheckpointKey(
                f"{source}: checkpoint of size {size} is signed by {w.verifier.to_string()}, which is trusted only "
                f"for sizes {w.valid_from}..{'' if w.retired_at is None else w.retired_at - 1} (the key was "
                "rotated); refusing it")
        return [w.verifier.to_string() for w in ok]
