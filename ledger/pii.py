"""Personal data: its canonical bytes, the salted commitment the log carries, and the offline check.

Pure module (stdlib + blake3): the node, the PSP SDK and an auditor all import it, so the three
compute byte-identical commitments. docs/formats.md ("Personal data") gives the exact layout.

A subject's record is a set of named text fields (name, email, card_fingerprint, country, …). The
log never sees them: a transfer's 32-byte ``pii_commitment`` is a keyed BLAKE3 hash of the record's
canonical bytes under a key derived from a 32-byte random salt that only the vault (and whoever the
vault discloses to) knows. Without the salt the commitment reveals nothing a guesser can test; with
the salt and the record anyone can recompute it. Erasure destroys the salt together with the data.
"""

from __future__ import annotations

import enum
import hmac
import re
import struct
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import blake3

PII_FORMAT_VERSION: Final = 1
SALT_SIZE: Final = 32
COMMITMENT_SIZE: Final = 32
SUBJECT_ID_SIZE: Final = 16
FIELDS_MAX: Final = 32
FIELD_NAME_MAX: Final = 32
FIELD_VALUE_MAX: Final = 1024
#: BLAKE3 derive_key context for the commitment key (never reuse it for anything else).
COMMITMENT_KEY_CONTEXT: Final = "sovledger 2026-12 pii commitment key v1"
#: The canonical encoding starts with this tag, so its bytes cannot be mistaken for another format.
CANONICAL_TAG: Final = b"sovledger/pii/v1\n"

_NAME_RE: Final = re.compile(r"[a-z][a-z0-9_]*")
_U16: Final = struct.Struct("<H")
_U32: Final = struct.Struct("<I")

# erasure event body: commitment, reason u16, reserved (zeros)
ERASURE_STRUCT: Final = struct.Struct("<32sH14s")
ERASURE_SIZE: Final = ERASURE_STRUCT.size  # 48


class PiiError(ValueError):
    """A personal data record that cannot be encoded; the message names the field and the rule."""


class ErasureReason(enum.IntEnum):
    """Why a subject was erased (recorded in the log's erasure event). Numbers are on the wire."""

    SUBJECT_REQUEST = 1  # the person asked (e.g. GDPR art. 17)
    CONSENT_WITHDRAWN = 2
    RETENTION_EXPIRED = 3
    UNLAWFUL_PROCESSING = 4
    LEGAL_ORDER = 5  # a court or supervisory authority ordered it


@dataclass(frozen=True, slots=True)
class PiiRecord:
    """One subject's personal data: a 128-bit subject id chosen by the PSP and its text fields."""

    subject_id: int
    fields: Mapping[str, str]

    def canonical(self) -> bytes:
        return canonical_pii(self.subject_id, self.fields)


def canonical_pii(subject_id: int, fields: Mapping[str, str]) -> bytes:
    """The exact bytes committed to: tag ‖ subject id (u128 LE) ‖ u16 count ‖ sorted (name, value) pairs.

    Each pair is u16 name length ‖ name (ASCII) ‖ u32 value length ‖ value (UTF-8, Unicode NFC).
    Values that are not already NFC are refused rather than silently normalised, so the bytes a PSP
    keeps are the bytes that were committed to.
    """
    if not 0 <= subject_id < 1 << 128:
        raise PiiError(f"subject id {subject_id} is outside 0..2^128-1")
    if not 1 <= len(fields) <= FIELDS_MAX:
        raise PiiError(f"a record has 1..{FIELDS_MAX} fields, got {len(fields)}")
    parts = [CANONICAL_TAG, subject_id.to_bytes(SUBJECT_ID_SIZE, "little"), _U16.pack(len(fields))]
    for name in sorted(fields):
        parts.append(_encode_field(name, fields[name]))
    return b"".join(parts)


def _encode_field(name: str, value: str) -> bytes:
    if not isinstance(name, str) or len(name) > FIELD_NAME_MAX or not _NAME_RE.fullmatch(name):
        raise PiiError(f"field name {name!r} must be 1..{FIELD_NAME_MAX} chars of [a-z0-9_], starting with a letter")
    if not isinstance(value, str):
        raise PiiError(f"field {name!r} must be text, got {type(value).__name__}")
    if unicodedata.normalize("NFC", value) != value:
        raise PiiError(f"field {name!r} is not in Unicode NFC form; normalise it before committing")
    raw = value.encode("utf-8")
    if len(raw) > FIELD_VALUE_MAX:
        raise PiiError(f"field {name!r} is {len(raw)} bytes of UTF-8, at most {FIELD_VALUE_MAX} allowed")
    return _U16.pack(len(name)) + name.encode("ascii") + _U32.pack(len(raw)) + raw


def decode_canonical_pii(raw: bytes) -> PiiRecord:
    """Inverse of canonical_pii; refuses anything that would not re-encode to the same bytes."""
    if not raw.startswith(CANONICAL_TAG) or len(raw) < len(CANONICAL_TAG) + SUBJECT_ID_SIZE + 2:
        raise PiiError("not a canonical PII record (missing tag or header)")
    pos = len(CANONICAL_TAG)
    subject = int.from_bytes(raw[pos : pos + SUBJECT_ID_SIZE], "little")
    pos += SUBJECT_ID_SIZE
    (count,) = _U16.unpack_from(raw, pos)
    pos += 2
    fields: dict[str, str] = {}
    try:
        for _ in range(count):
            (nlen,) = _U16.unpack_from(raw, pos)
            name = raw[pos + 2 : pos + 2 + nlen].decode("ascii")
            pos += 2 + nlen
            (vlen,) = _U32.unpack_from(raw, pos)
            fields[name] = raw[pos + 4 : pos + 4 + vlen].decode("utf-8")
            pos += 4 + vlen
    except (struct.error, UnicodeDecodeError) as e:
        raise PiiError(f"canonical PII record is truncated or not UTF-8: {e}") from None
    record = PiiRecord(subject, fields)
    if record.canonical() != raw:
        raise PiiError("PII record bytes are not canonical (order, duplicates, lengths or trailing bytes)")
    return record


def commitment_key(salt: bytes) -> bytes:
    """The 32-byte BLAKE3 key for one subject: derive_key(COMMITMENT_KEY_CONTEXT, salt)."""
    if len(salt) != SALT_SIZE:
        raise PiiError(f"salt must be {SALT_SIZE} bytes, got {len(salt)}")
    return blake3.blake3(salt, derive_key_context=COMMITMENT_KEY_CONTEXT).digest()


def commit(record: PiiRecord, salt: bytes) -> bytes:
    """pii_commitment = BLAKE3-keyed(commitment_key(salt), canonical bytes), 32 bytes."""
    return blake3.blake3(record.canonical(), key=commitment_key(salt)).digest()


class CommitmentMismatch(Exception):
    """The disclosed data and salt do not produce the commitment found in the log."""

    def __init__(self, expected: bytes, computed: bytes) -> None:
        self.expected = expected
        self.computed = computed
        super().__init__(
            f"the log entry commits to {expected.hex()}, the disclosed data and salt give {computed.hex()}"
        )


def verify_commitment(record: PiiRecord, salt: bytes, commitment: bytes) -> None:
    """Raise CommitmentMismatch unless ``commitment`` is exactly this record under this salt."""
    computed = commit(record, salt)
    if not hmac.compare_digest(computed, commitment):
        raise CommitmentMismatch(commitment, computed)


def encode_erasure(commitment: bytes, reason: int) -> bytes:
    """The 48-byte erasure event body: commitment ‖ reason (u16 LE) ‖ 14 zero bytes."""
    if len(commitment) != COMMITMENT_SIZE:
        raise PiiError(f"commitment must be {COMMITMENT_SIZE} bytes, got {len(commitment)}")
    try:
        ErasureReason(reason)
    except ValueError:
        raise PiiError(f"unknown erasure reason {reason}; use one of {[r.name for r in ErasureReason]}") from None
    return ERASURE_STRUCT.pack(commitment, reason, bytes(14))


def decode_erasure(raw: bytes) -> tuple[bytes, ErasureReason]:
    if len(raw) != ERASURE_SIZE:
        raise PiiError(f"erasure record must be {ERASURE_SIZE} bytes, got {len(raw)}")
    commitment, reason, reserved = ERASURE_STRUCT.unpack(raw)
    if reserved != bytes(14):
        raise PiiError("erasure record reserved bytes must be zero")
    try:
        return commitment, ErasureReason(reason)
    except ValueError:
        raise PiiError(f"erasure record has unknown reason {reason}") from None
