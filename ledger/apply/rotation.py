"""KEY_ROTATION records: a node announces its next checkpoint key under its current key.

The log remembers each node's current key (``META_NODE_KEY_PREFIX`` + node): the key announced by
its last accepted rotation. A rotation must be signed by the key it names as old, and once a node
has rotated, that old key must be the node's current one. A node's first rotation is checked
against the key it names (the log has no earlier record of it); the auditor decides whether that
key is trusted (its trust store). Refusals are result codes in the log, never exceptions.
"""

from __future__ import annotations

import struct
from typing import Final

from ledger.apply.scratch import Block, Event
from ledger.codec import Batch
from ledger.keyrotation import ROTATION_SIZE, KeyRotation, RotationError, decode_rotation
from ledger.schema import META_NODE_KEY_PREFIX, Table
from ledger.types import EventKind, Result

# stored per node: current key id (4) ‖ public key (32) ‖ takeover size (u64) ‖ rotation leaf index (u64)
NODE_KEY_STRUCT: Final = struct.Struct("<4s32sQQ")


def node_key_meta(node: int) -> bytes:
    return META_NODE_KEY_PREFIX + node.to_bytes(4, "big")


def decode_node_key(raw: bytes) -> tuple[bytes, bytes, int, int]:
    """(key id, public key, takeover size, rotation leaf index) of a node's current announced key."""
    key_id, public, takeover, index = NODE_KEY_STRUCT.unpack(raw)
    return bytes(key_id), bytes(public), int(takeover), int(index)


def _check(blk: Block, raw: bytes) -> tuple[int, KeyRotation | None]:
    try:
        rot = decode_rotation(raw)
    except RotationError:
        return Result.KEY_ROTATION_MALFORMED, None
    if not rot.signature_ok():
        return Result.KEY_ROTATION_BAD_SIGNATURE, None
    current = blk.txn.get(Table.META, node_key_meta(rot.node))
    if current is not None and decode_node_key(current)[0] != rot.old.key_id:
        return Result.KEY_ROTATION_NOT_CURRENT_KEY, None
    return Result.OK, rot


def apply_rotations(blk: Block, batch: Batch, events: list[Event]) -> None:
    records = batch.records
    for i in range(0, len(records), ROTATION_SIZE):
        raw = records[i : i + ROTATION_SIZE]
        result, rot = _check(blk, raw)
        if rot is not None:
            index = blk.next_leaf_index(events)
            value = NODE_KEY_STRUCT.pack(rot.new.key_id, rot.new.public_key, rot.takeover(index), index)
            blk.txn.put(Table.META, node_key_meta(rot.node), value)  # same write transaction as the block
        events.append(Event(EventKind.KEY_ROTATION, result, raw, b"", ()))
