"""``sovledger audit witness``: a region's checkpoint under a witness policy, and split-view hunting.

1. fetch the region's cosigned checkpoint (``Witness.GetRegionCheckpoint``), check the log's own
   signature with the federation's checkpoint keys (exit 10 otherwise);
2. count valid cosignatures by distinct witnesses of the other regions (``ledger.witness.check_policy``);
   fewer than K → exit 16;
3. ask every witness what it last cosigned for this origin and which split-view evidence it keeps;
   any two checkpoints signed by the log that cannot both be true (``ledger.witness.check_pair``,
   with a consistency proof from the region when sizes differ) → the evidence is written to a file
   and the exit code is 17.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import grpc

from clients.auditor.failures import (
    CheckpointSignatureError,
    SplitViewDetected,
    Unreachable,
    UsageError,
    WitnessPolicyUnmet,
)
from clients.auditor.output import Out
from clients.connect import TlsConfigError, tls_from_args
from clients.federation import FederationClient
from ledger.federation import FederationError, Region
from ledger.note import Checkpoint, NoteError, open_note, split_note
from ledger.witness import Policy, SplitView, WitnessFormatError, check_pair, check_policy


def _client(args: argparse.Namespace) -> FederationClient:
    try:
        return FederationClient(args.federation, tls_from_args(args, "auditor-auditor.toml"), args.timeout)
    except (OSError, FederationError, TlsConfigError) as e:
        raise UsageError(f"federation config {args.federation}: {e}") from e


def _size(note: str) -> int:
    return Checkpoint.parse(split_note(note)[0]).size


def _hunt(client: FederationClient, region: Region, note: str) -> tuple[SplitView | None, str, int]:
    """Compare the region's view with every witness's; returns (evidence, who showed it, views compared)."""
    keys = list(region.checkpoint_keys)
    candidates = client.witness_evidence(region.origin)
    for who, doc in candidates:
        try:
            ev = SplitView.from_json(doc)
            found = check_pair(ev.notes[0], ev.notes[1], keys, ev.proof or None)
        except (WitnessFormatError, NoteError):
            continue  # not signed by the log: a witness's claim alone proves nothing
        if found is not None:
            return found, f"evidence kept by witness {who}", len(candidates)
    views = client.witness_views(region.origin)
    for who, other in views:
        lo, hi = sorted((_size(note), _size(other)))
        proof = client.consistency_proof(region, lo, hi) if lo != hi else []
        try:
            found = check_pair(note, other, keys, proof)
        except (WitnessFormatError, NoteError):
            continue
        if found is not None:
            return found, f"the region's checkpoint vs what witness {who} cosigned", len(candidates) + len(views)
    return None, "", len(candidates) + len(views)


def cmd_witness(args: argparse.Namespace, out: Out) -> int:
    client = _client(args)
    try:
        region = client.fed.region(args.region)
        policy = Policy.parse(args.witnesses)
    except (FederationError, ValueError) as e:
        raise UsageError(str(e)) from e
    note = client.region_checkpoint(region)
    if not note:
        raise UsageError(f"no node of {region.name} served a checkpoint ({', '.join(region.addresses)})")
    try:
        open_note(note, list(region.checkpoint_keys))
    except NoteError as e:
        raise CheckpointSignatureError(f"{region.name}'s checkpoint: {e}", note=note) from e
    evidence, source, compared = _hunt(client, region, note)
    if evidence is not None:
        path = Path(args.evidence_out or f"split-view-{region.name}.json")
        path.write_bytes(evidence.to_json())
        raise SplitViewDetected(f"SPLIT VIEW of {region.origin}: {evidence.reason}; evidence written to {path}",
                                evidence_file=str(path), found_in=source, note_a=evidence.notes[0],
                                note_b=evidence.notes[1])
    verdict = check_policy(note, client.fed.witnesses_of(region.origin), policy)
    cp = Checkpoint.parse(split_note(note)[0])
    data = {"region": region.name, "origin": region.origin, "tree_size": cp.size, "root": cp.root.hex(),
            "cosigned_by": list(verdict.cosigned_by), "policy": args.witnesses, "views_compared": compared}
    if not verdict.met:
        raise WitnessPolicyUnmet(f"{region.name} checkpoint {cp.size}: {verdict.reason}", note=note, **{
            k: v for k, v in data.items() if k != "origin"})
    out.result(f"witnessed checkpoint of {region.name}", [
        ("checkpoint", f"size {cp.size:,} root {cp.root.hex()[:16]}… signed by the region"),
        ("witness policy", f"{args.witnesses}: {verdict.reason}"),
        ("cosigned by", ", ".join(verdict.cosigned_by)),
        ("split views", f"none among {compared} witness views and evidence records"),
    ], data)
    return 0


def witnessed_note(args: argparse.Namespace, origin: str) -> tuple[str, str]:
    """``audit verify --witnesses K-of-N --federation FILE``: the region's cosigned checkpoint and where it
    came from, refused (exit 16) unless K distinct witnesses of other regions cosigned it. The audited node
    is asked first; only a region's leader gathers cosignatures, so when its note falls short (a follower's
    plain one) the region's members named in the federation file are asked and the best note is taken
    (``FederationClient.region_checkpoint``). The node itself is then verified against that note."""
    from clients.channels import open_sync_channel
    from sovledger_pb import witness_pb2 as wpb
    from sovledger_pb import witness_pb2_grpc as wpb_grpc

    if not args.federation:
        raise UsageError("--witnesses needs --federation FILE (the witness keys are listed there)")
    client = _client(args)
    try:
        policy = Policy.parse(args.witnesses)
    except ValueError as e:
        raise UsageError(str(e)) from e
    try:
        with open_sync_channel(args.node, client.tls) as ch:
            note = str(wpb_grpc.WitnessStub(ch).GetRegionCheckpoint(wpb.RegionCheckpointRequest(),
                                                                   timeout=args.timeout).note)
    except grpc.RpcError as e:
        raise Unreachable(f"{args.node}: GetRegionCheckpoint failed: {e.code().name}", node=args.node) from e
    witnesses = client.fed.witnesses_of(origin)
    source = args.node
    verdict = check_policy(note, witnesses, policy) if note else None
    region = client.fed.by_origin(origin)
    if region is not None and (verdict is None or not verdict.met):
        best = client.region_checkpoint(region)  # the leader's, normally: it gathers the cosignatures
        best_verdict = check_policy(best, witnesses, policy) if best else None
        if best_verdict is not None and best_verdict.met:
            note, verdict = best, best_verdict
            source = f"the members of {region.name} (the leader gathers cosignatures; {args.node} served a note " \
                     "without enough)"
    if verdict is None:
        raise Unreachable(f"{args.node} serves no checkpoint yet", node=args.node)
    if not verdict.met:
        raise WitnessPolicyUnmet(f"{args.node}: checkpoint of {origin}: {verdict.reason}", note=note,
                                 policy=args.witnesses)
    return note, source


def add_witness_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from clients.connect import add_tls_flags

    w = sub.add_parser("witness", help="a region's checkpoint under a witness policy; hunt for split views")
    w.add_argument("--federation", required=True, help="federation config (docs/federation.md)")
    w.add_argument("--region", required=True, help="the region whose checkpoint to check")
    w.add_argument("--witnesses", required=True, metavar="K-of-N",
                   help="at least K distinct witnesses of the other regions must have cosigned")
    w.add_argument("--evidence-out", default=None, metavar="FILE",
                   help="where split-view evidence goes (default split-view-REGION.json); exit 17")
    w.add_argument("--json", action="store_true", help="machine-readable output")
    w.add_argument("--timeout", type=float, default=10.0, help="per-call timeout, seconds")
    add_tls_flags(w)
