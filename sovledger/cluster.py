"""Local region launcher: ``sovledger cluster up|status|down|kill|restart``.

Starts a region's nodes as processes on 127.0.0.1 (keys and config generated, logs to files),
waits until a leader is elected and prints where everything is. State lives in
``DATA/cluster.json`` so later commands find the processes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console
from rich.table import Table

from sovledger_pb import ledger_pb2 as pb
from sovledger_pb import ledger_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ".sovledger/cluster"


@dataclass
class NodeEntry:
    node_id: str
    port: int
    data_dir: str
    log: str
    pid: int = 0
    metrics_port: int = 0  # Prometheus endpoint on 127.0.0.1 (0: none)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def _free_port(avoid: frozenset[int] | set[int] = frozenset()) -> int:
    """A port free on 127.0.0.1 now, and not one of ``avoid`` (ports already handed to this region's
    nodes but not bound yet: the kernel may offer a just-released port again)."""
    for _ in range(64):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in avoid:
            return port
    raise OSError("no free port on 127.0.0.1 outside the region's own")


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return True


class Cluster:
    def __init__(self, data: Path) -> None:
        # absolute against the caller's directory: nodes run with cwd = the package root
        self.data = data.absolute()
        self.state_file = data / "cluster.json"
        self.region = "local"
        self.nodes: list[NodeEntry] = []
        self.extra: list[str] = []  # node flags shared by every member (e.g. --operator-keys)
        self.tls = False  # a region CA under DATA/ca and mTLS on every node (`cluster up` default)
        if self.state_file.exists():
            raw = json.loads(self.state_file.read_text())
            self.region = raw["region"]
            self.nodes = [NodeEntry(**n) for n in raw["nodes"]]
            self.extra = list(raw.get("extra", []))
            self.tls = bool(raw.get("tls", False))

    def save(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps({"region": self.region, "extra": self.extra, "tls": self.tls,
                                               "nodes": [asdict(n) for n in self.nodes]}, indent=2))

    def create(self, count: int, region: str, extra: list[str], tls: bool = False, first_port: int = 0) -> None:
        """``tls``: make a region CA and certificates (node-N, operator, auditor, PSP 1) under DATA/ca.
        ``first_port``: node-1 listens there, node-2 on the next port, …; 0 = any free ports."""
        self.region = region
        self.nodes = []
        self.tls = tls
        if tls:
            from sovledger import ca

            ca.init_ca(self.ca_dir, region, force=True)
            for role, name in (("operator", "operator"), ("auditor", "auditor"), ("psp", "1")):
                ca.issue(self.ca_dir, role, name)
        for i in range(1, count + 1):  # a new region's members: node/startup.py skips the wiped-voter check
            (Path(self._add_entry(i, first_port + i - 1 if first_port else 0).data_dir) / "BOOTSTRAP").touch()
        self.extra = list(extra)
        self.save()

    @property
    def ca_dir(self) -> Path:
        return self.data / "ca"

    def ports(self) -> set[int]:
        """Every port handed to this region's nodes (listen and metrics)."""
        return {n.port for n in self.nodes} | {n.metrics_port for n in self.nodes if n.metrics_port}

    def _add_entry(self, num: int, port: int = 0) -> NodeEntry:
        d = self.data / f"node-{num}"
        d.mkdir(parents=True, exist_ok=True)
        node = NodeEntry(f"node-{num}", port or _free_port(self.ports()), str(d), str(self.data / f"node-{num}.log"))
        if self.tls:
            from sovledger import ca

            ca.issue(self.ca_dir, "node", node.node_id)
        self.nodes.append(node)
        return node

    def tls_flags(self, node_id: str) -> list[str]:
        """The node's TLS flags (or --insecure for a region created without TLS)."""
        if not self.tls:
            return ["--insecure"]
        c = self.ca_dir
        return ["--tls-ca", str(c / "ca.pem"), "--tls-cert", str(c / f"node-{node_id}.pem"),
                "--tls-key", str(c / f"node-{node_id}.key"), "--tls-revoked", str(c / "revoked.txt")]

    def client_tls(self, role: str = "operator", name: str = "operator") -> Any:
        """clients.connect.ClientTls for a certificate this launcher issued (None without TLS)."""
        from clients.connect import ClientTls

        if not self.tls:
            return None
        return ClientTls.from_file(str(self.ca_dir / f"{role}-{name}.toml"))

    def channel(self, target: str) -> grpc.Channel:
        """A channel with the operator's certificate (plaintext for an --insecure region)."""
        from clients.channels import open_sync_channel as channel

        return channel(target, self.client_tls())

    def peers_for(self, me: NodeEntry) -> str:
        return ",".join(f"{n.node_id}={n.target}" for n in self.nodes if n is not me)

    def start(self, node: NodeEntry, extra: list[str] | None = None) -> None:
        cmd = [sys.executable, "-m", "sovledger", "node", "--data", node.data_dir, "--listen", node.target,
               "--node-id", node.node_id, "--region", self.region]
        if len(self.nodes) > 1:
            cmd += ["--peers", self.peers_for(node)]
        if node.metrics_port:
            cmd += ["--metrics", f"127.0.0.1:{node.metrics_port}"]
        cmd += self.tls_flags(node.node_id) + self.extra + (extra or [])
        path = os.pathsep.join(filter(None, (os.environ.get("PYTHONPATH"), str(ROOT), str(ROOT / "proto"))))
        env = dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1")
        log = open(node.log, "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                start_new_session=True)
        node.pid = proc.pid
        self.save()

    def _ask(self, node: NodeEntry, call: Callable[[grpc.Channel], Any]) -> Any:
        """One RPC to a node; None when it is down or does not answer."""
        if not _alive(node.pid):
            return None
        try:
            with self.channel(node.target) as ch:
                return call(ch)
        except grpc.RpcError:
            return None

    def status(self, node: NodeEntry, timeout_s: float = 1.0) -> pb.StatusResponse | None:
        st: pb.StatusResponse | None = self._ask(
            node, lambda ch: pb_grpc.AdminStub(ch).Status(pb.StatusRequest(), timeout=timeout_s))
        return st

    def checkpoint(self, node: NodeEntry, timeout_s: float = 1.0) -> pb.CheckpointResponse | None:
        """The node's latest signed checkpoint (None when it is down or has signed none yet)."""
        cp: pb.CheckpointResponse | None = self._ask(
            node, lambda ch: pb_grpc.AuditStub(ch).GetCheckpoint(pb.CheckpointRequest(), timeout=timeout_s))
        return cp if cp is not None and cp.note else None

    def leader(self) -> NodeEntry | None:
        for n in self.nodes:
            st = self.status(n)
            if st is not None and st.role == "leader":
                return n
        return None

    def wait_leader(self, timeout_s: float = 30.0) -> tuple[NodeEntry, float]:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            leader = self.leader()
            if leader is not None:
                return leader, time.monotonic() - t0
            time.sleep(0.05)
        raise TimeoutError(f"no leader elected within {timeout_s:.0f}s; see logs under {self.data}")

    def kill(self, node: NodeEntry, sig: int = signal.SIGKILL) -> None:
        if _alive(node.pid):
            os.kill(node.pid, sig)
            if sig == signal.SIGKILL:
                for _ in range(200):
                    if not _alive(node.pid):
                        break
                    time.sleep(0.01)

    def stop(self, nodes: list[NodeEntry], timeout_s: float = 10.0) -> None:
        """Stop nodes cleanly (SIGTERM, all at once); SIGKILL those not gone within ``timeout_s``."""
        for n in nodes:
            self.kill(n, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for n in nodes:
            while _alive(n.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            self.kill(n)

    def stop_all(self) -> None:
        self.stop(self.nodes)

    def rows(self) -> list[dict[str, Any]]:
        """Per node: liveness, role, term, applied index, tree size, block, latest checkpoint, lag."""
        out: list[dict[str, Any]] = []
        for n in self.nodes:
            st = self.status(n)
            cp = self.checkpoint(n) if st is not None else None
            out.append({"node": n.node_id, "target": n.target, "pid": n.pid, "up": st is not None,
                        "role": st.role if st else None, "term": st.term if st else None,
                        "applied": st.applied_index if st else None, "tree_size": st.tree_size if st else None,
                        "block": st.block if st else None,
                        "checkpoint": {"size": cp.tree_size, "root": cp.root.hex(), "block": cp.block,
                                       "note": cp.note} if cp is not None else None})
        top = max((r["applied"] for r in out if r["up"]), default=0)
        for r in out:
            r["lag"] = top - r["applied"] if r["up"] else None
        return out

    def find(self, name: str) -> NodeEntry:
        for n in self.nodes:
            if n.node_id == name or n.node_id == f"node-{name}":
                return n
        raise SystemExit(f"no node {name!r} in this cluster ({', '.join(n.node_id for n in self.nodes)})")


def _status_table(cluster: Cluster) -> Table:
    t = Table(title=f"region {cluster.region}")
    for col in ("node", "address", "pid", "role", "term", "applied", "tree size", "block", "checkpoint", "lag"):
        t.add_column(col, justify="left" if col in ("node", "address", "role", "checkpoint") else "right")
    for r in cluster.rows():
        if not r["up"]:
            t.add_row(r["node"], r["target"], str(r["pid"]), "[red]down[/red]", "", "", "", "", "", "")
            continue
        cp = r["checkpoint"]
        t.add_row(r["node"], r["target"], str(r["pid"]), r["role"], str(r["term"]), f"{r['applied']:,}",
                  f"{r['tree_size']:,}", str(r["block"]),
                  f"size {cp['size']:,} root {cp['root'][:12]}…" if cp else "none yet", str(r["lag"]))
    return t


def prepare_region(data: Path, region: str, nodes: int, tls: bool, first_port: int = 0,
                   extra: tuple[str, ...] = ()) -> Cluster:
    """A new region's directory: PSP and operator keys, CA and certificates, node entries (not started)."""
    # a PSP signer key for `sovledger psp load --sign`: every node accepts batches it signs
    from ledger.note import Signer
    from node.keys import write_key_file

    psp = Signer.generate("local-psp")
    write_key_file(data / "psp.key", psp, overwrite=True)
    # an operator key for `sovledger rules deploy FILE --key DATA/operator.key`: every node accepts it
    operator = Signer.generate("local-operator")
    write_key_file(data / "operator.key", operator, overwrite=True)
    cluster = Cluster(data)
    cluster.create(nodes, region, ["--psp-keys", psp.verifier.to_string(),
                                   "--operator-keys", operator.verifier.to_string(), *extra],
                   tls=tls, first_port=first_port)
    return cluster


def start_all(cluster: Cluster) -> None:
    for n in cluster.nodes:
        n.metrics_port = _free_port(cluster.ports())
        cluster.start(n)


def print_started(console: Console, cluster: Cluster, leader: NodeEntry, took: float) -> None:
    data = cluster.data
    console.print(_status_table(cluster))
    console.print(f"leader [bold]{leader.node_id}[/bold] at {leader.target} (elected in {took:.2f}s); "
                  f"targets: {','.join(n.target for n in cluster.nodes)}")
    console.print(f"logs: {data}/node-*.log   PSP signer key: {data}/psp.key   operator key: {data}/operator.key")
    console.print("metrics: " + "  ".join(f"http://127.0.0.1:{n.metrics_port}/metrics" for n in cluster.nodes))
    if cluster.tls:
        console.print(f"TLS: region CA {cluster.ca_dir}/ca.pem; client configs (--tls-config): "
                      f"{cluster.ca_dir}/psp-1.toml, operator-operator.toml, auditor-auditor.toml")
    else:
        console.print("[yellow]WARNING: --insecure region: plaintext, no authentication[/yellow]")


def _cmd_up(args: argparse.Namespace) -> int:
    console = Console()
    data = Path(args.data)
    if args.regions:
        from sovledger.regions import up_regions

        return up_regions(args, console)
    cluster = Cluster(data)
    if any(_alive(n.pid) for n in cluster.nodes):
        console.print(f"[yellow]a cluster is already running under {data}; `sovledger cluster down` first[/yellow]")
        return 1
    cluster = prepare_region(data, args.region, args.nodes, tls=not args.insecure, first_port=args.port)
    start_all(cluster)
    try:
        leader, took = cluster.wait_leader(args.timeout)
    except TimeoutError as e:
        console.print(f"[red]{e}[/red]")
        return 1
    print_started(console, cluster, leader, took)
    console.print(f"stop with: sovledger cluster down --data {data}")
    if args.json:
        print(json.dumps({"leader": leader.target, "targets": [n.target for n in cluster.nodes],
                          "data": str(data), "tls": cluster.tls,
                          "ca_dir": str(cluster.ca_dir) if cluster.tls else None}))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from sovledger import regions

    if regions.is_federation(Path(args.data)):
        return regions.status_regions(args)
    cluster = Cluster(Path(args.data))
    if not cluster.nodes:
        print(f"no cluster under {args.data}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(cluster.rows(), indent=2))
    else:
        Console().print(_status_table(cluster))
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from sovledger import regions

    if regions.is_federation(Path(args.data)):
        return regions.down_regions(args)
    cluster = Cluster(Path(args.data))
    cluster.stop_all()
    print(f"stopped {len(cluster.nodes)} node(s); data kept under {args.data}")
    return 0


def _cmd_kill(args: argparse.Namespace) -> int:
    cluster, node = _resolve(args)
    cluster.kill(node)
    print(f"killed {node.node_id} (pid {node.pid}) with SIGKILL")
    return 0


def _cmd_restart(args: argparse.Namespace) -> int:
    cluster, node = _resolve(args)
    cluster.stop([node])
    cluster.start(node)
    leader, took = cluster.wait_leader(30)  # back in service: the region has a leader again
    print(f"restarted {node.node_id} (pid {node.pid}); leader {leader.node_id} after {took:.1f}s")
    return 0


def _resolve(args: argparse.Namespace) -> tuple[Cluster, NodeEntry]:
    """The cluster and node a command names: NODE in a region, REGION/NODE in a federation."""
    from sovledger import regions

    data = Path(args.data)
    if regions.is_federation(data):
        region, sep, name = str(args.node).partition("/")
        if not sep:
            raise SystemExit(f"{data} holds a federation: name the node as REGION/NODE (eu-west/node-1)")
        data = data / region
        if not (data / "cluster.json").exists():
            raise SystemExit(f"no region {region!r} under {args.data}")
        cluster = Cluster(data)
        return cluster, cluster.find(name)
    cluster = Cluster(data)
    return cluster, cluster.find(args.node)


def _admin(cluster: Cluster) -> tuple[NodeEntry, Any]:
    from sovledger_pb import peer_pb2_grpc

    leader, _ = cluster.wait_leader(30)
    return leader, peer_pb2_grpc.RegionAdminStub(cluster.channel(leader.target))


def _cmd_transfer(args: argparse.Namespace) -> int:
    from sovledger_pb import peer_pb2

    cluster = Cluster(Path(args.data))
    target = cluster.find(args.node)
    leader, admin = _admin(cluster)
    try:  # the leader answers once the target leads (or DEADLINE_EXCEEDED)
        reply = admin.TransferLeader(peer_pb2.TransferLeaderRequest(node_id=target.node_id), timeout=12)
    except grpc.RpcError as e:
        print(f"transfer to {target.node_id} failed: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    print(f"{reply.message} (was {leader.node_id})")
    return 0


PROMOTE_WAIT_S = 30.0  # how long `member promote` waits for a learner the leader does not yet count as caught up


def _change_membership(admin: Any, request: Any) -> Any:
    """Send one membership change. A promotion the leader refuses because the learner has not caught up
    *in the leader's view* (its last append answer may still be on the way, even when the learner itself
    already shows every entry) is retried until PROMOTE_WAIT_S, saying so; any other refusal is final."""
    import grpc

    deadline = time.monotonic() + PROMOTE_WAIT_S
    while True:
        try:
            return admin.ChangeMembership(request, timeout=10)
        except grpc.RpcError as e:
            if (e.code() != grpc.StatusCode.FAILED_PRECONDITION or "has not caught up" not in (e.details() or "")
                    or time.monotonic() > deadline):
                raise
            print(f"waiting: {e.details()}", file=sys.stderr)
            time.sleep(0.5)


def _cmd_member(args: argparse.Namespace) -> int:
    from sovledger_pb import peer_pb2

    cluster = Cluster(Path(args.data))
    ops = peer_pb2.MembershipRequest
    if args.action == "add":
        # never reuse a removed member's id: its old certificate (and Raft id) must stay a stranger's
        used = [int(n.node_id.rsplit("-", 1)[1]) for n in cluster.nodes]
        used += [int(p.stem.rsplit("-", 1)[1]) for p in cluster.ca_dir.glob("node-node-*.pem")]
        used += [int(p.name.rsplit("-", 1)[1]) for p in cluster.data.glob("node-*") if p.is_dir()]
        num = max(used, default=0) + 1
        node = cluster._add_entry(num)
        cluster.start(node, ["--join"])
        _, admin = _admin(cluster)
        reply = admin.ChangeMembership(ops(op=ops.ADD_LEARNER, node_id=node.node_id, address=node.target),
                                       timeout=10)
        print(f"{reply.message}; {node.node_id} at {node.target} catches up as a learner; "
              f"promote it with: sovledger cluster member promote {node.node_id}")
        return 0
    node = cluster.find(args.node or "")
    _, admin = _admin(cluster)
    op = ops.ADD_VOTER if args.action == "promote" else ops.REMOVE_VOTER
    reply = _change_membership(admin, ops(op=op, node_id=node.node_id, address=node.target))
    print(reply.message)
    if args.action == "remove":
        time.sleep(0.5)
        cluster.kill(node, signal.SIGTERM)
        cluster.nodes.remove(node)
        cluster.save()
    return 0


def register(sub: Any) -> None:
    c = sub.add_parser("cluster", help="run a local region of nodes",
                       description="Local region launcher: nodes as processes on 127.0.0.1.")
    csub = c.add_subparsers(dest="cluster_command", metavar="ACTION")
    up = csub.add_parser("up", help="start a region and wait for a leader")
    up.add_argument("--nodes", type=int, default=3, choices=(1, 3, 5))
    up.add_argument("--region", default="local")
    up.add_argument("--regions", default="", metavar="A,B,C",
                    help="start a federation: one region per name (each with --nodes nodes and its own CA) under "
                    "DATA/NAME, and DATA/federation.json naming them all (docs/federation.md)")
    up.add_argument("--aggregate-every-ms", type=int, default=5000,
                    help="with --regions: each leader appends an AGGREGATE entry this often (default 5000)")
    up.add_argument("--timeout", type=float, default=30.0)
    up.add_argument("--insecure", action="store_true", help="no CA, plaintext nodes (warns at every start)")
    up.add_argument("--port", type=int, default=0,
                    help="node-1 listens on 127.0.0.1:PORT, node-2 on PORT+1, … (default: free ports)")
    up.set_defaults(func=_cmd_up)
    st = csub.add_parser("status", help="role, term, applied index, checkpoint size, lag per node "
                         "(grouped by region in a federation)")
    st.set_defaults(func=_cmd_status)
    dn = csub.add_parser("down", help="stop every node cleanly (data is kept)")
    dn.set_defaults(func=_cmd_down)
    k = csub.add_parser("kill", help="SIGKILL one node (drills; REGION/NODE in a federation)")
    k.add_argument("node")
    k.set_defaults(func=_cmd_kill)
    r = csub.add_parser("restart", help="restart one node")
    r.add_argument("node")
    r.set_defaults(func=_cmd_restart)
    tr = csub.add_parser("transfer", help="hand leadership to NODE (leader transfer)")
    tr.add_argument("node")
    tr.set_defaults(func=_cmd_transfer)
    mb = csub.add_parser("member", help="membership: add a learner node, promote it, remove a node")
    mb.add_argument("action", choices=("add", "promote", "remove"))
    mb.add_argument("node", nargs="?", help="node id (promote/remove)")
    mb.set_defaults(func=_cmd_member)
    for p in (up, st, dn, k, r, tr, mb):
        p.add_argument("--data", default=DEFAULT_DATA, help=f"cluster directory (default {DEFAULT_DATA})")
        p.add_argument("--json", action="store_true", help="machine-readable output")
