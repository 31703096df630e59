"""One local federation per test module: `sovledger cluster up --regions … --nodes 1` (TLS on), real
node processes on 127.0.0.1, plus helpers to load a region and read what the witnesses hold."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from clients.channels import open_sync_channel
from clients.connect import ClientTls
from ledger.federation import Federation
from sovledger import ca
from sovledger.regions import load
from sovledger_pb import witness_pb2 as wpb
from sovledger_pb import witness_pb2_grpc as wpb_grpc
from tests.security.region import cli

REGIONS = ("eu-west", "us-east", "ap-south")


@dataclass
class Fed:
    data: Path
    fed: Federation

    @property
    def config(self) -> str:
        return str(self.data / "federation.json")

    def target(self, region: str) -> str:
        return self.fed.region(region).nodes[0].address

    def tls(self, region: str, role: str = "operator", name: str = "operator") -> ClientTls:
        return ClientTls.from_file(str(self.data / region / "ca" / f"{role}-{name}.toml"))

    def foreign_tls(self, issuer: str, towards: str, name: str = "node-9") -> ClientTls:
        """A certificate of ``issuer``'s CA, presented to ``towards`` (which trusts it as federation)."""
        ca_dir = self.data / issuer / "ca"
        if not (ca_dir / f"node-{name}.pem").exists():
            ca.issue(ca_dir, "node", name)
        own = ClientTls.from_file(str(ca_dir / f"node-{name}.toml"))
        return ClientTls(str(self.data / towards / "ca" / "ca.pem"), own.cert, own.key)

    def witness(self, region: str, tls: ClientTls | None = None) -> tuple[grpc.Channel, wpb_grpc.WitnessStub]:
        ch = open_sync_channel(self.target(region), tls or self.tls(region))
        return ch, wpb_grpc.WitnessStub(ch)

    def region_note(self, region: str) -> str:
        ch, stub = self.witness(region)
        with ch:
            return str(stub.GetRegionCheckpoint(wpb.RegionCheckpointRequest(), timeout=10).note)

    def load(self, region: str, seconds: float = 1.0, seed: int = 1, target: str = "") -> None:
        targets = target or ",".join(self.fed.region(region).addresses)
        r = cli("psp", "load", "--target", targets, "--rate", "500", "--duration", str(seconds),
                "--accounts", "50", "--psps", "1", "--seed", str(seed), "--json",
                "--tls-config", str(self.data / region / "ca" / "psp-1.toml"))
        assert r.returncode == 0, r.stdout + r.stderr

    def audit(self, region: str, *args: str) -> tuple[int, str]:
        """`sovledger audit witness` as the audited region's auditor (a federation caller elsewhere)."""
        r = cli("audit", "witness", "--federation", self.config, "--region", region, *args, "--json",
                "--tls-config", str(self.data / region / "ca" / "auditor-auditor.toml"))
        return r.returncode, r.stdout + r.stderr


def start(tmp: Path) -> Fed:
    data = tmp / "fed"
    up = cli("cluster", "up", "--regions", ",".join(REGIONS), "--nodes", "1", "--data", str(data), "--json")
    assert up.returncode == 0, up.stdout + up.stderr
    info = json.loads(up.stdout.strip().splitlines()[-1])
    assert set(info["leaders"]) == set(REGIONS)
    return Fed(data, load(data))


def stop(fed: Fed) -> None:
    cli("cluster", "down", "--data", str(fed.data))


def wait_for(what: str, cond: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def cosignatures(note: str) -> int:
    return note.count("\n\u2014 ") - 1  # the region's own signature line is the first
