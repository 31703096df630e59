"""Netting RPC limits over real gRPC on 127.0.0.1 and a real LMDB store: an oversized Offer or Lookup is
refused with INVALID_ARGUMENT before anything is decoded or proposed (node/netting.py OFFER_MAX)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from ledger.codec import Batch
from ledger.lmdb_store import LmdbStore
from ledger.netting import OBLIGATION_SIZE
from ledger.state import BatchOutcome
from node.netting import OFFER_MAX, NettingService
from sovledger_pb import netting_pb2 as npb
from sovledger_pb import netting_pb2_grpc as npb_grpc


def test_oversized_offer_and_lookup_are_refused(tmp_path: Path) -> None:
    store = LmdbStore(str(tmp_path), 1 << 26)
    proposed: list[Batch] = []

    async def propose(batch: Batch) -> BatchOutcome:
        proposed.append(batch)
        raise AssertionError("nothing may be proposed for a refused Offer")

    async def main() -> None:
        server = grpc.aio.server()
        npb_grpc.add_NettingServicer_to_server(NettingService("eu-west", store, propose, lambda: None), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = npb_grpc.NettingStub(ch)
                too_many = [bytes(OBLIGATION_SIZE)] * (OFFER_MAX + 1)
                try:
                    await stub.Offer(npb.OfferRequest(obligations=too_many), timeout=10)
                    raise AssertionError("an Offer above the cap was accepted")
                except grpc.aio.AioRpcError as e:
                    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
                    assert f"up to {OFFER_MAX} obligations, got {OFFER_MAX + 1}" in (e.details() or "")
                # at the cap the request is read: these zero obligations are owed to no region here
                try:
                    await stub.Offer(npb.OfferRequest(obligations=too_many[:OFFER_MAX]), timeout=10)
                    raise AssertionError("zero obligations were accepted")
                except grpc.aio.AioRpcError as e:
                    assert "up to" not in (e.details() or ""), e
                try:
                    await stub.Lookup(npb.LookupRequest(ids=[bytes(16)] * (OFFER_MAX + 1)), timeout=10)
                    raise AssertionError("a Lookup above the cap was answered")
                except grpc.aio.AioRpcError as e:
                    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
                got = await stub.Lookup(npb.LookupRequest(ids=[bytes(16)] * OFFER_MAX), timeout=10)
                assert len(got.decisions) == OFFER_MAX and all(d.status == 0 for d in got.decisions)
        finally:
            await server.stop(0)

    asyncio.run(main())
    store.close()
    assert proposed == []
