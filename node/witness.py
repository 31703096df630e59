"""A node in a federation (docs/federation.md): it witnesses other regions and gathers cosignatures
for its own region.

- As a **witness** (every node, with its own ``witness.key``): ``Witness.AddCheckpoint`` takes a
  foreign checkpoint with a consistency proof, asks ``ledger.witness.decide``, persists what it
  cosigned (``node/witness_store.py``) *before* answering, and keeps split-view evidence.
- As the region's **gatherer** (the leader only): every ``witness_interval_ms`` it offers its newest
  checkpoint to every witness of the other regions (C2SP: on a 409-style answer it retries once
  with a proof from the size the witness reports), checks each cosignature line against the
  federation's witness keys, and stores the note with the lines it gathered; ``GetRegionCheckpoint``
  serves it.

Without ``--federation`` the service still answers (a lone region: no foreign origins, its own
checkpoint without cosignatures).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from ledger.federation import Federation, FederationNode, Region, parse_federation
from ledger.note import Signer, cosign
from ledger.reader import LedgerReader
from ledger.witness import AddCheckpoint, Cosigned, Outcome, Policy, WitnessFormatError, check_policy, decide
from node.aggregator import Aggregator
from node.authz import trust_federation
from node.config import NodeConfig
from node.errors import BadRequest, abort
from node.keys import load_key_file, write_key_file
from node.loops import LeaderRounds
from node.pipeline import Ingest
from node.signing import CheckpointService
from node.tls import TlsFiles, peer_channel
from node.witness_store import WitnessStore
from sovledger_pb import witness_pb2 as wpb
from sovledger_pb import witness_pb2_grpc as wpb_grpc

log = logging.getLogger("sovledger.witness")

WITNESS_KEY_FILE = "witness.key"
CALL_TIMEOUT_S = 3.0


def witness_signer(data: Path, region: str, node_id: str) -> Signer:
    """This node's witness key (made at first start; the launcher makes it earlier to list it)."""
    path = data / WITNESS_KEY_FILE
    if not path.exists():
        signer = Signer.generate(f"{region}/{node_id}/witness")
        write_key_file(path, signer)
        log.warning("first start: created witness key %s", path)
        return signer
    return load_key_file(path)


class FederationPeer:
    """The witness service, the gatherer task and their durable state, for one node."""

    def __init__(self, config: NodeConfig, checkpoints: CheckpointService, reader: LedgerReader,
                 is_leader: Callable[[], bool], ingest: Callable[[], Ingest | None]) -> None:
        data = Path(config.data_dir)
        self.config = config
        self.fed: Federation | None = (parse_federation(Path(config.federation).read_bytes())
                                       if config.federation else None)
        # a lone region (no --federation) witnesses nobody: no witness key, no witness store
        self.store = WitnessStore(data / "witness") if self.fed else None
        self.signer = witness_signer(data, config.region, config.node_id) if self.fed else None
        self.checkpoints = checkpoints
        self.reader = reader
        self.is_leader = is_leader
        others = self.fed.others(config.region) if self.fed else ()
        self.keys_by_origin = {r.origin: tuple(r.checkpoint_keys) for r in others}
        self._lock = asyncio.Lock()
        self._known: dict[str, int] = {}  # witness address → the size it last cosigned for this region
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.gatherer = _Gatherer(self, config.witness_interval_ms / 1000)
        self._gathered = (-1, 0)  # (size, cosignatures) of the stored region note
        self.aggregator = Aggregator(reader, config.aggregate_every_ms if self.fed else 0, ingest, is_leader)
        files = config.tls_files
        if files is not None and files.federation_cas:
            trust_federation(files)

    def add_to(self, server: grpc.aio.Server) -> None:
        wpb_grpc.add_WitnessServicer_to_server(WitnessService(self), server)

    def start(self) -> None:
        self.aggregator.start()
        if self.fed is not None and self.fed.others(self.config.region):
            self.gatherer.start()

    async def stop(self) -> None:
        await self.aggregator.stop()
        await self.gatherer.stop()
        for ch in self._channels.values():
            await ch.close()
        if self.store is not None:
            self.store.close()

    # -- witness side ---------------------------------------------------------------------------

    def last(self, origin: str) -> Cosigned | None:
        return self.store.last(origin) if self.store is not None else None

    async def add_checkpoint(self, body: bytes) -> wpb.AddCheckpointResponse:
        req = AddCheckpoint.parse(body)  # WitnessFormatError → INVALID_ARGUMENT
        async with self._lock:  # one decision at a time: each reads what the previous one stored
            verdict = decide(req, self.keys_by_origin, self.last)
            line = ""
            if verdict.outcome == Outcome.SPLIT_VIEW and verdict.evidence is not None:
                assert self.store is not None, "a split view needs a known origin: a federation"
                if await asyncio.to_thread(self.store.add_evidence, verdict.evidence):
                    log.error("witness: SPLIT VIEW of %s kept as evidence: %s", verdict.evidence.origin,
                              verdict.reason)
            elif verdict.outcome == Outcome.COSIGNED and verdict.checkpoint is not None:
                cp = verdict.checkpoint
                assert self.store is not None and self.signer is not None, "cosigned only in a federation"
                line = cosign(cp.to_body(), self.signer, int(time.time()))
                # durable before the cosignature leaves: never cosign anything inconsistent with it
                await asyncio.to_thread(self.store.put_cosigned,
                                        Cosigned(cp.origin, cp.size, cp.root, req.note + line))
        return wpb.AddCheckpointResponse(verdict=wpb.Verdict.ValueType(verdict.outcome), cosignature=line,
                                         witness_size=verdict.witness_size, message=verdict.reason)

    def region_note(self) -> str:
        note = self.store.region_note() if self.store is not None else ""
        if note:
            return note
        try:
            return self.checkpoints.latest().note
        except Exception:  # nothing signed yet: an empty answer
            return ""

    def aggregates_in(self, note: str) -> wpb.AggregatesResponse:
        size = int(note.split("\n")[1])
        index = self.aggregator.newest_below(size)
        if index is None:
            return wpb.AggregatesResponse(note=note)
        leaf, proof = self.reader.inclusion_proof(index, size)
        return wpb.AggregatesResponse(note=note, entries=[wpb.AggregateEntry(leaf_index=index, leaf=leaf,
                                                                             proof=proof)])

    # -- gatherer side --------------------------------------------------------------------------

    async def gather_once(self) -> int:
        """Offer the newest checkpoint to every foreign witness; returns how many cosigned it."""
        assert self.fed is not None
        cp = self.checkpoints.latest()
        witnesses = [(r, n) for r in self.fed.others(self.config.region) for n in r.nodes]
        if self._gathered == (cp.size, len(witnesses)):
            return len(witnesses)  # every witness cosigned this one already
        lines = [line for line in await asyncio.gather(*(self._ask(r, n, cp.note, cp.size) for r, n in witnesses))
                 if line]
        if lines and (cp.size, len(lines)) > self._gathered:
            assert self.store is not None
            await asyncio.to_thread(self.store.put_region_note, cp.note + "".join(lines))
            self._gathered = (cp.size, len(lines))
        return len(lines)

    async def _ask(self, region: Region, node: FederationNode, note: str, size: int) -> str:
        stub = wpb_grpc.WitnessStub(self._channel(region, node))
        old = self._known.get(node.address, 0)
        for _ in range(2):
            if old > size:
                return ""  # the witness holds a newer checkpoint of ours (another leader's): next round
            proof = await asyncio.to_thread(self.reader.consistency_proof, old, size) if 0 < old < size else []
            body = AddCheckpoint(old, tuple(proof), note).encode()
            try:
                resp = await stub.AddCheckpoint(wpb.AddCheckpointRequest(body=body), timeout=CALL_TIMEOUT_S)
            except grpc.RpcError as e:
                log.info("witness: %s/%s at %s unreachable: %s", region.name, node.node_id, node.address,
                         e.code().name)
                return ""
            if resp.verdict == wpb.OLD_SIZE_MISMATCH:
                old = resp.witness_size
                continue
            if resp.verdict != wpb.COSIGNED:
                log.error("witness: %s/%s refused our checkpoint %d: %s: %s", region.name, node.node_id, size,
                          wpb.Verdict.Name(resp.verdict), resp.message)
                return ""
            if not check_policy(note + resp.cosignature, region.witness_keys, Policy(1, 1)).met:
                log.error("witness: %s/%s answered a cosignature that does not verify", region.name, node.node_id)
                return ""
            self._known[node.address] = size
            return str(resp.cosignature)
        return ""

    def _channel(self, region: Region, node: FederationNode) -> grpc.aio.Channel:
        ch = self._channels.get(node.address)
        if ch is None:
            ch = self._channels[node.address] = foreign_channel(self.config, region, node.address)
        return ch


def foreign_channel(config: NodeConfig, region: Region, address: str) -> grpc.aio.Channel:
    """A channel from this node to a node of another region: this node's certificate, and only that
    region's CA (from the federation config) for the server; plaintext when the node runs --insecure."""
    files = config.tls_files
    if files is None:
        return peer_channel(address, None, [])
    if not region.ca:
        raise ValueError(f"region {region.name} names no CA in the federation config {config.federation}")
    ca = str(Path(config.federation).parent / region.ca)
    return peer_channel(address, TlsFiles(ca, files.cert, files.key), [])


class WitnessService(wpb_grpc.WitnessServicer):
    def __init__(self, peer: FederationPeer) -> None:
        self._peer = peer

    async def AddCheckpoint(self, request: wpb.AddCheckpointRequest,
                            context: grpc.aio.ServicerContext[Any, Any]) -> wpb.AddCheckpointResponse:
        try:
            return await self._peer.add_checkpoint(request.body)
        except WitnessFormatError as e:
            await abort(context, BadRequest(f"add-checkpoint: {e}"))

    async def GetCosigned(self, request: wpb.OriginRequest,
                          context: grpc.aio.ServicerContext[Any, Any]) -> wpb.CosignedResponse:
        last = self._peer.last(request.origin)
        return wpb.CosignedResponse(note=last.note if last else "", tree_size=last.size if last else 0)

    async def GetEvidence(self, request: wpb.OriginRequest,
                          context: grpc.aio.ServicerContext[Any, Any]) -> wpb.EvidenceResponse:
        store = self._peer.store
        return wpb.EvidenceResponse(evidence=store.evidence(request.origin) if store is not None else [])

    async def GetRegionCheckpoint(self, request: wpb.RegionCheckpointRequest,
                                  context: grpc.aio.ServicerContext[Any, Any]) -> wpb.CosignedResponse:
        note = self._peer.region_note()
        size = int(note.split("\n")[1]) if note else 0
        return wpb.CosignedResponse(note=note, tree_size=size)

    async def GetAggregates(self, request: wpb.AggregatesRequest,
                            context: grpc.aio.ServicerContext[Any, Any]) -> wpb.AggregatesResponse:
        """The newest aggregate entry inside the region's cosigned checkpoint, with its inclusion proof."""
        note = self._peer.region_note()
        if not note:
            return wpb.AggregatesResponse()
        try:
            return await asyncio.to_thread(self._peer.aggregates_in, note)
        except Exception as e:
            await abort(context, e)


class _Gatherer(LeaderRounds):
    """The leader's gathering of cosignatures, every ``--witness-interval-ms`` (node/loops.py)."""

    failure_message = "witness: gathering cosignatures failed: %s"

    def __init__(self, peer: FederationPeer, interval_s: float) -> None:
        super().__init__("witness-gather", interval_s, peer.is_leader, log)
        self._peer = peer

    async def round(self) -> int:
        return await self._peer.gather_once()
