"""The node process, wiring only: open the store, pick the committer (``node.committer``: local, or
the Raft replicator when the region has peers), start ingest + checkpoints, serve gRPC until signalled.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from ledger.codec import Batch
from ledger.federation import parse_federation
from ledger.keyrotation import make_rotation
from ledger.lmdb_store import LmdbStore
from ledger.note import Signer
from ledger.reader import LedgerReader
from ledger.state import BatchOutcome, LedgerState
from ledger.types import BATCH_ITEMS_MAX, EventKind, Result
from node import logs, metrics
from node.authz import AuthzInterceptor
from node.backup import add_operations_service
from node.committer import Committer, LocalCommitter
from node.config import NodeConfig
from node.errors import BadRequest
from node.expiry import ExpiryTimer
from node.fair_share import FairShare, PspLimit, parse_limits
from node.guard_file import GUARD_FILE
from node.health import HealthWatch
from node.key_rotation import KeyRing
from node.memory import MapTrimmer, MapWatch
from node.metrics import start_metrics
from node.netting import NettingService, ObligationRelay, SettlementTimer, channel_factory
from node.offload import Offload
from node.pii_edge import parse_screening
from node.pipeline import Ingest
from node.psp_auth import PspAuthenticator
from node.psp_guard import SubmitGate
from node.replication import Replicator, node_number
from node.rules_service import RulesService
from node.service import AdminService, AuditService, LedgerService
from node.signing import CheckpointService
from node.snapshot_exchange import SnapshotExchange
from node.startup import check_store, lock_data_dir, peer_checkpoint_floor
from node.tls import RevocationList, server_credentials
from node.transport import PeerService, PeerTransport, RegionAdminService
from node.vault_node import NodeVault
from node.witness import FederationPeer
from sovledger_pb import ledger_pb2 as pb
from sovledger_pb import ledger_pb2_grpc as pb_grpc
from sovledger_pb import netting_pb2_grpc as npb_grpc
from sovledger_pb import peer_pb2_grpc

log = logging.getLogger("sovledger.node")

HANDSHAKE_TIMEOUT_MS = 5_000  # a connection that does not finish its handshake by then is closed
CONNECTION_IDLE_MS = 300_000  # a connection without calls this long is closed (clients reconnect)
CONNECTIONS_MAX = 1024  # beyond this, new connections are refused
STREAMS_PER_CONNECTION_MAX = 256
PEER_PING_MIN_MS = 5_000  # pings are allowed this often: below the peer links' keepalive (10 s)


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Listener options: bounded connections and streams, half-open connections closed, keepalive
    pings of peers and clients accepted (no GOAWAY too_many_pings)."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
        ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
        ("grpc.max_connection_idle_ms", CONNECTION_IDLE_MS),
        ("grpc.max_allowed_incoming_connections", CONNECTIONS_MAX),
        ("grpc.max_concurrent_streams", STREAMS_PER_CONNECTION_MAX),
        ("grpc.keepalive_time_ms", 60_000),  # the server pings idle clients: dead ones are dropped
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.min_ping_interval_without_data_ms", PEER_PING_MIN_MS),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


class Node:
    """Wires store, state machine, ingest, checkpoints and the gRPC server together."""

    def __init__(self, config: NodeConfig, full_check: Callable[[LedgerReader], None] | None = None) -> None:
        self.config = config
        data = Path(config.data_dir)
        data.mkdir(parents=True, exist_ok=True)
        self._data_lock = lock_data_dir(data)  # one process per data directory (node/startup.py)
        self.store = LmdbStore(str(data / "ledger"), config.map_size_bytes)
        self.store.commit_observer = metrics.FSYNC.observe
        # file-backed RSS of the LMDB map (node/memory.py)
        self.map_trimmer = MapTrimmer(str(data / "ledger" / "data.mdb"), config.map_resident_bytes_max)
        self.map_watch = MapWatch(self.map_trimmer)  # reads outside blocks (the trimmer looks after each block)
        self.state = LedgerState(self.store, config.operator_verifiers)
        if self.state.migrated_nodes:
            log.info("rewrote %d Merkle tree-node keys to the end-major layout (docs/formats.md §8)",
                     self.state.migrated_nodes)
        if self.state.indexed_obligations:
            log.info("indexed %d cross-region obligations by status (table obligation_status, docs/formats.md)",
                     self.state.indexed_obligations)
        self.reader = LedgerReader(self.store)
        self.key = check_store(config, self.reader, full_check)  # key, tail (or full) scan, membership
        self.keyring = KeyRing(data, self.key)
        self.checkpoints = CheckpointService(
            self.reader, self.key, config.origin, data / GUARD_FILE, config.checkpoint_every_blocks,
            choose_signer=self._checkpoint_signer,
        )
        self._apply_pool = ThreadPoolExecutor(1, thread_name_prefix="apply")
        self.ingest: Ingest | None = None
        self.committer: Committer = LocalCommitter(self.state, self._apply_pool, config.own_address, self._sign_block)
        self.replicator: Replicator | None = None  # when the region has peers (then also the committer)
        self.snapshots: SnapshotExchange | None = None
        self.expiry: ExpiryTimer | None = None
        self.relay: ObligationRelay | None = None  # cross-region payments (node/netting.py)
        self.settlement: SettlementTimer | None = None  # periodic settlement cycles (the coordinating region)
        self.netting = NettingService(config.region, self.store, self._propose, lambda: self.committer.check_leader(),
                                      self._prove)
        self.server: grpc.aio.Server | None = None
        self.peer_service: PeerService | None = None  # inbound Raft streams, ended before the stop's grace
        self.psp_auth: PspAuthenticator | None = None
        self.vault = NodeVault(config, self.store)  # PII vault (docs/privacy.md)
        self.federation = FederationPeer(config, self.checkpoints, self.reader,  # docs/federation.md
                                         lambda: self.committer.status().role == "leader", lambda: self.ingest)
        self.offload = Offload()  # client-triggered heavy reads, off the loop that drives Raft
        self.health = HealthWatch(lambda: self.committer, lambda: self.ingest, self.checkpoints, self.state,
                                  self._apply_pool)
        self.started_ns = time.time_ns()

    def _checkpoint_signer(self, tree_size: int) -> Signer:
        """The key for a checkpoint of ``tree_size``: follows this node's KEY_ROTATION entries in the log."""
        return self.keyring.signer_for(tree_size, self.state.node_key(self._node_number()))

    def _node_number(self) -> int:
        try:
            return node_number(self.config.node_id)
        except ValueError:
            return 0  # a single node named without a number: rotations are recorded under node 0

    async def rotate_key(self, request: pb.RotateKeyRequest) -> pb.RotateKeyResponse:
        """Announce a new checkpoint key under the current one (a KEY_ROTATION entry); the switch follows the log."""
        if request.node_id and request.node_id != self.config.node_id:
            raise BadRequest(f"this is {self.config.node_id}, not {request.node_id}: "
                             "connect to the node whose key you want to rotate")
        self.committer.check_leader()
        effective_size = request.effective_size
        new = self.keyring.prepare_next()
        rot = make_rotation(self.config.origin, self._node_number(), self.keyring.current, new, effective_size)
        outcome, _block = await self._ingest().submit(Batch(EventKind.KEY_ROTATION, rot.encode()))
        result, index = outcome.results[0], outcome.log_indexes[0]
        log.info("key rotation entry %d: %s (%s -> %s)", index, Result(result).name.lower(),
                 rot.old.key_id.hex(), rot.new.key_id.hex())
        return pb.RotateKeyResponse(result=result, result_name=Result(result).name.lower(), leaf_index=index,
                                    takeover_size=rot.takeover(index) if result == Result.OK else 0,
                                    old_verifier_key=rot.old.to_string(), new_verifier_key=rot.new.to_string())

    def _sign_block(self, state: LedgerState) -> None:
        """The one checkpoint-signing hook: after every applied block (store thread)."""
        self.vault.after_block()  # shred subjects erased in this block (or a snapshot) before announcing it
        self.checkpoints.on_block(state.head)
        self.map_trimmer.maybe_trim()

    def status(self) -> pb.StatusResponse:
        head = self.state.head
        st = self.committer.status()
        return pb.StatusResponse(
            node_id=self.config.node_id, region=self.config.region, role=st.role, term=st.term,
            applied_index=st.applied_index, tree_size=head.tree_size, block=head.height,
            leader=self.committer.leader_address(), queue_items=self.ingest.queued_items if self.ingest else 0,
            verifier_key=self.checkpoints.verifier_key,
        )

    def _start_replication(self) -> Replicator:
        cfg = self.config
        me = node_number(cfg.node_id)
        addresses = {node_number(p.node_id): p.address for p in cfg.peers}
        addresses[me] = cfg.own_address
        voters = sorted(a for a in addresses if not (cfg.join and a == me))
        self.snapshots = SnapshotExchange(cfg, self.store, self.state, self.checkpoints, self._apply_pool,
                                          self._sign_block, addresses)
        return Replicator(
            self_id=me, voters=voters, learners=[me] if cfg.join else [], addresses=addresses, store=self.store,
            state=self.state,
            pool=self._apply_pool, tick_ms=cfg.tick_ms, election_ticks=cfg.election_ticks,
            heartbeat_ticks=cfg.heartbeat_ticks, on_block=self._sign_block,
            max_message_bytes=cfg.max_message_bytes - (64 << 10), log_keep_entries=cfg.raft_log_keep_entries,
            snapshot_installer=self.snapshots.install,
            transport_factory=functools.partial(PeerTransport, tls=cfg.tls_files),
        )

    def _start_committer(self) -> None:
        cfg = self.config
        if cfg.peers:  # otherwise the LocalCommitter made in __init__ stays
            replicator = self.replicator = self._start_replication()
            self.committer = replicator
            self.vault.peer_addresses = lambda: [a for pid, a in replicator.addresses.items()
                                                 if pid != replicator.self_id and a]
            replicator.on_member_removed.append(self.vault.forget_removed)
        # In a region a block is one Raft entry and must fit one peer message (max_message_bytes):
        # cap it at one full batch (8189 signed transfers ≈ 2 MB).
        block_items = min(cfg.block_items_max, BATCH_ITEMS_MAX) if cfg.peers else cfg.block_items_max
        # a region overlaps one block's replication with the previous block's apply (2 open blocks);
        # one node applies one block at a time, so a second partial block would only wait
        self.ingest = Ingest(self.committer.propose, block_items, cfg.block_delay_ms, cfg.queue_items_max,
                             inflight_blocks_max=4 if cfg.peers else 2, linger_blocks=2 if cfg.peers else 1)

    def _add_services(self, server: grpc.aio.Server, ingest: Ingest) -> None:
        cfg = self.config
        self.psp_auth = PspAuthenticator(list(cfg.psp_verifier_keys), cfg.psp_require_signatures,
                                         cfg.psp_verify_threads)
        pb_grpc.add_LedgerServicer_to_server(
            LedgerService(ingest, self.reader, cfg.stream_inflight_batches_max, self.committer.check_leader,
                          self.committer.read_barrier, psp_auth=self.psp_auth, gate=self._submit_gate(),
                          offload=self.offload,
                          screening=parse_screening(cfg.pii_screening)),
            server
        )
        if self.replicator is not None and self.snapshots is not None:
            self.peer_service = PeerService(self.replicator.deliver, self.snapshots.source)
            peer_pb2_grpc.add_PeerServicer_to_server(self.peer_service, server)
            peer_pb2_grpc.add_RegionAdminServicer_to_server(RegionAdminService(self.replicator), server)
        pb_grpc.add_AuditServicer_to_server(AuditService(self.reader, self.checkpoints, self.offload), server)
        pb_grpc.add_AdminServicer_to_server(AdminService(self.status, self.rotate_key), server)
        pb_grpc.add_RulesServicer_to_server(RulesService(self.store, self.state, self.offload), server)
        self.vault.add_to(server, lambda: self.ingest, self.committer.check_leader)
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, server)
        add_operations_service(server, self)
        self.federation.add_to(server)
        npb_grpc.add_NettingServicer_to_server(self.netting, server)

    async def _propose(self, batch: Batch) -> BatchOutcome:
        """A batch the node itself proposes (obligations, settlement): its outcome once durable."""
        outcome, _block = await self._ingest().submit(batch)
        return outcome

    async def _prove(self, index: int) -> tuple[int, str, bytes, list[bytes]]:
        """An entry with its inclusion proof in the latest signed checkpoint (Netting.Prove)."""
        cp = self.checkpoints.latest()
        if index >= cp.size:
            raise BadRequest(f"entry {index} is not in the latest signed checkpoint (size {cp.size})")
        leaf, proof = await self.offload.run(self.reader.inclusion_proof, index, cp.size)
        return cp.size, cp.note, leaf, list(proof)

    def _start_relay(self) -> None:
        """Cross-region payments: the leader relays pending obligations to their creditor regions."""
        cfg = self.config
        if not cfg.federation:
            return
        fed = parse_federation(Path(cfg.federation).read_bytes())
        channels = channel_factory(cfg, fed)
        is_leader = lambda: self.committer.status().role == "leader"  # noqa: E731
        self.relay = ObligationRelay(cfg.region, self.store, fed, channels, self._propose, is_leader,
                                     cfg.relay_interval_ms / 1000)
        self.relay.start()
        if cfg.settle_every_s > 0 and fed.regions[0].name == cfg.region:  # one coordinator: the first region
            self.settlement = SettlementTimer(self.netting, fed, channels, is_leader, cfg.settle_every_s, time.time)
            self.settlement.start()

    def _listen(self) -> grpc.aio.Server:
        """Create the gRPC server and bind its listener (the one place that opens the port)."""
        cfg = self.config
        server = self._create_server(server_options(cfg.max_message_bytes))
        self._add_services(server, self._ingest())
        files = cfg.tls_files
        if files is None:
            port = server.add_insecure_port(cfg.listen)
        else:
            port = server.add_secure_port(cfg.listen, server_credentials(files))
        if port == 0:
            raise OSError(f"cannot listen on {cfg.listen}")
        return server

    def _create_server(self, options: list[tuple[str, Any]]) -> grpc.aio.Server:
        """The gRPC server: with TLS, every call first passes the authorization table (node/authz.py)."""
        if self.config.insecure:
            log.warning("INSECURE: plaintext gRPC without authentication on %s; anyone who reaches this port "
                        "can reconfigure the region and read the whole ledger (docs/security.md)", self.config.listen)
            if self.config.log_format != "json":  # json: the log line above is the warning (one object a line)
                print(f"WARNING: node {self.config.node_id} runs --insecure (plaintext, no authentication)",
                      file=sys.stderr, flush=True)
            return grpc.aio.server(options=options)

        def is_member(name: str) -> bool:
            r = self.replicator
            try:
                return r is not None and node_number(name) in (r.raw.voters | r.raw.learners)
            except ValueError:
                return False

        interceptor = AuthzInterceptor(RevocationList(self.config.tls_revoked), is_member)
        return grpc.aio.server(options=options, interceptors=[interceptor])

    def _submit_gate(self) -> SubmitGate:
        cfg = self.config
        default = PspLimit(cfg.psp_rate_per_s, cfg.psp_burst, cfg.psp_inflight_batches)
        return SubmitGate(self.reader, FairShare(default, parse_limits(cfg.psp_limits)))

    def _ingest(self) -> Ingest:
        assert self.ingest is not None, "the committer starts before the listener"
        return self.ingest

    async def start(self) -> None:
        cfg = self.config
        if cfg.peers:  # never sign below what the region already signed (an old data directory)
            self.checkpoints.floor, self.checkpoints.floor_source = peer_checkpoint_floor(cfg)
        self.checkpoints.on_start(self.state.head)
        self._start_committer()
        self._ingest().start()
        self.expiry = ExpiryTimer(self.store, self.committer.propose,
                                  lambda: self.committer.status().role == "leader")
        self.expiry.start()
        self.map_watch.start()
        self._start_relay()
        self.server = self._listen()
        await self.server.start()
        self.committer.start()
        self.vault.start()
        self.federation.start()
        await self.health.set(True)
        self.health.start()
        if cfg.metrics_listen:
            start_metrics(cfg.metrics_listen, self)
        logs.set_context(self._log_context)
        head = self.state.head
        log.info("node %s of region %s serving on %s (block %d, %d entries) pid %d",
                 cfg.node_id, cfg.region, cfg.listen, head.height, head.tree_size, os.getpid())

    def _log_context(self) -> dict[str, Any]:
        return {"term": self.committer.status().term, "block": self.state.head.height}

    async def stop(self) -> None:
        await self.health.stop()
        await self.committer.hand_over()  # while the listener still carries the peers' answers
        if self.expiry is not None:
            await self.expiry.stop()
        await self.map_watch.stop()
        if self.relay is not None:
            await self.relay.stop()
        if self.settlement is not None:
            await self.settlement.stop()
        if self.server:
            if self.peer_service is not None:  # peers' streams never end by themselves: the grace would wait 2 s
                log.info("stopping: ended %d inbound peer streams", self.peer_service.end_streams())
            await self.server.stop(grace=2.0)
        await self.committer.stop()
        if self.ingest:
            await self.ingest.stop()
        if self.psp_auth is not None:
            self.psp_auth.close()
        await self.vault.stop()
        await self.federation.stop()
        self.offload.close()
        self._apply_pool.shutdown(wait=True)
        self.checkpoints.close()
        self.store.close()
        self._data_lock.close()


async def serve(config: NodeConfig, full_check: Callable[[LedgerReader], None] | None = None) -> None:
    node = Node(config, full_check)
    await node.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {config.listen}", flush=True)
    await stop.wait()
    log.info("shutting down")
    await node.stop()
