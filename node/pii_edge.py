"""The edge screen: refuse a Submit batch whose free-form fields look like personal data.

Runs before a batch is queued for proposal, so nothing it refuses ever reaches the Raft log or the
append-only ledger. The detectors are pure (ledger/screening.py); this module turns a finding into
the node's error type and parses the ``pii_screening`` config value.
"""

from __future__ import annotations

from typing import Final

import grpc

from ledger.codec import Batch
from ledger.screening import ScreeningConfig, screen_records
from ledger.types import EventKind
from node.errors import NodeError
from sovledger_pb import ledger_pb2 as pb

#: words accepted in the ``pii_screening`` config value (comma-separated); "off" disables the screen
SCREENING_WORDS: Final = ("cards", "emails", "numeric", "off")
DEFAULT_SCREENING: Final = "cards,emails"


class PersonalDataRefused(NodeError, code=grpc.StatusCode.INVALID_ARGUMENT, reason=pb.REASON_PERSONAL_DATA):
    """The batch carries something that looks like personal data in a free-form field."""


def parse_screening(spec: str) -> ScreeningConfig:
    words = {w.strip() for w in spec.split(",") if w.strip()}
    unknown = sorted(words - set(SCREENING_WORDS))
    if unknown:
        raise ValueError(f"pii_screening: unknown word(s) {', '.join(unknown)}; use {', '.join(SCREENING_WORDS)}")
    if "off" in words or not words:
        return ScreeningConfig(enabled=False)
    return ScreeningConfig(card_numbers="cards" in words, emails="emails" in words,
                           numeric_user_data="numeric" in words)


_KIND_NAMES: Final = {EventKind.CREATE_TRANSFER: "CREATE_TRANSFERS", EventKind.CREATE_ACCOUNT: "CREATE_ACCOUNTS"}


def screen_batch(batch: Batch, config: ScreeningConfig) -> None:
    """Raise PersonalDataRefused naming the record and field; the whole batch is refused."""
    finding = screen_records(batch.kind, batch.records, config)
    if finding is not None:
        raise PersonalDataRefused(finding.message(_KIND_NAMES.get(batch.kind, batch.kind.name)))
