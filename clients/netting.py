"""`sovledger settle` and `sovledger audit settlement`: a settlement cycle across regions, and its audit.

settle: ask every region of the federation for its open obligations (Netting.Open), keep those open
in *both* their regions, build the canonical batch (ledger/netting.py), and have every involved
region append it (Netting.Join: each checks it against its own obligations before proposing it).

audit settlement BATCH_ID: trust nothing the nodes say. For every region: its checkpoint signed by
one of its keys in the federation config; every leaf used is proved included in that checkpoint.
Then: the batch leaf (kind 10, ok) in every involved region with the same bytes; for every
obligation an ok ACCEPT leaf in the creditor's log and an ok, accepted RESOLVE leaf in the
debtor's log, both carrying exactly the batch's obligation; positions that are the net of the
obligations and sum to zero per currency. Report: gross obligations → net transfers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import grpc

from clients.channels import open_sync_channel
from clients.connect import ClientTls, TlsConfigError, add_tls_flags, tls_from_args
from ledger.codec import decode_leaf
from ledger.federation import Federation, FederationError, Region, parse_federation
from ledger.merkle import ProofError, verify_leaf_inclusion
from ledger.netting import (
    OBLIGATION_SIZE,
    NettingError,
    Obligation,
    Role,
    SettlementBatch,
    Verdict,
    build_settlement,
    net_positions,
    net_transfers,
    open_in_both,
    verify_settlement,
)
from ledger.note import Checkpoint, NoteError, open_note
from ledger.types import EventKind, Result
from sovledger_pb import netting_pb2 as npb
from sovledger_pb import netting_pb2_grpc as npb_grpc

EXIT_OK: Final = 0
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3
EXIT_SETTLEMENT: Final = 18  # the batch fails the audit (docs/federation.md)
TIMEOUT_S: Final = 15.0


class SettlementError(Exception):
    """The settlement (or its audit) failed; the message says where and why."""

    def __init__(self, message: str, exit_code: int = EXIT_SETTLEMENT) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class RegionClient:
    """One region: its nodes tried in order (the leader answers writes; any node answers reads)."""

    def __init__(self, region: Region, tls: ClientTls | None, base: Path) -> None:
        self.region = region
        if tls is not None and region.ca:
            tls = ClientTls(str(base / region.ca), tls.cert, tls.key)  # the other region's CA verifies its nodes
        self._channels = [open_sync_channel(a, tls) for a in region.addresses]

    def close(self) -> None:
        for ch in self._channels:
            ch.close()

    def call(self, what: str, fn: Any) -> Any:
        last: grpc.RpcError | None = None
        for ch in self._channels:
            try:
                return fn(ch)
            except grpc.RpcError as e:
                last = e
                if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    break
        detail = f"{last.code().name}: {last.details()}" if last is not None else "no node"
        code = EXIT_UNREACHABLE if last is None or last.code() == grpc.StatusCode.UNAVAILABLE else EXIT_SETTLEMENT
        raise SettlementError(f"region {self.region.name}: {what}: {detail}", code)

    def netting(self, what: str, method: str, request: Any) -> Any:
        return self.call(what, lambda ch: getattr(npb_grpc.NettingStub(ch), method)(request, timeout=TIMEOUT_S))


def _clients(fed: Federation, tls: ClientTls | None, base: Path) -> dict[str, RegionClient]:
    return {r.name: RegionClient(r, tls, base) for r in fed.regions}


# -- settle ---------------------------------------------------------------------------------------


@dataclass
class SettleReport:
    cycle: int
    batch_id: str = ""
    gross: int = 0
    net: list[dict[str, Any]] = field(default_factory=list)
    joined: dict[str, str] = field(default_factory=dict)  # region -> "leaf N: result"


def settle(fed: Federation, tls: ClientTls | None, base: Path, cycle: int) -> SettleReport:
    clients = _clients(fed, tls, base)
    try:
        opens = {name: c.netting("open obligations", "Open", npb.OpenRequest()) for name, c in clients.items()}
        obs = open_in_both([r for o in opens.values() for r in o.as_debtor],
                           [r for o in opens.values() for r in o.as_creditor])
        report = SettleReport(cycle)
        if not obs:
            return report
        batch = build_settlement(cycle, obs)
        report.batch_id, report.gross = batch.batch_id.hex(), len(obs)
        report.net = [{"ledger": t.ledger, "payer": t.payer, "payee": t.payee, "amount": t.amount}
                      for t in net_transfers(net_positions(obs))]
        raw = batch.encode()
        for name in sorted({o.debtor for o in obs} | {o.creditor for o in obs}):
            resp = clients[name].netting("join the settlement batch", "Join", npb.JoinRequest(batch=raw))
            report.joined[name] = f"leaf {resp.leaf_index}: {resp.result_name}"
            if resp.result != Result.OK:
                raise SettlementError(f"region {name} appended the batch with result {resp.result_name}")
        return report
    finally:
        for c in clients.values():
            c.close()


# -- audit ------------------------------------------------------------------------------------------


class ProvedLog:
    """A region's log as far as its signed checkpoints prove it: each leaf comes with an inclusion proof in
    a checkpoint signed by one of the region's keys in the federation config (Netting.Prove)."""

    def __init__(self, client: RegionClient) -> None:
        self.client = client
        self._roots: dict[str, tuple[int, bytes]] = {}  # verified notes -> (size, root)

    def _checkpoint(self, note: str) -> tuple[int, bytes]:
        known = self._roots.get(note)
        if known is not None:
            return known
        region = self.client.region
        try:
            cp = Checkpoint.parse(open_note(note, list(region.checkpoint_keys)).body)
        except NoteError as e:
            raise SettlementError(f"region {region.name}: checkpoint not signed by a key of the federation "
                                  f"config: {e}") from e
        if cp.origin != region.origin:
            raise SettlementError(f"region {region.name}: checkpoint origin {cp.origin!r}, expected {region.origin!r}")
        self._roots[note] = (cp.size, cp.root)
        return cp.size, cp.root

    def leaf(self, index: int) -> bytes:
        name = self.client.region.name
        resp = self.client.netting(f"proof of entry {index}", "Prove", npb.ProveRequest(index=index))
        size, root = self._checkpoint(resp.note)
        if resp.tree_size != size or resp.index != index:
            raise SettlementError(f"region {name}: proof of entry {index} does not match its signed checkpoint")
        try:
            verify_leaf_inclusion(resp.leaf, index, size, list(resp.proof), root)
        except ProofError as e:
            raise SettlementError(f"region {name}: entry {index} is not in its signed checkpoint: {e}") from e
        return bytes(resp.leaf)


def check_obligation_leaf(leaf: bytes, ob: Obligation, role: Role) -> str | None:
    """Why this leaf does not prove ``ob`` open under ``role`` (None: it does)."""
    parsed = decode_leaf(leaf)
    body = parsed.body
    if parsed.kind != EventKind.OBLIGATION or parsed.result != Result.OK:
        return f"kind {parsed.kind} result {parsed.result}, expected an ok OBLIGATION entry"
    if body[OBLIGATION_SIZE] != role:
        return f"role {body[OBLIGATION_SIZE]}, expected {role.name}"
    if role == Role.RESOLVE and body[OBLIGATION_SIZE + 1] != Verdict.ACCEPTED:
        return "the debtor resolved it as refused"
    if body[:OBLIGATION_SIZE] != ob.encode():
        return "it carries a different obligation"
    return None


@dataclass
class AuditReport:
    batch_id: str
    regions: list[str]
    gross: int
    gross_volume: dict[int, int]
    net: list[dict[str, Any]]


def _batch(logs: dict[str, ProvedLog], batch_id: bytes) -> tuple[SettlementBatch, dict[str, int]]:
    """The batch bytes (from a proved leaf) and where each region holds it."""
    where: dict[str, int] = {}
    for name, log in logs.items():
        resp = log.client.netting("look up the batch", "Lookup", npb.LookupRequest(batch_id=batch_id))
        if resp.settlement_leaf:
            where[name] = resp.settlement_leaf - 1
    if not where:
        raise SettlementError(f"no region holds settlement batch {batch_id.hex()}")
    name = sorted(where)[0]
    raw = decode_leaf(logs[name].leaf(where[name])).body
    verdict = verify_settlement(raw)
    if not verdict.ok or verdict.batch is None:
        raise SettlementError(f"batch in region {name}: {verdict.failure.name if verdict.failure else ''} "
                              f"{verdict.detail}")
    if verdict.batch.batch_id != batch_id:
        raise SettlementError(f"the leaf region {name} names for batch {batch_id.hex()} holds another batch")
    return verdict.batch, where


def audit_settlement(fed: Federation, tls: ClientTls | None, base: Path, batch_id: bytes) -> AuditReport:
    clients = _clients(fed, tls, base)
    try:
        logs = {name: ProvedLog(c) for name, c in clients.items()}
        batch, where = _batch(logs, batch_id)
        raw = batch.encode()
        involved = sorted({o.debtor for o in batch.obligations} | {o.creditor for o in batch.obligations})
        for name in involved:
            if name not in logs:
                raise SettlementError(f"region {name} of the batch is not in the federation config")
            if name not in where:
                raise SettlementError(f"region {name} is involved but has not appended the batch")
            leaf = decode_leaf(logs[name].leaf(where[name]))
            if leaf.kind != EventKind.SETTLEMENT or leaf.result != Result.OK or leaf.body != raw:
                raise SettlementError(f"region {name}: leaf {where[name]} is not this batch applied ok")
        _check_obligations(logs, batch)
        gross: dict[int, int] = {}
        for o in batch.obligations:
            gross[o.ledger] = gross.get(o.ledger, 0) + o.amount
        net = [{"ledger": t.ledger, "payer": t.payer, "payee": t.payee, "amount": t.amount}
               for t in net_transfers(net_positions(batch.obligations))]
        return AuditReport(batch_id.hex(), involved, len(batch.obligations), gross, net)
    finally:
        for c in clients.values():
            c.close()


def _check_obligations(logs: dict[str, ProvedLog], batch: SettlementBatch) -> None:
    for side, role in (("creditor", Role.ACCEPT), ("debtor", Role.RESOLVE)):
        by_region: dict[str, list[Obligation]] = {}
        for o in batch.obligations:
            by_region.setdefault(getattr(o, side), []).append(o)
        for name, obs in sorted(by_region.items()):
            log = logs[name]
            for start in range(0, len(obs), 1000):
                chunk = obs[start : start + 1000]
                resp = log.client.netting("look up obligations", "Lookup", npb.LookupRequest(ids=[o.id for o in chunk]))
                for o, d in zip(chunk, resp.decisions, strict=True):
                    if not d.status:
                        raise SettlementError(f"region {name} ({side}) holds no obligation {o.id.hex()}")
                    why = check_obligation_leaf(log.leaf(d.leaf_index), o, role)
                    if why:
                        raise SettlementError(f"obligation {o.id.hex()}: {side} region {name}, leaf "
                                              f"{d.leaf_index}: {why}")


# -- commands -----------------------------------------------------------------------------------


def _federation(args: argparse.Namespace) -> tuple[Federation, Path]:
    path = Path(args.federation)
    try:
        return parse_federation(path.read_bytes()), path.parent
    except (OSError, FederationError) as e:
        raise SettlementError(f"federation config {path}: {e}", EXIT_USAGE) from e


def _emit(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    print(json.dumps(data, sort_keys=True) if args.json else text)


def cmd_settle(args: argparse.Namespace) -> int:
    fed, base = _federation(args)
    report = settle(fed, tls_from_args(args, "operator-operator.toml"), base, args.cycle or time.time_ns() // 10**9)
    if not report.batch_id:
        _emit(args, {"cycle": report.cycle, "gross": 0}, "nothing to settle: no obligation is open in both regions")
        return EXIT_OK
    lines = [f"settlement batch {report.batch_id} (cycle {report.cycle}): {report.gross} gross obligations -> "
             f"{len(report.net)} net transfers"]
    lines += [f"  {t['payer']} pays {t['payee']} {t['amount']} (ledger {t['ledger']})" for t in report.net]
    lines += [f"  {r}: {j}" for r, j in sorted(report.joined.items())]
    _emit(args, report.__dict__, "\n".join(lines))
    return EXIT_OK


def cmd_audit_settlement(args: argparse.Namespace) -> int:
    fed, base = _federation(args)
    try:
        batch_id = bytes.fromhex(args.batch)
    except ValueError:
        batch_id = b""
    if len(batch_id) != 16:
        raise SettlementError("BATCH is the 32-hex-digit settlement batch id `sovledger settle` printed", EXIT_USAGE)
    r = audit_settlement(fed, tls_from_args(args, "auditor-auditor.toml"), base, batch_id)
    text = [f"settlement batch {r.batch_id}: OK in {', '.join(r.regions)}",
            f"  {r.gross} gross obligations (each proved in both regions' logs) -> {len(r.net)} net transfers",
            *(f"  ledger {lg}: gross {v}" for lg, v in sorted(r.gross_volume.items())),
            *(f"  {t['payer']} pays {t['payee']} {t['amount']} (ledger {t['ledger']})" for t in r.net),
            "  net positions sum to zero per currency"]
    _emit(args, {**r.__dict__, "ok": True}, "\n".join(text))
    return EXIT_OK


def _guard(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            result: int = fn(args)
            return result
        except SettlementError as e:
            print(f"sovledger: {e}", file=sys.stderr)
            return e.exit_code
        except (TlsConfigError, NettingError) as e:
            print(f"sovledger: {e}", file=sys.stderr)
            return EXIT_USAGE

    return run


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--federation", required=True, help="the federation config (federation.json)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_tls_flags(p)


def register(subparsers: Any) -> None:
    s = subparsers.add_parser("settle", help="run a settlement cycle across the federation's regions",
                              description="Net every obligation open in both its regions into one settlement "
                              "batch and have every involved region append it (docs/federation.md).")
    _common(s)
    s.add_argument("--cycle", type=int, default=0, help="cycle number (default: unix seconds)")
    s.set_defaults(func=_guard(cmd_settle))


def register_audit(audit_sub: Any) -> None:
    a = audit_sub.add_parser("settlement", help="audit a settlement batch in every involved region's log",
                             description="Prove every obligation of the batch in both regions' logs, the batch "
                             f"in every involved region, and the netting. Exit {EXIT_SETTLEMENT} when it fails.")
    a.add_argument("batch", metavar="BATCH", help="settlement batch id (32 hex digits)")
    _common(a)
    a.set_defaults(func=_guard(cmd_audit_settlement))


__all__: Sequence[str] = ["audit_settlement", "register", "register_audit", "settle"]
