"""faults_slow: three regions of three nodes (`cluster up --regions`), cross-region load while the creditor
region's leader is killed and restarted; every obligation ends decided alike in both regions, a settlement
cycle is audited, Σ of each currency is unchanged."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import grpc
import pytest

from clients.client import LedgerClient
from ledger.netting import (
    Obligation,
    ObligationStatus,
    clearing_account_id,
    initiate_record,
    region_bytes,
    settlement_account_id,
)
from ledger.types import Account, EventKind, Result
from sovledger_pb import netting_pb2 as npb
from sovledger_pb import netting_pb2_grpc as npb_grpc
from tests.netting.federation import sovledger

pytestmark = [pytest.mark.integration, pytest.mark.faults_slow]

NAMES = ["eu-west", "us-east", "ap-south"]
LEDGER = 978


def _leader(data: Path, region: str) -> str:
    deadline = time.monotonic() + 60
    while True:
        st = json.loads(sovledger("cluster", "status", "--data", str(data), "--json").stdout)
        leaders = [r["target"] for r in st["regions"][region] if r.get("role") == "leader"]
        if leaders:
            return str(leaders[0])
        assert time.monotonic() < deadline, f"region {region} has no leader"
        time.sleep(0.5)


def _decision(targets: list[str], oid: int) -> tuple[int, bytes]:
    """The most advanced status any node of the region reports (followers may lag a little)."""
    best = (0, b"")
    for t in targets:
        with grpc.insecure_channel(t) as ch:
            try:
                (d,) = npb_grpc.NettingStub(ch).Lookup(npb.LookupRequest(ids=[oid.to_bytes(16, "little")]),
                                                        timeout=5).decisions
            except grpc.RpcError:
                continue
        best = max(best, (d.status, d.obligation))
    return best


def test_creditor_leader_killed_during_cross_region_load(tmp_path: Path) -> None:
    data = tmp_path / "fed"
    up = sovledger("cluster", "up", "--regions", ",".join(NAMES), "--nodes", "3", "--insecure", "--data", str(data),
                   "--json", timeout_s=180)
    assert up.returncode == 0, up.stderr
    info = json.loads(up.stdout.strip().splitlines()[-1])
    try:
        for n in NAMES:
            accounts = [Account(LEDGER * 1000 + i, LEDGER, 1) for i in range(1, 11)]
            accounts.append(Account(int.from_bytes(settlement_account_id(LEDGER), "little"), LEDGER, 9))
            accounts += [Account(int.from_bytes(clearing_account_id(d, o, LEDGER), "little"), LEDGER, 8,
                                 user_data=int.from_bytes(region_bytes(o), "little"))
                         for o in NAMES if o != n for d in ("due-to", "due-from")]
            with LedgerClient(info["leaders"][n], timeout_s=30) as c:
                assert {r.result for r in c.create_accounts(accounts)} == {Result.OK}
        rng = random.Random(3)
        payments: dict[int, tuple[str, str]] = {}
        for k in range(1, 61):
            debtor = rng.choice(["eu-west", "ap-south"])
            ob = Obligation(k.to_bytes(16, "little"), rng.randint(1, 999), LEDGER, debtor, "us-east",
                            (LEDGER * 1000 + 1 + k % 10).to_bytes(16, "little"), 0)
            rec = initiate_record(ob, (LEDGER * 1000 + 1 + (k * 3) % 10).to_bytes(16, "little"), 1, 120)
            with LedgerClient(info["leaders"][debtor], timeout_s=30) as c:
                assert c.submit_one(EventKind.OBLIGATION, rec).results == [Result.OK]
            payments[k] = (debtor, "us-east")
            if k == 20:
                victim = _leader(data, "us-east")
                node = next(f"us-east/{r['node']}" for r in json.loads(sovledger(
                    "cluster", "status", "--data", str(data), "--json").stdout)["regions"]["us-east"]
                    if r["target"] == victim)
                assert sovledger("cluster", "kill", node, "--data", str(data)).returncode == 0
            if k == 45:
                assert sovledger("cluster", "restart", node, "--data", str(data)).returncode == 0
        deadline = time.monotonic() + 120
        while True:
            statuses = {oid: (_decision(info["regions"][d], oid), _decision(info["regions"][c], oid))
                        for oid, (d, c) in payments.items()}
            if all(a == b and a[0] == ObligationStatus.OPEN for a, b in statuses.values()):
                break
            assert time.monotonic() < deadline, f"not all decided alike: {list(statuses.items())[:3]}"
            time.sleep(1)
        fed = str(data / "federation.json")
        run = sovledger("settle", "--federation", fed, "--insecure", "--json")
        assert run.returncode == 0, run.stderr
        report = json.loads(run.stdout)
        assert report["gross"] == len(payments)
        audit = sovledger("audit", "settlement", report["batch_id"], "--federation", fed, "--insecure")
        assert audit.returncode == 0, audit.stderr
        sums = 0
        for n in NAMES:
            with LedgerClient(info["leaders"][n] if n != "us-east" else _leader(data, n), timeout_s=30) as c:
                for a in c.lookup_accounts([LEDGER * 1000 + i for i in range(1, 11)]):
                    assert a is not None and a.debits_pending == a.credits_pending == 0
                    sums += a.credits_posted - a.debits_posted
        assert sums == 0
    finally:
        sovledger("cluster", "down", "--data", str(data))
