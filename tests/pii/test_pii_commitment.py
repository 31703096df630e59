"""Canonical PII bytes and salted commitments: exact layout from first principles, round trips, refusals."""

from __future__ import annotations

import struct

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.pii import (
    CANONICAL_TAG,
    COMMITMENT_KEY_CONTEXT,
    CommitmentMismatch,
    ErasureReason,
    PiiError,
    PiiRecord,
    canonical_pii,
    commit,
    decode_canonical_pii,
    decode_erasure,
    encode_erasure,
    verify_commitment,
)

SALT = bytes(range(32))
ALICE = PiiRecord(7, {"name": "Alice Müller", "email": "alice@example.org", "country": "DE"})


def test_canonical_layout_by_hand() -> None:
    # fields sorted by name; u16 name length, name, u32 value length, UTF-8 value
    def pair(n: str, v: str) -> bytes:
        return struct.pack("<H", len(n)) + n.encode() + struct.pack("<I", len(v.encode())) + v.encode()

    expected = (CANONICAL_TAG + (7).to_bytes(16, "little") + struct.pack("<H", 3)
                + pair("country", "DE") + pair("email", "alice@example.org") + pair("name", "Alice Müller"))
    assert ALICE.canonical() == expected


def test_commitment_is_keyed_blake3_under_salt_derived_key() -> None:
    key = blake3.blake3(SALT, derive_key_context=COMMITMENT_KEY_CONTEXT).digest()
    assert commit(ALICE, SALT) == blake3.blake3(ALICE.canonical(), key=key).digest()
    assert len(commit(ALICE, SALT)) == 32


def test_commitment_depends_on_salt_every_field_and_subject() -> None:
    base = commit(ALICE, SALT)
    assert commit(ALICE, bytes(32)) != base
    assert commit(PiiRecord(8, ALICE.fields), SALT) != base
    assert commit(PiiRecord(7, {**ALICE.fields, "country": "AT"}), SALT) != base
    assert commit(PiiRecord(7, {k: v for k, v in ALICE.fields.items() if k != "email"}), SALT) != base


def test_field_order_does_not_matter() -> None:
    shuffled = PiiRecord(7, dict(reversed(list(ALICE.fields.items()))))
    assert shuffled.canonical() == ALICE.canonical()


def test_verify_accepts_exact_and_names_both_hashes_on_mismatch() -> None:
    c = commit(ALICE, SALT)
    verify_commitment(ALICE, SALT, c)
    other = PiiRecord(7, {**ALICE.fields, "name": "Alice Mueller"})
    with pytest.raises(CommitmentMismatch) as e:
        verify_commitment(other, SALT, c)
    assert c.hex() in str(e.value)


@pytest.mark.parametrize("fields, fragment", [
    ({}, "1..32 fields"),
    ({"Name": "x"}, "field name"),
    ({"na-me": "x"}, "field name"),
    ({"name": "x" * 1025}, "at most 1024"),
    ({"name": "Mu\u0308ller"}, "NFC"),
])
def test_refusals_name_the_field(fields: dict[str, str], fragment: str) -> None:
    with pytest.raises(PiiError, match=fragment):
        canonical_pii(1, fields)


def test_subject_id_range() -> None:
    with pytest.raises(PiiError, match="subject id"):
        canonical_pii(1 << 128, {"a": "b"})


names = st.from_regex(r"[a-z][a-z0-9_]{0,31}", fullmatch=True)
values = st.text(max_size=50).map(lambda s: __import__("unicodedata").normalize("NFC", s)).filter(
    lambda s: len(s.encode()) <= 1024)


@given(st.integers(0, (1 << 128) - 1), st.dictionaries(names, values, min_size=1, max_size=8))
def test_round_trip(subject: int, fields: dict[str, str]) -> None:
    rec = PiiRecord(subject, fields)
    back = decode_canonical_pii(rec.canonical())
    assert back.subject_id == subject and dict(back.fields) == fields


def test_decode_refuses_trailing_bytes() -> None:
    with pytest.raises(PiiError):
        decode_canonical_pii(ALICE.canonical() + b"\x00")


def test_erasure_record_layout() -> None:
    c = commit(ALICE, SALT)
    raw = encode_erasure(c, ErasureReason.SUBJECT_REQUEST)
    assert raw == c + b"\x01\x00" + bytes(14) and len(raw) == 48
    assert decode_erasure(raw) == (c, ErasureReason.SUBJECT_REQUEST)
    with pytest.raises(PiiError, match="unknown erasure reason"):
        encode_erasure(c, 99)
    with pytest.raises(PiiError, match="reserved"):
        decode_erasure(c + b"\x01\x00" + b"\x01" + bytes(13))


def test_worked_example_in_formats_md() -> None:
    from pathlib import Path

    from ledger.pii import commitment_key

    rec = PiiRecord(7, {"country": "DE", "name": "Alice Müller"})
    canonical = rec.canonical().hex()
    key = commitment_key(SALT).hex()
    c = commit(rec, SALT).hex()
    doc = Path(__file__).resolve().parents[2].joinpath("docs", "formats.md").read_text()
    section = doc[doc.index("### 11.2 Commitment"):doc.index("### 11.3")]
    squashed = "".join(section.split())
    assert canonical in squashed and key in squashed and c in squashed
    assert c == "267f06cdab30a1c0760c136656384edafa1655f378b7f64e84943a66bb79049b"


def test_new_subject_ids_are_random_128_bit_values() -> None:
    """clients.pii.new_subject_id: what the privacy docs tell PSPs to use (a derived id could be probed)."""
    from clients.pii import new_subject_id

    ids = [new_subject_id() for _ in range(1000)]
    assert len(set(ids)) == 1000 and all(0 <= i < 1 << 128 for i in ids)
    assert len({i >> 64 for i in ids}) == 1000 and len({i & 0xFFFF for i in ids}) > 900  # both halves random
