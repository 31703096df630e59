"""One scenario per KEY_ROTATION result code (docs/results.md), for tests/ledger/test_results.py."""

from __future__ import annotations

from collections.abc import Callable

from ledger.codec import Batch
from ledger.keyrotation import make_rotation
from ledger.note import Signer
from ledger.types import EventKind, Result
from tests.ledger.harness import Ledger

ORIGIN = "sovledger/test"
NAME = "test/node-1"


def _rotate(*records: bytes) -> Result:
    """Apply each record in its own block; the last one's result."""
    lg = Ledger()
    result = Result.OK
    for raw in records:
        out = lg.block(Batch(EventKind.KEY_ROTATION, raw))
        result = Result(out.batches[0].results[0])
    return result


def _keys(n: int) -> list[Signer]:
    return [Signer.generate(NAME) for _ in range(n)]


def _malformed() -> Result:
    k1, k2 = _keys(2)
    raw = bytearray(make_rotation(ORIGIN, 1, k1, k2).encode())
    raw[168] ^= 1  # the new key id no longer matches the new public key
    return _rotate(bytes(raw))


def _bad_signature() -> Result:
    k1, k2 = _keys(2)
    raw = bytearray(make_rotation(ORIGIN, 1, k1, k2).encode())
    raw[212] ^= 1
    return _rotate(bytes(raw))


def _not_current() -> Result:
    k1, k2, k3 = _keys(3)
    return _rotate(make_rotation(ORIGIN, 1, k1, k2).encode(), make_rotation(ORIGIN, 1, k1, k3).encode())


ROTATION_SCENARIOS: dict[Result, Callable[[], Result]] = {
    Result.KEY_ROTATION_MALFORMED: _malformed,
    Result.KEY_ROTATION_BAD_SIGNATURE: _bad_signature,
    Result.KEY_ROTATION_NOT_CURRENT_KEY: _not_current,
}
