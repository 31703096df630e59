"""Screening of free-form fields: Luhn card numbers and e-mail addresses, per record and field."""

from __future__ import annotations

import pytest

from ledger.codec import encode_account, encode_transfer
from ledger.screening import ScreeningConfig, find_card_number, find_email, luhn_ok, screen_records
from ledger.types import Account, EventKind, Transfer

ON = ScreeningConfig()


def xfer(i: int, **kw: object) -> bytes:
    return encode_transfer(Transfer(id=i, debit_account_id=1, credit_account_id=2, amount=5, ledger=1, code=1,
                                    **kw))  # type: ignore[arg-type]


@pytest.mark.parametrize("number, ok", [
    ("4111111111111111", True), ("5555555555554444", True), ("378282246310005", True),
    ("4111111111111112", False), ("79927398713", True), ("79927398710", False),
])
def test_luhn(number: str, ok: bool) -> None:
    assert luhn_ok(number) is ok


@pytest.mark.parametrize("text, found", [
    ("4111111111111111", True),
    ("card 4111 1111 1111 1111 ok", True),
    ("4111-1111-1111-1111", True),
    ("order-4111111111111112", False),  # fails Luhn
    ("ref 123456789012", False),  # 12 digits: too short for a card
    ("41111111111111110000000", False),  # a longer run is not a card number
    ("inv-2026-12-01-0001", False),
])
def test_card_numbers(text: str, found: bool) -> None:
    assert find_card_number(text) is found


@pytest.mark.parametrize("text, found", [
    ("alice@example.org", True), ("x a.b+c@mail.example.co.uk y", True),
    ("ord-1", False), ("user@localhost", False), ("@example.org", False),
])
def test_emails(text: str, found: bool) -> None:
    assert find_email(text) is found


def test_names_record_and_field() -> None:
    batch = xfer(1, external_ref=b"ord-1") + xfer(2, external_ref=b"bob@example.org")
    f = screen_records(EventKind.CREATE_TRANSFER, batch, ON)
    assert f is not None and (f.record_index, f.field, f.what) == (1, "external_ref", "e-mail address")
    msg = f.message("CREATE_TRANSFERS")
    assert "record #1" in msg and "external_ref" in msg and "e-mail" in msg


def test_user_data_bytes_and_numeric_opt_in() -> None:
    as_text = int.from_bytes(b"4111111111111111", "little")
    f = screen_records(EventKind.CREATE_TRANSFER, xfer(1, user_data=as_text), ON)
    assert f is not None and f.field == "user_data" and f.what == "card number"
    as_number = xfer(1, user_data=4111111111111111)
    assert screen_records(EventKind.CREATE_TRANSFER, as_number, ON) is None
    f = screen_records(EventKind.CREATE_TRANSFER, as_number, ScreeningConfig(numeric_user_data=True))
    assert f is not None and f.field == "user_data"


def test_accounts_screened() -> None:
    acc = encode_account(Account(id=1, ledger=1, code=1, user_data=int.from_bytes(b"a@b.example", "little")))
    f = screen_records(EventKind.CREATE_ACCOUNT, acc, ON)
    assert f is not None and f.field == "user_data" and f.record_index == 0


def test_configurable() -> None:
    batch = xfer(1, external_ref=b"4111111111111111") + xfer(2, external_ref=b"a@example.org")
    assert screen_records(EventKind.CREATE_TRANSFER, batch, ScreeningConfig(enabled=False)) is None
    f = screen_records(EventKind.CREATE_TRANSFER, batch, ScreeningConfig(card_numbers=False))
    assert f is not None and f.record_index == 1
    assert screen_records(EventKind.CREATE_TRANSFER, batch, ScreeningConfig(card_numbers=False,
                                                                             emails=False)) is None


def test_clean_batch_and_binary_refs_pass() -> None:
    batch = b"".join(xfer(i, external_ref=bytes([i, 0xFF, 0x10]) * 10) for i in range(1, 50))
    assert screen_records(EventKind.CREATE_TRANSFER, batch, ON) is None
