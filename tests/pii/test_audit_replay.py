"""The auditor's full replay understands erasure entries: a log with erasures verifies end to end."""

from __future__ import annotations

from clients.auditor.checks import compare_accounts
from clients.auditor.replay import LogVerifier, iter_blocks
from ledger.codec import Batch
from ledger.note import Checkpoint, open_note
from ledger.pii import ErasureReason, encode_erasure
from ledger.types import EventKind
from tests.audit.memlog import mixed_log, xfer


def test_full_replay_passes_over_erasures() -> None:
    log = mixed_log()
    pii = b"\x42" * 32
    log.block(Batch(EventKind.ERASE_SUBJECT, encode_erasure(pii, ErasureReason.SUBJECT_REQUEST)))
    log.transfers([xfer(900, 1, 2, 5)])
    log.block(Batch(EventKind.ERASE_SUBJECT, encode_erasure(pii, ErasureReason.LEGAL_ORDER)))  # already erased
    v = LogVerifier(psp_keys=[], checkpoints=())
    for h, ls in iter_blocks(log.headers(), iter(log.leaves())):
        v.feed_block(h, ls)
    v.finish(Checkpoint.parse(open_note(log.note(), [log.signer.verifier]).body))
    assert v.size == len(log.leaves())
    compare_accounts(v.account_states(), log.account_states(), "mem")
