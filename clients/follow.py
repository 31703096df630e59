"""Follow a region's log (change data capture): every signed entry once, in order, across failures.

``follow(targets, start)`` yields ``(index, leaf)`` from ``start`` on and keeps waiting for new
entries. It holds one stream (``Audit.StreamEntries`` with ``follow``) to one node; when that node
goes away (kill -9, restart, leader change) it moves to the next target and resumes at the first
index it has not yielded yet. Every replica serves the same committed entries, so any node will do;
leaves of an index are identical on every replica, which is what makes the hand-over exact:

- no duplicates: a chunk overlapping what was already yielded is trimmed;
- no gaps: a chunk starting beyond the next expected index is a protocol error (``FollowError``).

Bounded: it gives up with ``FollowError`` when no target has delivered anything for
``give_up_after_s`` seconds, and back-pressure is the stream's own (the node sends the next chunk
only when this iterator has taken the previous one).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import grpc

from clients.channels import open_sync_channel
from sovledger_pb import ledger_pb2 as pb
from sovledger_pb import ledger_pb2_grpc as pb_grpc

log = logging.getLogger("sovledger.follow")

ChannelFactory = Callable[[str], grpc.Channel]
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED,
              grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS,
              grpc.StatusCode.RESOURCE_EXHAUSTED}


class FollowError(Exception):
    """The follow stream cannot continue: no node reachable for too long, or a gap in what a node sent."""


@dataclass(frozen=True, slots=True)
class FollowedEntry:
    index: int
    leaf: bytes


def parse_targets(spec: str | Sequence[str]) -> list[str]:
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    targets = [t.strip() for t in items if t.strip()]
    if not targets:
        raise ValueError("give at least one node as HOST:PORT")
    return targets


def follow(targets: str | Sequence[str], start: int = 0, *, end: int = 0, give_up_after_s: float = 60.0,
           retry_delay_s: float = 0.2, channel_factory: ChannelFactory = open_sync_channel) -> Iterator[FollowedEntry]:
    """Yield entries ``start``, ``start+1``, … (up to ``end`` exclusive; 0 = for ever)."""
    nodes = parse_targets(targets)
    pos = start
    turn = 0
    last_progress = time.monotonic()
    while not end or pos < end:
        target = nodes[turn % len(nodes)]
        try:
            for entry in _stream(channel_factory, target, pos, end):
                pos = entry.index + 1
                last_progress = time.monotonic()
                yield entry
            if end and pos >= end:
                return
            log.info("follow: %s closed the stream at %d; resuming on the next node", target, pos)
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
            if code not in _RETRYABLE:
                raise FollowError(f"{target} refused the follow stream: {code.name}: {e.details()}") from e
            log.info("follow: %s ended the stream (%s); resuming at %d on the next node", target, code.name, pos)
        if time.monotonic() - last_progress > give_up_after_s:
            raise FollowError(f"no node of {', '.join(nodes)} delivered entries for {give_up_after_s:.0f}s "
                              f"(next index {pos})")
        turn += 1
        time.sleep(retry_delay_s)


def _stream(channel_factory: ChannelFactory, target: str, pos: int, end: int) -> Iterator[FollowedEntry]:
    with channel_factory(target) as channel:
        call = pb_grpc.AuditStub(channel).StreamEntries(pb.EntriesRequest(start=pos, end=end, follow=True))
        try:
            for chunk in call:
                if chunk.start > pos:
                    raise FollowError(f"{target} sent entries from {chunk.start}, expected {pos}: a gap")
                skip = pos - chunk.start  # already yielded (only after a hand-over)
                for i, leaf in enumerate(chunk.leaves[skip:]):
                    yield FollowedEntry(pos + i, leaf)
                pos = max(pos, chunk.start + len(chunk.leaves))
        finally:
            call.cancel()
