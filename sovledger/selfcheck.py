"""``sovledger node --verify-full``: replay every balance from the log and compare it with the store.

The node's own full scan (node/startup.py) checks headers, leaves, chain and tree; balances can only
be checked by replaying the recorded effects, which is what the auditor's verifier does. This module
sits above both layers (sovledger/ may import clients/ and node/), so the node never imports the
auditor and the replay is the one the auditor trusts.
"""

from __future__ import annotations

from clients.auditor.checks import compare_accounts
from clients.auditor.failures import AuditFailure
from clients.auditor.replay import LogVerifier
from ledger.reader import LedgerReader
from node.startup import StartupRefused


def replay_balances(reader: LedgerReader) -> None:
    """Raise ``StartupRefused`` naming the block or account where the store and the log disagree."""
    head = reader.head()
    verifier = LogVerifier(verify_psp=False)
    try:
        for start in range(1, head.height + 1, 1000):
            for raw in reader.blocks(start, min(head.height + 1, start + 1000)):
                first, count = _leaf_range(raw)
                leaves = [leaf for chunk in reader.leaves(first, first + count) for leaf in chunk]
                verifier.feed_block(raw, leaves)
        with reader.store.read() as txn:
            stored: dict[bytes, bytes | None] = dict(txn.range("accounts"))
        replayed = verifier.account_states()
        extra = sorted(set(stored) - set(replayed))
        if extra:
            raise StartupRefused(f"account {int.from_bytes(extra[0], 'little')} is in the store but was never "
                                 "created in the log")
        compare_accounts(replayed, stored, "this node's store")
    except AuditFailure as e:
        raise StartupRefused(f"--verify-full: {e}") from e


def _leaf_range(header: bytes) -> tuple[int, int]:
    from ledger.codec import BlockHeader

    h = BlockHeader.decode(header)
    return h.first_index, h.leaf_count
