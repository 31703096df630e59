"""Real node processes on 127.0.0.1 for integration tests: start, wait ready, kill -9, restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NodeProcess:
    def __init__(self, data_dir: Path, port: int | None = None, extra: list[str] | None = None,
                 config: Path | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.extra = extra or []
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}.log"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> NodeProcess:
        cmd = [sys.executable, "-m", "sovledger", "node", "--data", str(self.data_dir), "--listen", self.target,
               *self.extra]
        if self.config:
            cmd += ["--config", str(self.config)]
        if "--tls-ca" not in self.extra:  # tests not about security run plaintext (tests/security/ do not)
            cmd.append("--insecure")
        env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'proto'}", PYTHONUNBUFFERED="1")
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, cwd=ROOT, env=env)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith(b"READY"):
                return self
            if not line and self.proc.poll() is not None:
                break
        raise RuntimeError(f"node did not become ready; log:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill9()
        return self.proc.returncode if self.proc else None


def wait_tree_size(target: str, size: int, timeout_s: float = 60, tls: Any = None) -> int:
    """Poll a node's own checkpoint (stale read: it may be a follower) until it reaches ``size``.
    ``tls``: a clients.connect.ClientTls allowed to read checkpoints (auditor, operator) on a TLS region."""
    import grpc

    from clients.client import LedgerClient

    deadline = time.monotonic() + timeout_s
    got = 0
    with LedgerClient(target, stale_reads=True, tls=tls) as c:
        c.wait_ready(timeout_s)
        while time.monotonic() < deadline:
            try:
                got = int(c.checkpoint().tree_size)
            except grpc.RpcError:  # a restarted replica signs nothing until it caught up with its peers
                got = 0
            if got >= size:
                break
            time.sleep(0.1)
    return got


def start_region(root: Path, nodes: int = 3, extra: list[str] | None = None) -> Any:
    """A local region of real node processes (sovledger.cluster.Cluster), started."""
    from sovledger.cluster import Cluster

    cluster = Cluster(root)
    cluster.create(nodes, "eu-west", [])
    for n in cluster.nodes:
        cluster.start(n, extra)
    return cluster


def kill_region(cluster: Any) -> None:
    """Tear down a region whose stopping is not what the test is about: kill -9 every node at once.

    A clean stop (SIGTERM) of a whole region costs its leader up to 3 s: it tries to hand leadership over
    to members that are stopping too (node/server.py). Clean stops are tested where they are the
    subject (tests/integration/test_region_lifecycle.py hand-over, test_launcher.py `cluster down`,
    the docs' `cluster down`); a teardown asserts nothing about them."""
    from sovledger.cluster import Cluster

    for n in Cluster(cluster.data).nodes + cluster.nodes:  # the saved list too: members added or removed
        cluster.kill(n, signal.SIGKILL)
