"""The edge screen's configuration and error: config words, refusal of unknown words, status and reason."""

from __future__ import annotations

import grpc
import pytest

from ledger.codec import Batch, encode_transfer
from ledger.screening import ScreeningConfig
from ledger.types import EventKind, Transfer
from node.config import ConfigError, NodeConfig
from node.errors import classify
from node.pii_edge import PersonalDataRefused, parse_screening, screen_batch
from sovledger_pb import ledger_pb2 as pb


def test_words() -> None:
    assert parse_screening("cards,emails") == ScreeningConfig()
    assert parse_screening("off") == ScreeningConfig(enabled=False)
    assert parse_screening("emails") == ScreeningConfig(card_numbers=False)
    assert parse_screening("cards,emails,numeric").numeric_user_data
    with pytest.raises(ValueError, match="unknown word"):
        parse_screening("cards,phones")


def test_config_validates_the_value(tmp_path) -> None:  # type: ignore[no-untyped-def]
    NodeConfig(data_dir=str(tmp_path), pii_screening="off", insecure=True).validate()
    with pytest.raises(ConfigError, match="pii_screening"):
        NodeConfig(data_dir=str(tmp_path), pii_screening="ibans", insecure=True).validate()


def test_refusal_maps_to_invalid_argument_with_its_reason() -> None:
    rec = encode_transfer(Transfer(id=1, debit_account_id=1, credit_account_id=2, amount=1, ledger=1, code=1,
                                   external_ref=b"pay 5555 5555 5555 4444"))
    with pytest.raises(PersonalDataRefused) as e:
        screen_batch(Batch(EventKind.CREATE_TRANSFER, rec), ScreeningConfig())
    code, reason, message = classify(e.value)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and reason == pb.REASON_PERSONAL_DATA
    assert message.startswith("CREATE_TRANSFERS record #0: field external_ref looks like a card number")
