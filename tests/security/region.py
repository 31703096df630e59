"""A TLS region as an operator starts it (`sovledger cluster up`, real node processes on 127.0.0.1)
plus the extra certificates the security tests need, and one channel per identity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from clients.channels import open_sync_channel as channel
from clients.connect import ClientTls
from sovledger import ca
from tests.integration.nodeproc import ROOT

IDENTITIES = ("none", "other_ca", "psp_a", "psp_b", "auditor", "operator", "peer", "removed_peer", "revoked")


def cli(*args: str, timeout: float = 120, env_extra: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'proto'}", COLUMNS="200", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "sovledger", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=timeout)


def tls_of(ca_dir: Path, role: str, name: str) -> ClientTls:
    return ClientTls.from_file(str(ca_dir / f"{role}-{name}.toml"))


@dataclass
class Region:
    data: Path
    leader: str
    targets: list[str]
    tls: dict[str, ClientTls | None] = field(default_factory=dict)
    member: str = ""  # a node id still in the region (not the leader)
    removed: str = ""  # a node id removed by the operator

    @property
    def ca_dir(self) -> Path:
        return self.data / "ca"

    def channel(self, identity: str, target: str | None = None) -> grpc.Channel:
        return channel(target or self.leader, self.tls[identity])


def start_region(tmp: Path) -> Region:
    data = tmp / "region"
    up = cli("cluster", "up", "--nodes", "3", "--data", str(data), "--json")
    assert up.returncode == 0, up.stdout + up.stderr
    info = json.loads(up.stdout.strip().splitlines()[-1])
    assert info["tls"] is True
    region = Region(data, info["leader"], info["targets"])
    c = region.ca_dir
    ca.issue(c, "psp", "2")
    ca.issue(c, "psp", "3")
    ca.issue(c, "node", "node-9")  # a well-formed node certificate of this CA, never a member
    ca.revoke(c, ca.serial_of(c / "psp-3.pem"))
    other = tmp / "other-ca"
    ca.init_ca(other, "elsewhere")
    ca.issue(other, "operator", "operator")
    nodes = json.loads((data / "cluster.json").read_text())["nodes"]
    followers = [n["node_id"] for n in nodes if f"127.0.0.1:{n['port']}" != region.leader]
    region.member, region.removed = followers[0], followers[1]
    region.tls = {"none": None, "other_ca": tls_of(other, "operator", "operator"), "psp_a": tls_of(c, "psp", "1"),
                  "psp_b": tls_of(c, "psp", "2"), "auditor": tls_of(c, "auditor", "auditor"),
                  "operator": tls_of(c, "operator", "operator"), "peer": tls_of(c, "node", region.member),
                  "removed_peer": tls_of(c, "node", region.removed), "revoked": tls_of(c, "psp", "3"),
                  "non_member": tls_of(c, "node", "node-9")}
    removed = cli("cluster", "member", "remove", region.removed, "--data", str(data))
    assert removed.returncode == 0, removed.stdout + removed.stderr
    return region


def wait_for(cond: Any, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.2)
    return False


def stop_region(region: Region) -> None:
    """Teardown: kill -9 every node (`cluster down`, the clean stop, is tested in tests/integration/test_launcher.py
    and the docs; here it would only cost its ~2 s gRPC grace per node)."""
    from sovledger.cluster import Cluster
    from tests.integration.nodeproc import kill_region

    kill_region(Cluster(region.data))
