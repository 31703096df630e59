"""Appending a block's leaf hashes to a ``ledger.merkle.CompactRange`` one tree level at a time.

Same result as ``CompactRange.append_many`` (tests/audit/test_tree.py checks it against it), but
each level's node hashes are made in one list pass instead of a loop step per leaf — the replay's
tree cost per entry. RFC 6962 / docs/formats.md: a node is BLAKE3(0x01 ‖ left ‖ right).

At level k the new nodes have indexes [start, start + len(row)) where start = old size >> k. An odd
start means the left sibling of the first one is the old range's level-k hash (the top of its stack,
the lower levels having been taken already); an odd count leaves the last node without a right
sibling: it is the new range's level-k hash.
"""

from __future__ import annotations

import blake3

from ledger.hashing import NODE_DOMAIN
from ledger.merkle import CompactRange

_b3 = blake3.blake3


def extend(cr: CompactRange, leaf_hashes: list[bytes]) -> None:
    """Append ``leaf_hashes`` to ``cr`` in place."""
    b3, nd = _b3, NODE_DOMAIN
    stack = cr.hashes
    start = cr.size
    row = leaf_hashes
    edge: list[bytes] = []  # the new range's hashes below the levels the old stack keeps, lowest first
    while row:
        if start & 1:
            row = [stack.pop(), *row]
        if len(row) & 1:
            edge.append(row[-1])
        row = [b3(nd + left + right).digest() for left, right in zip(row[0::2], row[1::2], strict=False)]
        start >>= 1
    stack.extend(reversed(edge))
    cr.size += len(leaf_hashes)
