"""Hot backup on the node side: ``Operations.Backup`` streams a consistent store copy and its checkpoint.

The copy is taken on the store thread (the one that applies blocks and signs checkpoints), so the
latest signed checkpoint describes a prefix of the copy: ``sovledger restore`` checks the copy's
Merkle root at the checkpoint's size against the signature before any node may start from it.
The copy is written next to the store (``DATA/ledger/../sovledger-snap-*``) and removed once sent.
One backup at a time per node: a second one is refused with RESOURCE_EXHAUSTED rather than
doubling the disk space used.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from node import snapshots
from sovledger_pb import ledger_pb2 as pb
from sovledger_pb import ledger_pb2_grpc as pb_grpc

CopyMaker = Callable[[], Awaitable[tuple[str, str, str]]]  # → (directory, checkpoint note, verifier key)


class OperationsService(pb_grpc.OperationsServicer):
    def __init__(self, make_copy: CopyMaker) -> None:
        self._make_copy = make_copy
        self._busy = asyncio.Lock()

    async def Backup(self, request: pb.BackupRequest,
                     context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[pb.BackupChunk]:
        if self._busy.locked():
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                "a backup of this node is already running; retry when it has finished")
        async with self._busy:
            directory, note, vkey = await self._make_copy()
            async for chunk in snapshots.stream_copy(directory, note, vkey):
                yield pb.BackupChunk(data=chunk.data, total_bytes=chunk.total_bytes,
                                     checkpoint=chunk.checkpoint, verifier_key=chunk.verifier_key)


def add_operations_service(server: grpc.aio.Server, node: Any) -> None:
    """Register the service for a ``node.server.Node``: copies run on its store thread."""

    async def make_copy() -> tuple[str, str, str]:
        def copy() -> tuple[str, str, str]:
            return snapshots.make_copy(node.store, node.checkpoints.latest().note, node.checkpoints.verifier_key)

        return await asyncio.get_running_loop().run_in_executor(node._apply_pool, copy)

    pb_grpc.add_OperationsServicer_to_server(OperationsService(make_copy), server)
