"""Three single-node regions on 127.0.0.1 that know each other, with every cross-region link cuttable.

Each directed link A→B (A's relay calling B) goes through a loopback forwarder (tests/faults/netshim.py):
each region gets its own view of the federation config in which the other regions' addresses are
the forwarders of its outgoing links. Cutting a region cuts every link into and out of it; clients
(PSPs, the settlement command, the auditor) reach the nodes directly, as in a partition between
regions that leaves each region's own clients connected.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from clients.client import LedgerClient
from ledger.netting import Obligation, clearing_account_id, initiate_record, region_bytes, settlement_account_id
from ledger.note import Signer
from ledger.types import Account, EventKind, Result, Transfer
from node.keys import write_key_file
from sovledger_pb import netting_pb2 as npb
from sovledger_pb import netting_pb2_grpc as npb_grpc
from tests.faults.netshim import Link
from tests.integration.nodeproc import ROOT, NodeProcess, free_port

LEDGERS = (978, 840)
CUSTOMERS = 20


def customer(i: int, ledger: int) -> int:
    return ledger * 1000 + i


class LocalFederation:
    def __init__(self, root: Path, names: list[str], first_region_flags: list[str] | None = None) -> None:
        self.root = root
        self.first_region_flags = first_region_flags or []
        self.names = names
        self.ports = {n: free_port() for n in names}
        self.keys = {n: Signer.generate(f"{n}/node-1") for n in names}
        self.links = {(a, b): Link(self.ports[b]) for a in names for b in names if a != b}
        self.nodes: dict[str, NodeProcess] = {}
        self.clients: dict[str, LedgerClient] = {}
        self.client_config = self._write_config("clients", None)

    def _write_config(self, view: str, src: str | None) -> Path:
        regions = []
        for n in self.names:
            port = self.ports[n] if src in (None, n) else self.links[(src, n)].port
            regions.append({"name": n, "nodes": [{"id": "node-1", "address": f"127.0.0.1:{port}"}],
                            "checkpoint_keys": [self.keys[n].verifier.to_string()], "witness_keys": []})
        path = self.root / f"federation-{view}.json"
        path.write_text(json.dumps({"format": "sovledger-federation/1", "regions": regions}))
        return path

    def start(self) -> None:
        for n in self.names:
            data = self.root / n / "node-1"
            write_key_file(data / "node.key", self.keys[n])
            fed = self._write_config(n, n)
            extra = self.first_region_flags if n == self.names[0] else []
            self.nodes[n] = NodeProcess(data, self.ports[n], ["--region", n, "--node-id", "node-1",
                                                               "--federation", str(fed), *extra]).start()
            self.clients[n] = LedgerClient(self.nodes[n].target, timeout_s=30)

    def stop(self) -> None:
        for c in self.clients.values():
            c.close()
        for p in self.nodes.values():
            p.stop()
        for link in self.links.values():
            link.close()

    def cut(self, region: str) -> None:
        for (a, b), link in self.links.items():
            if region in (a, b):
                link.cut()

    def heal(self) -> None:
        for link in self.links.values():
            link.heal()

    # -- workload ------------------------------------------------------------------------------

    def create_accounts(self) -> None:
        for n, c in self.clients.items():
            accounts = [Account(customer(i, lg), lg, 1) for lg in LEDGERS for i in range(1, CUSTOMERS + 1)]
            accounts += [Account(int.from_bytes(settlement_account_id(lg), "little"), lg, 9) for lg in LEDGERS]
            accounts += [Account(int.from_bytes(clearing_account_id(d, o, lg), "little"), lg, 8,
                                 user_data=int.from_bytes(region_bytes(o), "little"))
                         for lg in LEDGERS for o in self.names if o != n for d in ("due-to", "due-from")]
            assert {r.result for r in c.create_accounts(accounts)} == {Result.OK}

    def domestic(self, region: str, first_id: int, n: int) -> None:
        """``n`` single-phase payments inside ``region``, 100 per batch."""
        c = self.clients[region]
        for start in range(0, n, 100):
            ts = [Transfer(first_id + k, customer(1 + k % CUSTOMERS, LEDGERS[k % 2]),
                           customer(1 + (k + 1) % CUSTOMERS, LEDGERS[k % 2]), 1 + k % 50, LEDGERS[k % 2], 1)
                  for k in range(start, min(n, start + 100))]
            assert {r.result for r in c.create_transfers(ts)} == {Result.OK}

    def pay(self, oid: int, debtor: str, creditor: str, amount: int, ledger: int, window_s: int) -> Result:
        ob = Obligation(oid.to_bytes(16, "little"), amount, ledger, debtor, creditor,
                        customer(1 + oid % CUSTOMERS, ledger).to_bytes(16, "little"), 0)
        rec = initiate_record(ob, customer(1 + (oid // 3) % CUSTOMERS, ledger).to_bytes(16, "little"), 1, window_s)
        (r,) = self.clients[debtor].submit_one(EventKind.OBLIGATION, rec).results
        return Result(r)

    def lookup(self, region: str, ids: list[int]) -> list[npb.Decision]:
        stub = npb_grpc.NettingStub(self.clients[region].channel)
        resp = stub.Lookup(npb.LookupRequest(ids=[i.to_bytes(16, "little") for i in ids]), timeout=10)
        return list(resp.decisions)

    def wait_decided(self, payments: dict[int, tuple[str, str]], timeout_s: float = 60) -> None:
        """Until no debtor holds any of ``payments`` pending (bounded in time)."""
        deadline = time.monotonic() + timeout_s
        while True:
            pending = [oid for oid, (debtor, _c) in payments.items()
                       if self.lookup(debtor, [oid])[0].status == 1]
            if not pending:
                return
            assert time.monotonic() < deadline, f"{len(pending)} obligations still pending: {pending[:5]}"
            time.sleep(0.3)

    def balances(self, region: str, ids: list[int]) -> list[tuple[int, int, int, int]]:
        out = []
        for a in self.clients[region].lookup_accounts(ids):
            assert a is not None
            out.append((a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted))
        return out

    def customer_sums(self) -> dict[int, tuple[int, int]]:
        """Per ledger over all regions: (Σ credits posted − debits posted, Σ pending) of customer accounts."""
        sums: dict[int, tuple[int, int]] = {}
        for lg in LEDGERS:
            posted = pending = 0
            for n in self.names:
                for dp, dpo, cp, cpo in self.balances(n, [customer(i, lg) for i in range(1, CUSTOMERS + 1)]):
                    posted += cpo - dpo
                    pending += dp + cp
            sums[lg] = (posted, pending)
        return sums


def sovledger(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'proto'}")
    return subprocess.run([sys.executable, "-m", "sovledger", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=timeout_s, check=False)


@contextmanager
def local_federation(root: Path, names: list[str]) -> Iterator[LocalFederation]:
    fed = LocalFederation(root, names)
    try:
        fed.start()
        yield fed
    finally:
        fed.stop()
