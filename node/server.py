"""The node process: open the store, recover, start ingest + checkpoints, serve gRPC until signalled.

Single-node mode (no peers): a block is durable once its LMDB transaction has committed (fsync).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ledger.codec import Proposal
from ledger.lmdb_store import LmdbStore
from ledger.reader import LedgerReader
from ledger.state import BlockOutcome, LedgerState
from ledger.store import StoreFull
from ledger.types import BATCH_ITEMS_MAX
from node.config import NodeConfig
from node.errors import StoreUnavailable
from node.keys import load_or_create_node_key
from node.pipeline import Ingest
from node.psp_auth import PspAuthenticator
from node.service import AdminService, AuditService, LedgerService
from node.signing import CheckpointService
from sovledger_pb import ledger_pb2 as pb
from sovledger_pb import ledger_pb2_grpc as pb_grpc

log = logging.getLogger("sovledger.node")


class Node:
    """Wires store, state machine, ingest, checkpoints and the gRPC server together."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        data = Path(config.data_dir)
        data.mkdir(parents=True, exist_ok=True)
        self.store = LmdbStore(str(data / "ledger"), config.map_size_bytes)
        self.state = LedgerState(self.store, config.operator_verifiers)
        self.reader = LedgerReader(self.store)
        self.key = load_or_create_node_key(data / "node.key", config.key_name)
        self.checkpoints = CheckpointService(
            self.reader, self.key, config.origin, data / "signer-guard.json", config.checkpoint_every_blocks
        )
        self._apply_pool = ThreadPoolExecutor(1, thread_name_prefix="apply")
        self.ingest: Ingest | None = None
        self.replicator: Any = None  # node.replication.Replicator when the region has peers
        self.server: grpc.aio.Server | None = None
        self.psp_auth: PspAuthenticator | None = None
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        self.started_ns = time.time_ns()

    async def _commit(self, proposal: Proposal) -> BlockOutcome:
        loop = asyncio.get_running_loop()
        try:
            outcome = await loop.run_in_executor(self._apply_pool, self._apply_and_sign, proposal)
        except StoreFull as e:
            log.error("%s", e)
            await self._set_serving(False)
            raise StoreUnavailable(str(e)) from e
        return outcome

    def _apply_and_sign(self, proposal: Proposal) -> BlockOutcome:
        outcome = self.state.apply_block(proposal)
        self.checkpoints.on_block(self.state.head)
        return outcome

    async def _set_serving(self, ok: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", "sovledger.v1.Ledger"):
            res = self.health.set(service, status)
            if asyncio.iscoroutine(res):
                await res

    def status(self) -> pb.StatusResponse:
        head = self.state.head
        role, term, leader, applied = "leader", 0, self.config.listen, head.height
        if self.replicator is not None:
            st = self.replicator.status()
            role, term, leader, applied = st.role, st.term, self.replicator.leader_address(), st.applied_index
        return pb.StatusResponse(
            node_id=self.config.node_id, region=self.config.region, role=role, term=term,
            applied_index=applied, tree_size=head.tree_size, block=head.height,
            leader=leader, queue_items=self.ingest.queued_items if self.ingest else 0,
            verifier_key=self.checkpoints.verifier_key,
        )

    async def _install_snapshot(self, leader_id: int, index: int) -> int:
        """Follower: fetch the leader's store copy, verify it against its signed checkpoint, swap it in."""
        from node import snapshots

        assert self.replicator is not None
        address = self.replicator.addresses.get(leader_id, "")
        incoming = Path(self.config.data_dir) / "snapshot.incoming"
        note, vkey = await snapshots.fetch(address, index, incoming)
        loop = asyncio.get_running_loop()

        def verify_install() -> int:
            head = self.state.head
            applied = snapshots.verify_and_prepare(
                incoming, note, vkey, self.config.origin, self.config.map_size_bytes, index,
                trusted_keys=self.config.peer_keys, local_size=head.tree_size,
                local_root=self.state.range.root() if head.tree_size else b"")
            snapshots.install(self.store, incoming)
            self.state.reload()
            self.checkpoints.on_block(self.state.head)
            return applied

        return await loop.run_in_executor(self._apply_pool, verify_install)

    async def _snapshot_source(self, index: int) -> AsyncIterator[Any]:
        from node import snapshots

        loop = asyncio.get_running_loop()

        def copy() -> tuple[str, str, str]:  # store thread: the copy and its checkpoint match
            return snapshots.make_copy(self.store, self.checkpoints.latest().note, self.checkpoints.verifier_key)

        directory, note, vkey = await loop.run_in_executor(self._apply_pool, copy)
        async for chunk in snapshots.stream_copy(directory, note, vkey):
            yield chunk

    def _start_replication(self) -> None:
        from node.replication import Replicator, node_number
        from node.transport import PeerTransport

        cfg = self.config
        me = node_number(cfg.node_id)
        addresses = {node_number(p.node_id): p.address for p in cfg.peers}
        addresses[me] = cfg.listen
        voters = sorted(a for a in addresses if not (cfg.join and a == me))
        self.replicator = Replicator(
            self_id=me, voters=voters, learners=[me] if cfg.join else [], addresses=addresses, store=self.store,
            state=self.state,
            pool=self._apply_pool, tick_ms=cfg.tick_ms, election_ticks=cfg.election_ticks,
            heartbeat_ticks=cfg.heartbeat_ticks, on_block=lambda st: self.checkpoints.on_block(st.head),
            max_message_bytes=cfg.max_message_bytes - (64 << 10), log_keep_entries=cfg.raft_log_keep_entries,
            snapshot_installer=self._install_snapshot,
            transport_factory=PeerTransport,
        )

    async def start(self) -> None:
        cfg = self.config
        self.checkpoints.on_start(self.state.head)
        commit = self._commit
        leader_check = None
        read_barrier = None
        if cfg.peers:
            self._start_replication()
            commit = self.replicator.propose
            leader_check = self.replicator.check_leader
            read_barrier = self.replicator.read_barrier
        # In a region a block is one Raft entry and must fit one peer message (max_message_bytes):
        # cap it at one full batch (8189 signed transfers ≈ 2 MB).
        block_items = min(cfg.block_items_max, BATCH_ITEMS_MAX) if cfg.peers else cfg.block_items_max
        self.ingest = Ingest(commit, block_items, cfg.block_delay_ms, cfg.queue_items_max,
                             inflight_blocks_max=4 if cfg.peers else 2)
        self.ingest.start()
        opts = [
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.max_send_message_length", cfg.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        self.server = grpc.aio.server(options=opts)
        self.psp_auth = PspAuthenticator(list(cfg.psp_verifier_keys), cfg.psp_require_signatures,
                                         cfg.psp_verify_threads)
        pb_grpc.add_LedgerServicer_to_server(
            LedgerService(self.ingest, self.reader, cfg.stream_inflight_batches_max, leader_check, read_barrier,
                          psp_auth=self.psp_auth),
            self.server
        )
        if self.replicator is not None:
            from node.transport import PeerService, RegionAdminService
            from sovledger_pb import peer_pb2_grpc

            peer_pb2_grpc.add_PeerServicer_to_server(PeerService(self.replicator.deliver, self._snapshot_source),
                                                     self.server)
            peer_pb2_grpc.add_RegionAdminServicer_to_server(RegionAdminService(self.replicator), self.server)
        pb_grpc.add_AuditServicer_to_server(AuditService(self.reader, self.checkpoints), self.server)
        pb_grpc.add_AdminServicer_to_server(AdminService(self.status), self.server)
        from node.rules_service import RulesService

        pb_grpc.add_RulesServicer_to_server(RulesService(self.store, self.state), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        port = self.server.add_insecure_port(cfg.listen)
        if port == 0:
            raise OSError(f"cannot listen on {cfg.listen}")
        await self.server.start()
        if self.replicator is not None:
            self.replicator.start()
        await self._set_serving(True)
        if cfg.metrics_listen:
            from node.metrics import start_metrics

            start_metrics(cfg.metrics_listen, self)
        head = self.state.head
        log.info("node %s of region %s serving on %s (block %d, %d entries) pid %d",
                 cfg.node_id, cfg.region, cfg.listen, head.height, head.tree_size, os.getpid())

    async def stop(self) -> None:
        await self._set_serving(False)
        if self.server:
            await self.server.stop(grace=2.0)
        if self.replicator is not None:
            await self.replicator.stop()
        if self.ingest:
            await self.ingest.stop()
        if self.psp_auth is not None:
            self.psp_auth.close()
        self._apply_pool.shutdown(wait=True)
        self.store.close()


async def serve(config: NodeConfig) -> None:
    node = Node(config)
    await node.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {config.listen}", flush=True)
    await stop.wait()
    log.info("shutting down")
    await node.stop()
