"""Screening: refuse free-form record fields that look like personal data before they reach the log.

The log is append-only, so the only safe place to stop personal data is the edge, before a record
is proposed. Two detectors, both configurable: payment card numbers (13–19 digits, optionally
separated by spaces or dashes, that pass the Luhn check) and e-mail addresses. Pure module: a PSP's
SDK can run the same screen before sending.

Screened fields: a transfer's ``external_ref`` (32 bytes) and ``user_data`` (u128), an account's
``user_data``. Bytes are screened as Latin-1 text, so any ASCII run inside them is seen. Reading a
u128 ``user_data`` as its decimal digits as well (a card number fits in a u128) is opt-in
(``numeric_user_data``): one random 16-digit internal id in ten passes Luhn, so it is off by default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from ledger.codec import ACCOUNT_SIZE, TRANSFER_SIZE
from ledger.types import EventKind

CARD_DIGITS_MIN: Final = 13
CARD_DIGITS_MAX: Final = 19
# a run of 13..19 digits, each optionally preceded by one space or dash (not at the start)
_CARD_RE: Final = re.compile(r"(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])")
# local@domain.tld, ASCII only: what a careless PSP would paste into a reference
_EMAIL_RE: Final = re.compile(r"[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63})*\.[A-Za-z]{2,24}")

# byte offsets of the screened fields inside the canonical records (docs/formats.md)
_TRANSFER_USER_DATA: Final = (80, 96)
_TRANSFER_EXTERNAL_REF: Final = (96, 128)
_ACCOUNT_USER_DATA: Final = (16, 32)


@dataclass(frozen=True, slots=True)
class ScreeningConfig:
    """What to look for. ``enabled=False`` switches screening off entirely (a test region)."""

    enabled: bool = True
    card_numbers: bool = True
    emails: bool = True
    numeric_user_data: bool = False


@dataclass(frozen=True, slots=True)
class Finding:
    """The first thing that looked like personal data: which record, which field, what it resembled."""

    record_index: int
    field: str
    what: str  # "card number" | "e-mail address"

    def message(self, kind_name: str) -> str:
        article = "an" if self.what[0] in "aeiou" else "a"
        return (f"{kind_name} record #{self.record_index}: field {self.field} looks like {article} {self.what}; "
                "personal data must not enter the append-only log — keep it in the PII vault and put "
                "its pii_commitment in the transfer instead")


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check used by payment card numbers."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def find_card_number(text: str) -> bool:
    for m in _CARD_RE.finditer(text):
        digits = re.sub(r"[ -]", "", m.group())
        if CARD_DIGITS_MIN <= len(digits) <= CARD_DIGITS_MAX and luhn_ok(digits):
            return True
    return False


def find_email(text: str) -> bool:
    return _EMAIL_RE.search(text) is not None


def screen_text(text: str, config: ScreeningConfig) -> str | None:
    """What ``text`` looks like ("card number", "e-mail address") or None."""
    if config.card_numbers and find_card_number(text):
        return "card number"
    if config.emails and find_email(text):
        return "e-mail address"
    return None


def _field_text(raw: bytes, numeric: bool) -> str:
    text = raw.rstrip(b"\x00").decode("latin-1")
    if numeric:  # also the integer as decimal digits (a card number stored as a number)
        text += "\n" + str(int.from_bytes(raw, "little"))
    return text


_Fields = tuple[tuple[str, int, int, bool], ...]


@dataclass(frozen=True, slots=True)
class _Layout:
    """A record kind's screened fields (name, start, stop, numeric) and what the scan needs of them."""

    fields: _Fields
    size: int
    lo: int  # the screened fields are adjacent: one slice [lo, hi) covers them all
    hi: int
    span_zero: bytes
    zeros: tuple[bytes, ...]

    @classmethod
    def of(cls, fields: _Fields, size: int) -> _Layout:
        lo, hi = min(f[1] for f in fields), max(f[2] for f in fields)
        return cls(fields, size, lo, hi, bytes(hi - lo), tuple(bytes(f[2] - f[1]) for f in fields))


# built once: a one-record batch (a payment per request) would otherwise pay this setup per request
_LAYOUTS: Final = {
    EventKind.CREATE_TRANSFER: _Layout.of(
        (("external_ref", *_TRANSFER_EXTERNAL_REF, False), ("user_data", *_TRANSFER_USER_DATA, True)), TRANSFER_SIZE),
    EventKind.CREATE_ACCOUNT: _Layout.of((("user_data", *_ACCOUNT_USER_DATA, True),), ACCOUNT_SIZE),
}


def screen_records(kind: int, records: bytes, config: ScreeningConfig) -> Finding | None:
    """The first suspicious field in a batch of canonical records, or None. Unknown kinds pass."""
    if not config.enabled:
        return None
    layout = _LAYOUTS.get(kind)  # type: ignore[call-overload]
    if layout is None:
        return None
    # hot path: most fields are all zero — one slice and one compare per record covers every screened
    # field (they are adjacent in both records); a record with any of them set is screened field by field
    size, lo, hi, span_zero = layout.size, layout.lo, layout.hi, layout.span_zero
    for off in range(0, len(records) - size + 1, size):
        if records[off + lo : off + hi] == span_zero:
            continue
        for (_name, start, stop, numeric), zero in zip(layout.fields, layout.zeros, strict=True):
            raw = records[off + start : off + stop]
            if raw == zero:
                continue
            what = screen_text(_field_text(raw, numeric and config.numeric_user_data), config)
            if what is not None:
                return _first(kind, records, size, config, layout.fields, off // size)
    return None


def _first(kind: int, records: bytes, size: int, config: ScreeningConfig,
           fields: _Fields, upto: int) -> Finding:
    """The finding with the lowest record index (fields were scanned one at a time)."""
    for i in range(upto + 1):
        for name, start, stop, numeric in fields:
            raw = records[i * size + start : i * size + stop]
            if any(raw):
                what = screen_text(_field_text(raw, numeric and config.numeric_user_data), config)
                if what is not None:
                    return Finding(i, name, what)
    raise AssertionError("unreachable: record upto has a finding")  # pragma: no cover
