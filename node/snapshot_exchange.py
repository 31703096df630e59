"""The node's two ends of a snapshot transfer, bound to its store, state, checkpoints and store thread.

``source(index)`` (leader): a consistent copy of the store and the checkpoint describing it, streamed.
``install(leader_id, index)`` (follower): fetch, verify against the signed checkpoint, swap in, reload.
The byte-level work lives in ``node.snapshots``; this module only schedules it on the store thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ledger.lmdb_store import LmdbStore
from ledger.state import LedgerState
from node import snapshots
from node.config import NodeConfig
from node.signing import CheckpointService
from sovledger_pb import peer_pb2 as ppb


class SnapshotExchange:
    def __init__(self, config: NodeConfig, store: LmdbStore, state: LedgerState, checkpoints: CheckpointService,
                 pool: ThreadPoolExecutor, on_installed: Callable[[LedgerState], None],
                 addresses: dict[int, str]) -> None:
        self._config = config
        self._store = store
        self._state = state
        self._checkpoints = checkpoints
        self._pool = pool
        self._on_installed = on_installed
        self._addresses = addresses  # the replicator's member map (it keeps it current)

    async def install(self, leader_id: int, index: int) -> int:
        """Follower: fetch the leader's store copy, verify it against its signed checkpoint, swap it in."""
        incoming = Path(self._config.data_dir) / "snapshot.incoming"
        note, vkey = await snapshots.fetch(self._addresses.get(leader_id, ""), index, incoming, self._config.tls_files)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._verify_install, incoming, note, vkey, index)

    def _verify_install(self, incoming: Path, note: str, vkey: str, index: int) -> int:
        cfg, head = self._config, self._state.head
        applied = snapshots.verify_and_prepare(
            incoming, note, vkey, cfg.origin, cfg.map_size_bytes, index,
            trusted_keys=cfg.peer_keys, local_size=head.tree_size,
            local_root=self._state.range.root() if head.tree_size else b"")
        snapshots.install(self._store, incoming)
        self._state.reload()
        self._on_installed(self._state)
        return applied

    async def source(self, index: int) -> AsyncIterator[ppb.SnapshotChunk]:
        loop = asyncio.get_running_loop()
        directory, note, vkey = await loop.run_in_executor(self._pool, self._copy)
        async for chunk in snapshots.stream_copy(directory, note, vkey):
            yield chunk

    def _copy(self) -> tuple[str, str, str]:  # store thread: the copy and its checkpoint match
        latest = self._checkpoints.latest()  # note and key as one pair (a key rotation may switch between them)
        return snapshots.make_copy(self._store, latest.note, latest.verifier_key)
