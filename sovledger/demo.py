"""``make demo``: a local 3-node region, 1M micro-payments with live progress, a leader kill mid-run,
then an audit. Leaves the region running and says how to stop it.

Steps: start the region (sovledger/cluster.py), create accounts for simulated PSPs and merchants,
stream payments in pipelined batches with a progress bar and live throughput, kill -9 the leader
at about 40% and show the failover (the stream re-sends unacknowledged batches with the same ids to
the new leader: nothing is lost or doubled), restart the killed node, let it catch up, then audit:
every replica's checkpoint signature, identical checkpoint bodies across replicas, an inclusion
proof of a random payment, a consistency proof from the pre-kill checkpoint, and exactly-once
presence of every payment. Ends with a summary table.
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from clients.auditor.checks import verify_checkpoint_note, verify_consistency_response, verify_inclusion_response
from clients.client import BatchRefused, BatchResult, LedgerClient
from clients.workload import TransferGenerator, account_records
from ledger.codec import decode_leaf, encode_deploy
from ledger.note import Signer, split_note
from ledger.ownership import account_id_for
from ledger.rules import signing_message, validate
from ledger.types import EventKind, Result
from sovledger.cluster import Cluster, _free_port

BATCH = 4096
INFLIGHT = 6
PSP = "1"  # the demo streams as PSP 1 (certificate psp-1 from the region CA that `cluster` makes)


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))] if s else float("nan")


class FailoverStream:
    """Pipelined batches to the leader; on failure, re-send every unacknowledged batch (same ids)."""

    def __init__(self, cluster: Cluster, batches: list[bytes]) -> None:
        self.cluster = cluster
        self.batches = batches
        self.next = 0  # first batch not yet acknowledged
        self.latencies: list[float] = []
        self.codes: Counter[str] = Counter()
        self.failovers: list[float] = []
        self.acked = 0

    def run(self, on_ack: Any, on_batch_index: Any = None) -> None:
        while self.next < len(self.batches):
            leader = self.cluster.leader()
            if leader is None:
                time.sleep(0.05)
                continue
            sent_at: deque[float] = deque()
            start = self.next

            def gen(start: int = start, sent_at: deque[float] = sent_at) -> Any:
                for i in range(start, len(self.batches)):
                    sent_at.append(time.perf_counter())
                    if on_batch_index:
                        on_batch_index(i)
                    yield (EventKind.CREATE_TRANSFER, self.batches[i], b"", b"")

            client = LedgerClient(leader.target, timeout_s=10, tls=self.cluster.client_tls("psp", PSP))
            broke_at = 0.0
            try:
                for res in client.submit_stream(gen(), inflight=INFLIGHT):
                    if isinstance(res, BatchRefused):
                        broke_at = time.monotonic()
                        break  # not leader / leadership moved: find the leader, re-send from here
                    assert isinstance(res, BatchResult)
                    self.latencies.append(time.perf_counter() - sent_at.popleft())
                    for code in res.results:
                        self.codes[Result(code).name.lower()] += 1
                    self.acked += len(res.results)
                    self.next += 1
                    on_ack(len(res.results))
            except grpc.RpcError:
                broke_at = time.monotonic()
            finally:
                client.close()
            if broke_at:
                self.cluster.wait_leader(30)
                self.failovers.append(time.monotonic() - broke_at)


def run_demo(transfers: int = 1_000_000, accounts: int = 10_000, data_dir: str = "demo-data",
             keep: bool = True, nodes: int = 3) -> int:
    console = Console()
    data = Path(data_dir).resolve()
    cluster = Cluster(data)
    if cluster.nodes:
        cluster.stop_all()
    import shutil

    shutil.rmtree(data, ignore_errors=True)
    cluster = Cluster(data)
    console.print(Panel.fit(f"[bold]sovledger demo[/bold] — a {nodes}-node region on 127.0.0.1, "
                            f"{transfers:,} micro-payments, a leader kill, an audit", border_style="cyan"))
    operator = Signer.generate("demo/operator")  # may deploy rule sets in this region
    cluster.create(nodes, "demo", ["--operator-keys", operator.verifier.to_string()], tls=True)
    (data / "operator.key").write_text(operator.to_string() + "\n")
    with console.status("starting the region and electing a leader …"):
        for n in cluster.nodes:
            n.metrics_port = _free_port()
            cluster.start(n)
        leader, took = cluster.wait_leader(60)
    console.print(f"region up: leader [bold]{leader.node_id}[/bold] at {leader.target} (elected in {took:.2f}s); "
                  f"logs under {data}")
    console.print("metrics (Prometheus): " + "  ".join(
        f"{n.node_id} http://127.0.0.1:{n.metrics_port}/metrics" for n in cluster.nodes))
    try:
        code = _run(console, cluster, transfers, accounts, keep, operator)
        _show_tail(console, cluster)
        return code
    finally:
        if not keep:
            cluster.stop_all()


DEMO_RULES = {
    "name": "demo", "version": 1,
    "description": "deployed mid-run by make demo: flag unusually large micro-payments for review",
    "rules": [{"id": "large-micro-payment", "priority": 10, "action": "flag", "code": 3001,
               "message": "payment above 15.00 flagged for review", "expr": "transfer.amount > 1500"}],
}


def _deploy_rules(cluster: Cluster, operator: Signer) -> str:
    compiled = validate(DEMO_RULES)
    record = encode_deploy(operator.key_id, operator.sign(signing_message(compiled.canonical)), compiled.canonical)
    for _ in range(50):
        leader = cluster.leader()
        if leader is None:
            time.sleep(0.1)
            continue
        try:
            with LedgerClient(leader.target, timeout_s=10, tls=cluster.client_tls()) as c:  # the operator
                r = c.submit_one(EventKind.DEPLOY_RULESET, record)
            return f"{Result(r.results[0]).name.lower()} (block {r.blocks[0]}, hash {compiled.hash.hex()[:12]}…)"
        except (BatchRefused, grpc.RpcError):
            time.sleep(0.1)
    return "not deployed (no leader)"


def _run(console: Console, cluster: Cluster, transfers: int, accounts: int, keep: bool, operator: Signer) -> int:
    leader, _ = cluster.wait_leader(30)
    first = account_id_for(int(PSP), 1)  # the demo PSP's accounts (docs/security.md: ownership)
    with LedgerClient(leader.target, tls=cluster.client_tls("psp", PSP)) as c:
        c.wait_ready()
        for off in range(0, accounts, 8000):
            c.submit_one(EventKind.CREATE_ACCOUNT, account_records(min(8000, accounts - off), first_id=first + off))
    console.print(f"created {accounts:,} accounts (merchants and PSP settlement accounts, USD, scale 2)")
    trust = cluster.data / "trust.json"
    keys = [k for n in cluster.nodes for k in ("--key", _verifier_key(Path(n.data_dir)))]
    _sovledger(console, "audit", "trust", "init", "--node", leader.target, "--trust", str(trust), *keys,
               *_auditor_tls(cluster), quiet=True)
    console.print(f"auditor trust store {trust}: the region's {len(cluster.nodes)} node keys and today's checkpoint")
    gen = TransferGenerator(accounts, first_account_id=first, psps=1, seed=int(time.time()))
    with console.status("preparing payments …"):
        plan = [recs for recs, _ in gen.batches(transfers, BATCH)]
    stream = FailoverStream(cluster, plan)
    kill_at = int(len(plan) * 0.4)
    deploy_at = int(len(plan) * 0.2)
    killed: dict[str, Any] = {}
    deployed: dict[str, str] = {}

    def maybe_kill(i: int) -> None:
        if i == deploy_at and not deployed:
            deployed["result"] = _deploy_rules(cluster, operator)
        if i == kill_at and not killed:
            victim = cluster.leader()
            if victim is not None:
                with LedgerClient(victim.target, tls=cluster.client_tls("auditor", "auditor")) as vc:
                    cp = vc.checkpoint()
                    killed.update(node=victim, note=cp.note, size=cp.tree_size, root=cp.root, vkey=cp.verifier_key,
                                  at=time.monotonic())
                cluster.kill(victim, signal.SIGKILL)

    progress = Progress(TextColumn("[bold]streaming payments"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[rate]:>9} tx/s"), TextColumn("{task.fields[note]}"),
                        TimeElapsedColumn(), console=console)
    t0 = time.perf_counter()
    with progress:
        task = progress.add_task("stream", total=transfers, rate="—", note="")

        def on_ack(n: int) -> None:
            note = " ".join(filter(None, (
                "[cyan]rules deployed[/cyan]" if deployed else "",
                f"[yellow]leader {killed['node'].node_id} killed[/yellow]" if killed else "")))
            progress.update(task, advance=n, rate=f"{stream.acked / (time.perf_counter() - t0):,.0f}", note=note)

        stream.run(on_ack, maybe_kill)
    elapsed = time.perf_counter() - t0
    new_leader, _ = cluster.wait_leader(30)
    if killed:
        console.print(f"failover: {killed['node'].node_id} was killed; {new_leader.node_id} leads now; "
                      f"stream resumed after {max(stream.failovers or [0]):.2f}s. Restarting "
                      f"{killed['node'].node_id} …")
        cluster.start(killed["node"])
    audit = _audit(console, cluster, transfers, killed)
    audit["personal data erased (sovledger pii erase)"] = _pii_erasure(console, cluster)
    _auditor_tool(console, cluster, trust, audit)
    _summary(console, stream, elapsed, deployed, audit, cluster)
    if keep:
        console.print(f"The region keeps running: [bold]sovledger cluster status --data {cluster.data}[/bold]; "
                      f"stop it with [bold]sovledger cluster down --data {cluster.data}[/bold]")
    return 0 if audit.get("audit", "").startswith("passed") else 1


def _auditor_tool(console: Console, cluster: Cluster, trust: Path, audit: dict[str, str]) -> None:
    """The auditor's own CLI over the whole log and across the replicas; exit codes go in the summary."""
    console.rule("the auditor's tool (sovledger audit)")
    leader, _ = cluster.wait_leader(30)
    full = _sovledger(console, "audit", "verify", "--node", leader.target, "--trust", str(trust), "--full",
                      *_auditor_tls(cluster))
    same = _sovledger(console, "audit", "compare", "--nodes", ",".join(n.target for n in cluster.nodes),
                      "--trust", str(trust), *_auditor_tls(cluster))
    audit["sovledger audit verify --full (exit code)"] = f"{full}" + (" ok" if full == 0 else " [red]FAILED[/red]")
    audit["sovledger audit compare (exit code)"] = f"{same}" + (" ok" if same == 0 else " [red]FAILED[/red]")
    if full or same:
        audit["audit"] = "[red]FAILED[/red]"


def _summary(console: Console, stream: FailoverStream, elapsed: float, deployed: dict[str, str],
             audit: dict[str, str], cluster: Cluster) -> None:
    table = Table(title="summary")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("payments acknowledged (quorum-durable)", f"{stream.acked:,}")
    table.add_row("throughput", f"{stream.acked / elapsed:,.0f} tx/s")
    table.add_row("batch latency p50 / p99", f"{_pct(stream.latencies, 50) * 1000:.0f} / "
                  f"{_pct(stream.latencies, 99) * 1000:.0f} ms ({BATCH} per batch, {INFLIGHT} in flight)")
    table.add_row("failover (stream broken → resumed)", ", ".join(f"{x:.2f}s" for x in stream.failovers) or "—")
    table.add_row("rule set deployed mid-run", deployed.get("result", "—"))
    table.add_row("payments flagged by rules (open exceptions)", _open_exceptions(cluster))
    for name, n in sorted(stream.codes.items()):
        why = " (re-sent after failover, already committed)" if name == "transfer_exists" else ""
        label = f"result: {name}{why}"
        table.add_row(label, f"{n:,}")
    for k, v in audit.items():
        table.add_row(k, v)
    console.print(table)


def _auditor_tls(cluster: Cluster) -> list[str]:
    return ["--tls-config", str(cluster.ca_dir / "auditor-auditor.toml")]


def _pii_erasure(console: Console, cluster: Cluster) -> str:
    """Put a subject into the region's vault, erase it, show that it is gone; the full audit runs after.
    Each step with the certificate of the role that may take it (docs/security.md): PSP 1 puts,
    the operator erases, the auditor's disclosure then answers "erased"."""
    console.rule("personal data: vault, erasure (sovledger pii, docs/privacy.md)")
    leader, _ = cluster.wait_leader(30)

    def as_role(toml: str) -> list[str]:
        return ["--tls-config", str(cluster.ca_dir / toml)] if cluster.tls else ["--insecure"]

    put = _sovledger(console, "pii", "put", "0x5eed", "--node", leader.target, *as_role("psp-1.toml"),
                     *([] if cluster.tls else ["--psp-id", "1"]),
                     "--field", "name=Demo Person", "--field", "email=demo.person@example.org", "--field", "country=FR")
    erase = _sovledger(console, "pii", "erase", "0x5eed", "--node", leader.target, "--reason", "subject_request",
                       *as_role("operator-operator.toml"))
    gone = _sovledger(console, "pii", "get", "0x5eed", "--node", leader.target,
                      *as_role("auditor-auditor.toml"))  # fails: "erased"
    if put or erase or not gone:
        return "[red]FAILED[/red]"
    return "1 subject: erasure entry logged, key and record shredded on every replica"


def _show_tail(console: Console, cluster: Cluster) -> None:
    """The follow stream, as a downstream system would consume it: the newest entry, as JSON."""
    leader, _ = cluster.wait_leader(30)
    with LedgerClient(leader.target, tls=cluster.client_tls("auditor", "auditor")) as c:  # TLS region
        last = c.checkpoint().tree_size - 1
    targets = ",".join(n.target for n in cluster.nodes)
    _sovledger(console, "tail", "--target", targets, "--from", str(max(0, last)), "--count", "1",
               *_auditor_tls(cluster))


def _verifier_key(data_dir: Path) -> str:
    from node.keys import describe_key_file

    return str(describe_key_file(data_dir / "node.key")["verifier_key"])


def _sovledger(console: Console, *args: str, quiet: bool = False) -> int:
    """Run a sovledger command as an auditor would, showing its output."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "sovledger", *args], capture_output=True, text=True)
    if not quiet or proc.returncode:
        console.print(f"[dim]$ sovledger {' '.join(args)}[/dim]")
        console.print(proc.stdout.rstrip(), markup=False, highlight=False)
        if proc.returncode:
            console.print(proc.stderr.rstrip()[-2000:], markup=False, highlight=False)
    return proc.returncode


def _open_exceptions(cluster: Cluster) -> str:
    import json

    from sovledger_pb import ledger_pb2 as pb
    from sovledger_pb import ledger_pb2_grpc as pb_grpc

    leader = cluster.leader()
    if leader is None:
        return "—"
    with cluster.channel(leader.target) as ch:  # the operator's certificate
        req = pb.RulesReportRequest(exceptions_limit=1_000_000)
        report = json.loads(pb_grpc.RulesStub(ch).Report(req, timeout=30).json)
    return f"{len(report.get('open_exceptions', [])):,}"


def _tree_size(c: LedgerClient) -> int:
    """The node's signed tree size; 0 while a restarted replica has signed nothing yet (UNAVAILABLE)."""
    try:
        return int(c.checkpoint().tree_size)
    except grpc.RpcError:
        return 0


def _audit(console: Console, cluster: Cluster, transfers: int, killed: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    leader, _ = cluster.wait_leader(30)
    auditor = cluster.client_tls("auditor", "auditor")
    with LedgerClient(leader.target, tls=auditor) as c:
        final = c.checkpoint()
    with console.status("audit: waiting for every replica to catch up …"):
        deadline = time.monotonic() + 120
        for n in cluster.nodes:
            with LedgerClient(n.target, tls=auditor) as c:
                c.wait_ready(30)
                while _tree_size(c) < final.tree_size and time.monotonic() < deadline:
                    time.sleep(0.2)
    bodies = set()
    with console.status("audit: signatures, replicas, proofs, exactly-once …"):
        for n in cluster.nodes:
            with LedgerClient(n.target, tls=auditor) as c:
                cp = c.checkpoint()
                verify_checkpoint_note(cp.note, cp.verifier_key)
                if cp.tree_size == final.tree_size:
                    bodies.add(split_note(cp.note)[0])
        with LedgerClient(leader.target, tls=auditor) as c:
            idx = random.randrange(final.tree_size)
            verify_inclusion_response(c.inclusion_proof(index=idx, tree_size=final.tree_size), final.root)
            if killed:
                verify_checkpoint_note(killed["note"], killed["vkey"])
                verify_consistency_response(c.consistency_proof(killed["size"], final.tree_size), killed["root"],
                                            final.root)
            seen: Counter[bytes] = Counter()
            for raw in c.entries(0, final.tree_size):
                leaf = decode_leaf(raw)
                if leaf.kind == EventKind.CREATE_TRANSFER and leaf.result == Result.OK:
                    seen[leaf.body[:16]] += 1
    ok = len(bodies) == 1 and len(seen) == transfers and set(seen.values()) == {1}
    out["replicas with identical checkpoint bodies"] = f"{len(cluster.nodes)} of {len(cluster.nodes)}" \
        if len(bodies) == 1 else f"[red]{len(bodies)} different bodies[/red]"
    out["payments in the log exactly once"] = f"{sum(1 for v in seen.values() if v == 1):,} of {transfers:,}"
    out["inclusion proof (random entry)"] = f"entry {idx:,} verified"
    if killed:
        out["consistency proof (pre-kill → final)"] = f"{killed['size']:,} → {final.tree_size:,} verified"
    out["audit"] = "passed" if ok else "[red]FAILED[/red]"
    console.print(Panel(final.note.rstrip(), title=f"latest checkpoint (signed by {leader.node_id}, C2SP signed note)"))
    return out
