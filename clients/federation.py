"""Client side of a federation (docs/federation.md): reach any region's nodes with the right CA.

A caller holds one certificate (its own region's CA issued it). Towards its own region it is what
the certificate says (auditor, operator); towards another region it is the ``federation`` role,
which opens the Witness service only. For each region the channel trusts that region's CA, named
in the federation config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import grpc

from clients.channels import open_sync_channel
from clients.connect import ClientTls
from ledger.federation import Federation, Region, parse_federation
from ledger.note import Checkpoint, NoteError, Verifier, split_note
from ledger.witness import Policy, check_policy
from sovledger_pb import ledger_pb2 as pb
from sovledger_pb import ledger_pb2_grpc as pb_grpc
from sovledger_pb import witness_pb2 as wpb
from sovledger_pb import witness_pb2_grpc as wpb_grpc

T = TypeVar("T")


def _rank(note: str, witnesses: Sequence[Verifier]) -> tuple[int, int, int]:
    """Rank of a region note: cosigned at all, then size, then valid cosignatures by distinct witnesses
    of the federation (``check_policy`` counts them). A malformed note ranks last."""
    try:
        size = Checkpoint.parse(split_note(note)[0]).size
        cosigners = len(check_policy(note, witnesses, Policy(1, 1)).cosigned_by)
    except (NoteError, ValueError):
        return -1, 0, 0
    return int(cosigners > 0), size, cosigners


class FederationClient:
    def __init__(self, config_path: str, tls: ClientTls | None, timeout_s: float = 10.0) -> None:
        self.path = Path(config_path)
        self.fed: Federation = parse_federation(self.path.read_bytes())
        self.tls = tls
        self.timeout_s = timeout_s

    def _tls_for(self, region: Region) -> ClientTls | None:
        if self.tls is None or not region.ca:
            return self.tls
        return dataclasses.replace(self.tls, ca=str(self.path.parent / region.ca))

    @contextmanager
    def channel(self, region: Region, address: str) -> Iterator[grpc.Channel]:
        with open_sync_channel(address, self._tls_for(region)) as ch:
            yield ch

    def each_node(self, region: Region, call: Callable[[grpc.Channel], T]) -> list[tuple[str, T]]:
        """``call`` on every node of ``region`` that answers: (node id, answer)."""
        out = []
        for n in region.nodes:
            try:
                with self.channel(region, n.address) as ch:
                    out.append((n.node_id, call(ch)))
            except grpc.RpcError:
                continue
        return out

    def region_checkpoint(self, region: Region) -> str:
        """The region's newest cosigned checkpoint (the leader's, normally), the one with the most
        cosignatures among equal sizes. A node that holds no cosigned note (a follower: only the leader
        gathers) answers its newest plain checkpoint; that one is taken only if no node has a cosigned
        note, so a follower a few entries ahead of the leader's last gathering round does not hide it."""
        answers = self.each_node(region, lambda ch: wpb_grpc.WitnessStub(ch).GetRegionCheckpoint(
            wpb.RegionCheckpointRequest(), timeout=self.timeout_s))
        notes = [a.note for _, a in answers if a.note]
        witnesses = self.fed.witnesses_of(region.origin)
        return max(notes, key=lambda n: _rank(n, witnesses), default="")

    def witness_views(self, origin: str) -> list[tuple[str, str]]:
        """What every witness of the other regions last cosigned for ``origin``: (region/node, note)."""
        out = []
        for r in self.fed.regions:
            if r.origin == origin:
                continue
            for node_id, a in self.each_node(r, lambda ch: wpb_grpc.WitnessStub(ch).GetCosigned(
                    wpb.OriginRequest(origin=origin), timeout=self.timeout_s)):
                if a.note:
                    out.append((f"{r.name}/{node_id}", a.note))
        return out

    def witness_evidence(self, origin: str) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        for r in self.fed.regions:
            if r.origin == origin:
                continue
            for node_id, a in self.each_node(r, lambda ch: wpb_grpc.WitnessStub(ch).GetEvidence(
                    wpb.OriginRequest(origin=origin), timeout=self.timeout_s)):
                out.extend((f"{r.name}/{node_id}", bytes(doc)) for doc in a.evidence)
        return out

    def consistency_proof(self, region: Region, first: int, second: int) -> list[bytes] | None:
        """From the region's own nodes (auditor/operator certificates of that region only)."""
        for _, a in self.each_node(region, lambda ch: pb_grpc.AuditStub(ch).GetConsistencyProof(
                pb.ConsistencyRequest(first=first, second=second), timeout=self.timeout_s)):
            return list(a.proof)
        return None

    def aggregates(self, region: Region) -> wpb.AggregatesResponse | None:
        answers = self.each_node(region, lambda ch: wpb_grpc.WitnessStub(ch).GetAggregates(
            wpb.AggregatesRequest(), timeout=self.timeout_s))
        best = [a for _, a in answers if a.note]
        witnesses = self.fed.witnesses_of(region.origin)
        return max(best, key=lambda a: _rank(a.note, witnesses), default=None)  # as region_checkpoint
