"""CPU-heavy client requests do not starve Raft (issue #12 item 3): while four clients keep a region's
leader busy validating large rule sets, no follower starts an election (the term stays put)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from clients.client import LedgerClient
from sovledger.cluster import Cluster
from sovledger_pb import ledger_pb2 as pb
from sovledger_pb import ledger_pb2_grpc as pb_grpc
from tests.integration.nodeproc import kill_region, start_region

pytestmark = pytest.mark.integration

CLIENTS = 4
EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "ruleset.json"


def _heavy_document(rules: int = 47, clauses: int = 12) -> bytes:
    """A valid rule set that takes a few hundred ms to compile: many rules near the size limits."""
    doc: dict[str, Any] = json.loads(EXAMPLE.read_text())
    template = doc["rules"][2]
    doc["rules"] = [
        dict(template, id=f"r{i}", priority=i + 1, expr=" || ".join(
            f"(transfer.amount > {i * 100 + j} && risk.debit.count_24h >= {j})" for j in range(clauses)))
        for i in range(rules)
    ]
    return json.dumps(doc).encode()


def _terms(cluster: Cluster) -> dict[str, tuple[int, str]]:
    out = {}
    for n in cluster.nodes:
        with LedgerClient(n.target, timeout_s=10) as c:
            st = c.status()
            out[n.node_id] = (int(st.term), st.leader)
    return out


def test_concurrent_rule_validations_do_not_cause_an_election(tmp_path: Path) -> None:
    # a short election timeout (200–400 ms): a loop blocked by one validation would miss it
    config = tmp_path / "fast-elections.toml"
    config.write_text("tick_ms = 40\nelection_ticks = 5\n")
    cluster = start_region(tmp_path / "region", extra=["--config", str(config)])
    try:
        leader, _ = cluster.wait_leader(30)
        time.sleep(1.0)  # let every follower hear from the leader
        before = _terms(cluster)
        document = _heavy_document()
        answers: list[bool] = []
        errors: list[grpc.StatusCode] = []

        def client() -> None:
            with grpc.insecure_channel(leader.target) as ch:
                stub = pb_grpc.RulesStub(ch)
                deadline = time.monotonic() + 12
                for _ in range(20):  # bounded in count and time
                    if time.monotonic() > deadline:
                        break
                    try:
                        answers.append(stub.ValidateRuleSet(pb.ValidateRuleSetRequest(document=document),
                                                            timeout=30).ok)
                    except grpc.RpcError as e:
                        errors.append(e.code())

        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert answers and all(answers), "the heavy rule set should validate"
        assert set(errors) <= {grpc.StatusCode.RESOURCE_EXHAUSTED}, errors  # bounded queue: refused, not hung
        after = _terms(cluster)
        assert after == before, f"an election happened while clients validated: {before} -> {after}"
    finally:
        kill_region(cluster)
