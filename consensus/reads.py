"""ReadIndex of the Raft core (thesis §6.4): linearizable reads without a log entry.

The leader remembers its commit index for the read, confirms with a quorum's heartbeat answers
that it still leads, then hands out a ``ReadState``. Functions of the ``Raft`` they act on
(``consensus/core.py``), which calls them from its handlers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from consensus.readonly import ReadRequest
from consensus.types import Index, MessageType, NodeId, ReadState

if TYPE_CHECKING:
    from consensus.core import Raft

MT = MessageType


def read_index(r: Raft, frm: NodeId, ctx: bytes) -> None:
    """Thesis §6.4. The read index is our commit index — valid only once we have committed an
    entry of our own term (before that, our commit index may lag the previous leader's)."""
    if r.log.term_or_zero(r.log.committed) != r.term:
        r.pending_read_index.append((frm, ctx))
        return
    if r.tracker.voters == {r.id}:
        answer_read(r, frm, r.log.committed, ctx)
        return
    req = ReadRequest(r.log.committed, frm, ctx, {r.id})
    if r.read_only.add(req):
        r.bcast_heartbeat(ctx)


def read_ack(r: Raft, frm: NodeId, ctx: bytes) -> None:
    acks = r.read_only.ack(frm, ctx)
    if acks is None or len(acks & r.tracker.voters) < r.tracker.quorum():
        return
    for req in r.read_only.advance(ctx):
        answer_read(r, req.frm, req.index, req.ctx)


def answer_read(r: Raft, frm: NodeId, index: Index, ctx: bytes) -> None:
    if frm == r.id:
        r.read_states.append(ReadState(index, ctx))
    else:
        r.send(MT.READ_INDEX_RESP, frm, index=index, context=ctx)


def release_pending_reads(r: Raft) -> None:
    if not r.pending_read_index or r.log.term_or_zero(r.log.committed) != r.term:
        return
    pending, r.pending_read_index = r.pending_read_index, []
    for frm, ctx in pending:
        read_index(r, frm, ctx)
