"""The federation part of ``make demo`` (docs/federation.md): three regions of one node each.

``run_federation_demo`` starts the regions (``sovledger cluster up --regions``, TLS, one CA each),
runs each part as ONE function, and stops them. Parts:

- ``netting_part`` (``sovledger/demo_netting.py``): cross-region payments, one settlement cycle
  (``sovledger settle``) and its audit from both regions' logs (``sovledger audit settlement``).
- ``witness_part``: payments in every region, a checkpoint cosigned by the other regions'
  witnesses (``audit witness --witnesses 2-of-2``), and the global revenue table built from each
  region's aggregate entries proven against those cosigned checkpoints.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.panel import Panel

from clients.client import LedgerClient
from clients.workload import TransferGenerator, account_records
from ledger.note import split_note
from ledger.ownership import account_id_for
from ledger.types import EventKind
from sovledger.cluster import Cluster
from sovledger.demo_netting import netting_part
from sovledger.regions import create_federation, down_regions, load
from sovledger_pb import witness_pb2 as wpb
from sovledger_pb import witness_pb2_grpc as wpb_grpc

REGIONS = ("eu-west", "us-east", "ap-south")
AGGREGATE_EVERY_MS = 1000


def _cli(console: Console, *args: str) -> int:
    proc = subprocess.run([sys.executable, "-m", "sovledger", *args], capture_output=True, text=True)
    console.print(f"[dim]$ sovledger {' '.join(args)}[/dim]")
    console.print(proc.stdout.rstrip(), markup=False, highlight=False)
    if proc.returncode:
        console.print(proc.stderr.rstrip()[-2000:], markup=False, highlight=False)
    return proc.returncode


def _pay(cluster: Cluster, payments: int, seed: int) -> None:
    """A PSP of the region creates 100 accounts and streams ``payments`` micro-payments."""
    first = account_id_for(1, 1)
    with LedgerClient(cluster.nodes[0].target, tls=cluster.client_tls("psp", "1")) as c:
        c.wait_ready()
        c.submit_one(EventKind.CREATE_ACCOUNT, account_records(100, first_id=first))
        gen = TransferGenerator(100, first_account_id=first, psps=1, seed=seed)
        for recs, _ in gen.batches(payments, 2000):
            c.submit_one(EventKind.CREATE_TRANSFER, recs)


def _cosigned(cluster: Cluster, min_size: int) -> str:
    with cluster.channel(cluster.nodes[0].target) as ch:
        note = wpb_grpc.WitnessStub(ch).GetRegionCheckpoint(wpb.RegionCheckpointRequest(), timeout=10).note
    body, sigs = split_note(note) if note else (b"", [])
    size = int(body.split(b"\n")[1]) if body else 0
    return note if size >= min_size and len(sigs) >= 3 else ""


def witness_part(console: Console, data: Path, payments: int = 1000) -> int:
    """Payments in every region → a witness-cosigned checkpoint → the global revenue table."""
    clusters = [Cluster(data / r) for r in REGIONS]
    with console.status(f"{payments:,} payments in each of {len(REGIONS)} regions …"):
        for i, c in enumerate(clusters):
            _pay(c, payments, seed=i + 1)
    eu = clusters[0]
    with console.status("waiting for eu-west's checkpoint to be cosigned by us-east and ap-south …"):
        deadline, note = time.monotonic() + 30, ""
        while not note and time.monotonic() < deadline:
            note = _cosigned(eu, payments)
            time.sleep(0.3)
    console.print("[bold]eu-west's checkpoint, signed by eu-west and cosigned by the other regions' witnesses:[/bold]")
    console.print(note or "(not cosigned within 30 s)", markup=False, highlight=False)
    auditor = ["--tls-config", str(data / "eu-west" / "ca" / "auditor-auditor.toml")]
    fed = str(data / "federation.json")
    rc = _cli(console, "audit", "witness", "--federation", fed, "--region", "eu-west", "--witnesses", "2-of-2",
              *auditor)
    time.sleep(2 * AGGREGATE_EVERY_MS / 1000)  # every leader appends an aggregate of its payments
    rc |= _cli(console, "global", "revenue", "--federation", fed, *auditor)
    return rc


def run_federation_demo(data_dir: str = "demo-data/federation", payments: int = 1000, keep: bool = False) -> int:
    console = Console()
    data = Path(data_dir).resolve()
    if (data / "federation.json").exists():
        import argparse

        down_regions(argparse.Namespace(data=str(data)))
    shutil.rmtree(data, ignore_errors=True)
    console.print(Panel.fit("[bold]regions together[/bold] — eu-west, us-east, ap-south: each its own log, keys "
                            "and CA; they witness each other; only aggregates cross borders", border_style="cyan"))
    clusters = create_federation(data, list(REGIONS), 1, tls=True, aggregate_every_ms=AGGREGATE_EVERY_MS)
    try:
        with console.status("starting three regions …"):
            for c in clusters:
                for n in c.nodes:
                    c.start(n)
            for c in clusters:
                c.wait_leader(60)
        console.print(f"federation up: config {data / 'federation.json'} ({', '.join(load(data).names)})")
        rc = witness_part(console, data, payments)
        return rc or netting_part(console, data)
    finally:
        if not keep:
            for c in clusters:
                c.stop_all()
