"""The per-block result tally counts exactly what a per-item count would (kinds, codes, psp ids)."""

from __future__ import annotations

import struct

from prometheus_client import REGISTRY

from ledger.codec import ACCOUNT_SIZE, TRANSFER_SIZE, Batch
from ledger.types import EventKind, Result
from node import metrics


def _transfer(psp: int) -> bytes:
    rec = bytearray(TRANSFER_SIZE)
    struct.pack_into("<I", rec, 164, psp)
    return bytes(rec)


def _value(kind: str, result: str, psp: str) -> float:
    v = REGISTRY.get_sample_value("sovledger_results_total", {"kind": kind, "result": result, "psp": psp})
    return v or 0.0


def test_one_tally_per_block_matches_a_count_per_item() -> None:
    psps = [90001, 90002, 90001, 90003]
    block = [
        (Batch(EventKind.CREATE_TRANSFER, _transfer(90001)), [int(Result.OK)]),  # one-payment batches
        (Batch(EventKind.CREATE_TRANSFER, _transfer(90002)), [int(Result.EXCEEDS_CREDITS)]),
        (Batch(EventKind.CREATE_TRANSFER, b"".join(_transfer(p) for p in psps)),
         [int(Result.OK), int(Result.OK), int(Result.OK), int(Result.EXCEEDS_CREDITS)]),
        (Batch(EventKind.CREATE_ACCOUNT, bytes(2 * ACCOUNT_SIZE)), [int(Result.OK), int(Result.OK)]),
    ]
    keys = [("create_transfer", "ok", "90001"), ("create_transfer", "ok", "90002"),
            ("create_transfer", "exceeds_credits", "90002"), ("create_transfer", "exceeds_credits", "90003"),
            ("create_account", "ok", "0")]
    before = {k: _value(*k) for k in keys}
    metrics.count_block(block)
    after = {k: _value(*k) - before[k] for k in keys}
    assert after == {("create_transfer", "ok", "90001"): 3.0, ("create_transfer", "ok", "90002"): 1.0,
                     ("create_transfer", "exceeds_credits", "90002"): 1.0,
                     ("create_transfer", "exceeds_credits", "90003"): 1.0, ("create_account", "ok", "0"): 2.0}
