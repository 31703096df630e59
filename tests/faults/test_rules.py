"""A poison rule set: a region is sent a rule set of 50 rules (the docs allow 64). Whatever the
compiler makes of it, the promise is that the region keeps committing payments: the deploy is either
refused before it is proposed, with a clear message, or applied — and then the one checker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from clients.client import BatchRefused, LedgerClient
from ledger.codec import encode_deploy
from ledger.note import Signer
from ledger.rules.model import parse_ruleset, signing_message
from ledger.types import EventKind, Result
from sovledger.cluster import Cluster
from tests.faults.harness import Load, check, create_accounts
from tests.integration.nodeproc import kill_region

pytestmark = pytest.mark.integration
OPERATOR = Signer.generate("faults-operator")


def poison_ruleset(rules: int) -> bytes:
    doc = {"name": "many-rules", "version": 1, "rules": [
        {"id": f"r{i}", "priority": i + 1, "action": "reject", "code": 1000 + i,
         "message": f"amount {1_000_000_007 + i} is blocked", "expr": f"transfer.amount == {1_000_000_007 + i}"}
        for i in range(rules)]}
    canonical = parse_ruleset(doc).canonical()
    return encode_deploy(OPERATOR.key_id, OPERATOR.sign(signing_message(canonical)), canonical)


@pytest.fixture
def region(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path / "region")
    cluster.create(3, "eu-west", ["--operator-keys", OPERATOR.verifier.to_string()])
    for n in cluster.nodes:
        cluster.start(n)
    leader, _ = cluster.wait_leader(30)
    create_accounts(leader.target)
    try:
        yield cluster
    finally:
        kill_region(cluster)


@pytest.mark.faults_slow
def test_rule_set_of_50_rules_never_halts_the_region(region: Cluster) -> None:
    leader, _ = region.wait_leader(30)
    with LedgerClient(leader.target, timeout_s=20) as c:
        try:
            r = c.submit_one(EventKind.DEPLOY_RULESET, poison_ruleset(50))
            outcome = Result(r.results[0]).name
        except BatchRefused as e:  # refused before it was proposed: fine, if it says why
            outcome = str(e)
            assert "rule" in outcome.lower(), outcome
        except grpc.RpcError as e:  # unanswered: the load below shows whether the region still commits
            outcome = f"deploy unanswered: {e.code().name}"
    load = Load(lambda: (n.target if (n := region.leader()) else None), seed=31, batches_max=10,
                seconds_max=60, resend_s=20).start()
    load.thread.join(90)
    ledger = load.finish()
    assert len(ledger.acked) == 10 * 200, f"the region stopped committing after the deploy ({outcome})"
    leader, _ = region.wait_leader(30)
    check({n.node_id: n.target for n in region.nodes}, ledger, leader=leader.node_id,
          scenario=f"rule set of 50 rules ({outcome})")
