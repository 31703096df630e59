"""Pending ReadIndex requests on the leader (Raft thesis §6.4).

A read arriving at commit index *c* may be served once (1) the leader has confirmed, with a
heartbeat round started after the read arrived, that a quorum still follows it (so no newer leader
can have committed anything it does not know), and (2) the state machine has applied *c*.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from consensus.types import Index, NodeId


@dataclass
class ReadRequest:
    index: Index  # the leader's commit index when the read arrived
    frm: NodeId  # who asked (the leader itself, or a follower that forwarded it)
    ctx: bytes
    acks: set[NodeId] = field(default_factory=set)


class ReadOnly:
    def __init__(self) -> None:
        self.pending: dict[bytes, ReadRequest] = {}
        self.queue: list[bytes] = []  # arrival order

    def add(self, req: ReadRequest) -> bool:
        if req.ctx in self.pending:
            return False  # the same request id twice: the first one stands
        self.pending[req.ctx] = req
        self.queue.append(req.ctx)
        return True

    def ack(self, frm: NodeId, ctx: bytes) -> set[NodeId] | None:
        req = self.pending.get(ctx)
        if req is None:
            return None
        req.acks.add(frm)
        return req.acks

    def advance(self, ctx: bytes) -> list[ReadRequest]:
        """Release ``ctx`` and every request queued before it: the round that confirmed leadership for
        ``ctx`` started after they arrived, so it confirms them too."""
        if ctx not in self.pending:
            return []
        cut = self.queue.index(ctx) + 1
        done, self.queue = self.queue[:cut], self.queue[cut:]
        return [self.pending.pop(c) for c in done]

    def last_pending_ctx(self) -> bytes | None:
        return self.queue[-1] if self.queue else None
