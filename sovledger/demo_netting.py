"""The netting part of the federation demo (docs/federation.md §8–9): cross-region payments between
running regions, one settlement cycle, and its audit from both regions' logs.

``netting_part`` is the ONE function the federation demo (``sovledger/demo_federation.py``) calls
with the federation's data directory (``sovledger cluster up --regions …``, TLS, one CA each).
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from clients.client import LedgerClient
from ledger.codec import encode_account
from ledger.netting import (
    Obligation,
    ObligationStatus,
    clearing_account_id,
    initiate_record,
    region_bytes,
    settlement_account_id,
)
from ledger.ownership import account_id_for
from ledger.types import Account, EventKind
from sovledger.cluster import Cluster
from sovledger.regions import FEDERATION_FILE, load
from sovledger_pb import netting_pb2 as npb
from sovledger_pb import netting_pb2_grpc as npb_grpc

LEDGER = 978
CUSTOMERS = 10
FIRST_CUSTOMER = 5001  # PSP 1's account numbers used here (account_id_for(1, n))


def _region_accounts(region: str, others: list[str]) -> bytes:
    """The operator's clearing and settlement accounts (docs/formats.md §16.3)."""
    accounts = [Account(int.from_bytes(settlement_account_id(LEDGER), "little"), LEDGER, 9)]
    accounts += [Account(int.from_bytes(clearing_account_id(d, o, LEDGER), "little"), LEDGER, 8,
                         user_data=int.from_bytes(region_bytes(o), "little"))
                 for o in others for d in ("due-to", "due-from")]
    return b"".join(encode_account(a) for a in accounts)


def _customers() -> bytes:
    return b"".join(encode_account(Account(account_id_for(1, FIRST_CUSTOMER + i), LEDGER, 1))
                    for i in range(CUSTOMERS))


def _pending(cluster: Cluster, ids: list[bytes]) -> int:
    with cluster.channel(cluster.nodes[0].target) as ch:
        resp = npb_grpc.NettingStub(ch).Lookup(npb.LookupRequest(ids=ids), timeout=10)
    return sum(1 for d in resp.decisions if d.status == ObligationStatus.PENDING)


def _cli(console: Console, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "sovledger", *args], capture_output=True, text=True, check=False)
    console.print(f"[dim]$ sovledger {' '.join(a if len(a) < 60 else '…' + a[-40:] for a in args)}[/dim]")
    console.print((proc.stdout or proc.stderr).rstrip()[-3000:], markup=False, highlight=False)
    return proc


def netting_part(console: Console, data: Path, payments: int = 60) -> int:
    """Cross-region payments → every obligation decided in both logs → one settlement cycle → its audit."""
    names = list(load(data).names)
    clusters = {n: Cluster(data / n) for n in names}
    rng = random.Random(7)
    sent: dict[str, list[bytes]] = {n: [] for n in names}
    with console.status(f"{payments} cross-region payments between {', '.join(names)} …"):
        for n, c in clusters.items():
            with LedgerClient(c.nodes[0].target, tls=c.client_tls()) as ops:
                ops.submit_one(EventKind.CREATE_ACCOUNT, _region_accounts(n, [o for o in names if o != n]))
            with LedgerClient(c.nodes[0].target, tls=c.client_tls("psp", "1")) as psp:
                psp.submit_one(EventKind.CREATE_ACCOUNT, _customers())
        for k in range(payments):
            debtor, creditor = rng.sample(names, 2)
            oid = (0xC0FFEE << 64 | k).to_bytes(16, "little")
            ob = Obligation(oid, rng.randint(100, 50_000), LEDGER, debtor, creditor,
                            account_id_for(1, FIRST_CUSTOMER + rng.randrange(CUSTOMERS)).to_bytes(16, "little"), 0)
            payer = account_id_for(1, FIRST_CUSTOMER + rng.randrange(CUSTOMERS)).to_bytes(16, "little")
            c = clusters[debtor]
            with LedgerClient(c.nodes[0].target, tls=c.client_tls("psp", "1")) as psp:
                psp.submit_one(EventKind.OBLIGATION, initiate_record(ob, payer, 1, 60))
            sent[debtor].append(oid)
    with console.status("each creditor region decides, each debtor region follows …"):
        deadline = time.monotonic() + 60
        while sum(_pending(clusters[n], ids) for n, ids in sent.items() if ids) and time.monotonic() < deadline:
            time.sleep(0.3)
    fed = str(data / FEDERATION_FILE)
    first = clusters[names[0]]
    settle = _cli(console, "settle", "--federation", fed, "--tls-config", str(first.ca_dir / "operator-operator.toml"))
    found = re.search(r"settlement batch ([0-9a-f]{32})", settle.stdout)
    if settle.returncode or found is None:
        return settle.returncode or 1
    batch = found.group(1)
    audit = _cli(console, "audit", "settlement", batch, "--federation", fed,
                 "--tls-config", str(first.ca_dir / "auditor-auditor.toml"))
    return audit.returncode
