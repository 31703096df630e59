"""A stopping node ends its peers' inbound Raft streams (node/transport.py ``PeerService.end_streams``), so
the gRPC server's grace period has nothing to wait for: a peer's stream never ends on its own. Real gRPC
on 127.0.0.1; the peer is a plain client stream that keeps sending."""

from __future__ import annotations

import asyncio
import struct

import grpc

from node.transport import PeerService
from sovledger_pb import peer_pb2 as ppb
from sovledger_pb import peer_pb2_grpc as ppb_grpc

GRACE_S = 60.0  # far beyond the bound below: a stream left open would hold the stop for all of it


def _message(sender: int) -> bytes:  # the sender id sits at offset 10 (consensus/codec.py)
    return bytes(10) + struct.pack("<Q", sender) + b"payload"


def test_end_streams_closes_open_peer_streams_with_unavailable() -> None:
    delivered: list[bytes] = []

    async def no_snapshots(_index: int):  # type: ignore[no-untyped-def]
        return
        yield

    async def main() -> None:
        service = PeerService(delivered.append, no_snapshots)
        server = grpc.aio.server()
        ppb_grpc.add_PeerServicer_to_server(service, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(2)]
        stop_sending = asyncio.Event()

        async def envelopes(sender: int):  # type: ignore[no-untyped-def]
            yield ppb.RaftEnvelope(from_id=sender, message=_message(sender))
            await stop_sending.wait()  # a peer's stream stays open for as long as the peer runs

        calls = [ppb_grpc.PeerStub(ch).Send(envelopes(i + 1)) for i, ch in enumerate(channels)]
        for _ in range(200):  # both streams are open and delivered their first message
            if len(delivered) == 2:
                break
            await asyncio.sleep(0.01)
        assert sorted(m[10:18] for m in delivered) == [struct.pack("<Q", 1), struct.pack("<Q", 2)]
        assert service.end_streams() == 2
        await asyncio.wait_for(server.stop(grace=GRACE_S), timeout=15)
        for call in calls:
            try:
                await call
                raise AssertionError("an ended stream answered OK")
            except grpc.aio.AioRpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE, e
                assert "stopping" in (e.details() or "")
        stop_sending.set()
        for ch in channels:
            await ch.close()

    asyncio.run(main())
