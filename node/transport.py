"""Peer transport for Raft messages: one outbound gRPC stream per peer, never blocking the driver.

``send()`` only enqueues. Each peer has a queue bounded in bytes (``QUEUE_BYTES_MAX``; a message
carries up to one block of several MiB, so a count bound would let a dead peer's queue hold GiBs)
drained by its own task, which keeps a ``Peer.Send`` stream open and reconnects with capped
exponential backoff. When a queue is full the message is dropped and the peer reported unreachable:
Raft is built for lossy networks (it retransmits), while a driver blocked on a slow peer would stall
the whole region.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from consensus.types import ConfChange, ConfChangeType, NodeId
from node.authz import caller
from node.errors import BadRequest, Unauthorised, abort
from node.replication import Replicator, node_number
from node.tls import TlsFiles, peer_channel
from sovledger_pb import peer_pb2 as ppb
from sovledger_pb import peer_pb2_grpc as ppb_grpc

log = logging.getLogger("sovledger.transport")

QUEUE_MAX = 4096  # messages
QUEUE_BYTES_MAX = 48 << 20  # payload bytes queued per peer
BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 2.0
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.keepalive_time_ms", 10_000),
]


class _PeerLink:
    def __init__(self, self_id: int, peer_id: int, address: str, on_unreachable: Callable[[int], None],
                 tls: TlsFiles | None = None) -> None:
        self.tls = tls
        self.self_id = self_id
        self.peer_id = peer_id
        self.address = address
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_MAX)
        self.queued_bytes = 0
        self._on_unreachable = on_unreachable
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.dropped = 0
        self.failed_at = 0.0  # monotonic time of the last stream that ended in an error
        self.peer_stopping = False  # the peer said it is stopping (until a later write goes through)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"peer-{self.peer_id}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def cancel(self) -> None:
        """Stop dialling: the open stream ends its request side, the call finishes and the link
        closes its channel without reconnecting. (Cancelling a pending gRPC call instead leaves
        gRPC reconnecting to the address in the background.)"""
        self._closing = True
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(b"")  # wakes the request iterator

    def send(self, payload: bytes) -> None:
        if self.queued_bytes + len(payload) > QUEUE_BYTES_MAX and not self.queue.empty():
            self._drop()
            return
        try:
            self.queue.put_nowait(payload)
        except asyncio.QueueFull:
            self._drop()
            return
        self.queued_bytes += len(payload)

    def _drop(self) -> None:
        self.dropped += 1
        self._on_unreachable(self.peer_id)

    async def _run(self) -> None:
        backoff = BACKOFF_MIN_S
        while not self._closing:
            channel = peer_channel(self.address, self.tls, _CHANNEL_OPTIONS)
            try:
                await self._stream(channel)
                backoff = BACKOFF_MIN_S
            except (grpc.RpcError, asyncio.InvalidStateError) as e:
                log.debug("peer %d at %s: %s", self.peer_id, self.address, e)
                self.failed_at = time.monotonic()
                if isinstance(e, grpc.aio.AioRpcError) and e.code() == grpc.StatusCode.UNAVAILABLE \
                        and "stopping" in (e.details() or ""):
                    self.peer_stopping = True  # PeerService.end_streams on its side
                self._on_unreachable(self.peer_id)
            finally:
                # shielded: a link stopped mid-close must still close its channel
                await asyncio.shield(channel.close())
            if self._closing:
                return
            await asyncio.sleep(backoff)
            backoff = min(BACKOFF_MAX_S, backoff * 2)

    async def _stream(self, channel: grpc.aio.Channel) -> None:
        """One ``Peer.Send`` stream, written message by message from the queue. Writing ourselves
        (rather than handing gRPC an iterator) leaves nothing blocked on the queue once the call
        ends; a request iterator left waiting keeps its call, and gRPC keeps re-dialling the peer."""
        call = ppb_grpc.PeerStub(channel).Send()
        try:
            while True:
                payload = await self.queue.get()
                if self._closing:
                    return
                self.queued_bytes -= len(payload)
                await call.write(ppb.RaftEnvelope(from_id=self.self_id, message=payload))
                self.peer_stopping = False
        finally:
            call.cancel()


class PeerTransport:
    def __init__(self, self_id: int, peers: dict[int, str], on_unreachable: Callable[[int], None],
                 tls: TlsFiles | None = None) -> None:
        self._tls = tls
        self._self_id = self_id
        self._links = {pid: _PeerLink(self_id, pid, addr, on_unreachable, tls) for pid, addr in peers.items()}

    def start(self) -> None:
        for link in self._links.values():
            link.start()

    async def stop(self) -> None:
        for link in self._links.values():
            await link.stop()

    def send(self, to: int, payload: bytes) -> None:
        link = self._links.get(to)
        if link is not None:
            link.send(payload)

    def stopping(self, peer_id: int) -> bool:
        """Whether the peer said it is stopping (its inbound streams ended with "this node is stopping")
        and nothing has reached it since."""
        link = self._links.get(peer_id)
        return link is not None and link.peer_stopping

    def gone_since(self, peer_id: int, since: float) -> bool:
        """Whether the link to the peer failed (or the peer said it is stopping) at or after ``since``
        (``time.monotonic()``)."""
        link = self._links.get(peer_id)
        return link is not None and (link.peer_stopping or link.failed_at >= since)

    def remove_peer(self, peer_id: int) -> None:
        link = self._links.pop(peer_id, None)
        if link is not None:
            link.cancel()
            log.info("peer %d at %s removed from the region: no longer dialled", peer_id, link.address)

    def add_peer(self, peer_id: int, address: str, on_unreachable: Callable[[int], None]) -> None:
        if peer_id not in self._links:
            link = _PeerLink(self._self_id, peer_id, address, on_unreachable, self._tls)
            self._links[peer_id] = link
            link.start()


class PeerService(ppb_grpc.PeerServicer):
    """Receives peers' Raft messages and hands them to the driver (which steps them in order)."""

    def __init__(self, deliver: Callable[[bytes], None],
                 snapshot_source: Callable[[int], AsyncIterator[ppb.SnapshotChunk]]) -> None:
        self._deliver = deliver
        self._snapshot_source = snapshot_source
        self._streams: set[asyncio.Task[Any]] = set()  # the handlers of open Send streams
        self._ending = False

    async def Send(self, request_iterator: AsyncIterator[ppb.RaftEnvelope],
                   context: grpc.aio.ServicerContext[ppb.RaftEnvelope, ppb.PeerAck]) -> ppb.PeerAck:
        who = caller(context)
        sender = node_number(who.name) if who is not None else None
        task = asyncio.current_task()
        if task is not None:
            self._streams.add(task)
        try:
            async for env in request_iterator:
                if sender is not None and _SENDER.unpack_from(env.message)[0] != sender:
                    await abort(context, Unauthorised(
                        f"a Raft message from node {_SENDER.unpack_from(env.message)[0]} arrived on a connection "
                        f"certified for node {sender}; peers speak only for themselves"))
                self._deliver(env.message)
        except asyncio.CancelledError:
            if not self._ending:  # gRPC cancelled the call (the peer went away): nothing to answer
                raise
            # end_streams: close the call with a status now; a cancelled handler alone keeps the call open
            # until the server's grace period ends
            await context.abort(grpc.StatusCode.UNAVAILABLE, "this node is stopping")
        finally:
            if task is not None:
                self._streams.discard(task)
        return ppb.PeerAck()

    def end_streams(self) -> int:
        """End every open inbound Send stream now (a stopping node, after its hand-over): a peer's stream
        never ends on its own, so without this the server's grace period waits for nothing. Returns how many."""
        self._ending = True
        streams, self._streams = self._streams, set()
        for task in streams:
            task.cancel()
        return len(streams)

    async def FetchSnapshot(self, request: ppb.SnapshotRequest,
                            context: grpc.aio.ServicerContext[ppb.SnapshotRequest, ppb.SnapshotChunk],
                            ) -> AsyncIterator[ppb.SnapshotChunk]:
        async for chunk in self._snapshot_source(request.index):
            yield chunk


Deliver = Callable[[bytes], Awaitable[None]]

# the sender id in an encoded Raft message (consensus/codec.py: version u8, type u8, to u64, frm u64)
_SENDER = struct.Struct("<10xQ")


class RegionAdminService(ppb_grpc.RegionAdminServicer):
    """Operator commands: leader transfer and single-server membership changes (leader only)."""

    def __init__(self, replicator: Replicator) -> None:
        self._r = replicator

    async def TransferLeader(self, request: ppb.TransferLeaderRequest,
                             context: grpc.aio.ServicerContext[Any, Any]) -> ppb.AdminReply:
        try:
            took = await self._r.transfer_leadership(_member(request.node_id))
        except Exception as e:
            await abort(context, e)
        return ppb.AdminReply(message=f"{request.node_id} leads now (transfer took {took:.2f}s)")

    async def ChangeMembership(self, request: ppb.MembershipRequest,
                               context: grpc.aio.ServicerContext[Any, Any]) -> ppb.AdminReply:
        try:
            if int(request.op) not in ConfChangeType._value2member_map_:
                raise BadRequest(f"unknown membership operation {int(request.op)}")
            op = ConfChangeType(int(request.op))
            if op != ConfChangeType.REMOVE_VOTER and not request.address:
                raise BadRequest("address (HOST:PORT) is required to add a node")
            cc = ConfChange(op, NodeId(_member(request.node_id)), request.address.encode())
            self._r.change_membership(cc)
        except Exception as e:
            await abort(context, e)
        return ppb.AdminReply(message=f"{op.name.lower()} {request.node_id} proposed")


def _member(node_id: str) -> int:
    try:
        return node_number(node_id)
    except ValueError as e:
        raise BadRequest(str(e)) from e
