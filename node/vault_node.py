"""The vault inside a node: opens it, keeps it in step with the log's erasures, serves it.

Kept apart from node/server.py so the node wires it in with a few calls: ``after_block`` on every
applied block and after a snapshot install (the erasure tables travel in the store copy), ``add_to``
when the gRPC server is built, ``start``/``stop`` with the node.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import grpc

from ledger.apply.erasure import erasure_of, erasures_after
from ledger.codec import Batch
from ledger.pii import encode_erasure
from ledger.store import Store
from ledger.types import EventKind
from node.config import NodeConfig
from node.errors import NotLeader
from node.pipeline import Ingest
from node.vault import Vault
from node.vault_service import PeerCopies, VaultPeerService, VaultService
from sovledger_pb import vault_pb2_grpc as vpb_grpc


class NodeVault:
    def __init__(self, config: NodeConfig, store: Store) -> None:
        self._store = store
        self.vault = Vault(Path(config.data_dir) / "vault", self._erased)
        configured = [p.address for p in config.peers]
        #: the other members' addresses; server.py points it at the Raft membership once replication runs
        self.peer_addresses: Callable[[], list[str]] = lambda: configured
        self._has_peers = bool(configured)
        self._tls = config.tls_files
        self.copies: PeerCopies | None = None
        self._height = 0  # erasures of blocks up to here are shredded
        self._lock = threading.Lock()
        self.after_block()  # anything erased while this node was down or before a restart

    def _erased(self, commitment: bytes) -> tuple[int, int] | None:
        with self._store.read() as txn:
            found = erasure_of(txn, commitment)
        return None if found is None else (found[0], int(found[1]))

    def after_block(self) -> None:
        """Shred every subject whose erasure was applied since the last call (any thread)."""
        with self._lock:
            with self._store.read() as txn:
                events = erasures_after(txn, self._height)
            self.vault.shred_all(events)
            if events:
                self._height = events[-1][0]

    def add_to(self, server: grpc.aio.Server, ingest: Callable[[], Ingest | None],
               leader_check: Callable[[], None] | None) -> None:
        async def propose(commitment: bytes, reason: int) -> tuple[int, int, int]:
            if leader_check is not None:
                leader_check()  # NotLeader names the leader: the CLI prints it
            pipeline = ingest()
            if pipeline is None:
                raise NotLeader("")
            batch_outcome, _block = await pipeline.submit(
                Batch(EventKind.ERASE_SUBJECT, encode_erasure(commitment, reason)))
            return batch_outcome.results[0], batch_outcome.log_indexes[0], batch_outcome.blocks[0]

        if self._has_peers:
            self.copies = PeerCopies(self.vault, lambda: self.peer_addresses(), self._tls)
        vpb_grpc.add_VaultServicer_to_server(VaultService(self.vault, self.copies, propose), server)
        vpb_grpc.add_VaultPeerServicer_to_server(VaultPeerService(self.vault), server)

    def forget_removed(self) -> None:
        """A member was removed from the region: stop dialling it for copies now."""
        if self.copies is not None:
            self.copies.prune()

    def start(self) -> None:
        if self.copies is not None:
            self.copies.start()

    async def stop(self) -> None:
        if self.copies is not None:
            await self.copies.stop()
        self.vault.close()
