"""Result-code scenarios of the ERASE_SUBJECT kind, registered in tests/ledger/test_results.py."""

from __future__ import annotations

from collections.abc import Callable

from ledger.codec import Batch
from ledger.pii import encode_erasure
from ledger.types import EventKind, Result
from tests.ledger.harness import Ledger

C = b"\x5a" * 32


def _erase(*records: bytes) -> Result:
    lg = Ledger()
    out = lg.block(Batch(EventKind.ERASE_SUBJECT, b"".join(records)))
    return Result(out.batches[0].results[-1])


PII_SCENARIOS: dict[Result, Callable[[], Result]] = {
    Result.SUBJECT_ALREADY_ERASED: lambda: _erase(encode_erasure(C, 1), encode_erasure(C, 2)),
    Result.ERASURE_REASON_UNKNOWN: lambda: _erase(C + b"\x00\x00" + bytes(14)),
}
