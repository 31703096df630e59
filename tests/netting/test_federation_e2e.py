"""Three real single-node regions: domestic and cross-region load, a netting cycle settled and audited with
the CLI, a region partitioned and healed — nothing half done, Σ of each currency unchanged, every obligation
settled or voided."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator

import pytest

from ledger.netting import ObligationStatus
from ledger.types import Result
from tests.netting.federation import LEDGERS, LocalFederation, local_federation, sovledger

pytestmark = pytest.mark.integration

NAMES = ["eu-west", "us-east", "ap-south"]
OPEN, VOIDED, SETTLED = (int(s) for s in (ObligationStatus.OPEN, ObligationStatus.VOIDED, ObligationStatus.SETTLED))


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    with local_federation(tmp_path_factory.mktemp("fed"), NAMES) as f:
        f.create_accounts()
        yield f


def _cross(fed: LocalFederation, rng: random.Random, first_id: int, n: int, window_s: int,
           pairs: list[tuple[str, str]]) -> dict[int, tuple[str, str]]:
    out = {}
    for k in range(n):
        debtor, creditor = rng.choice(pairs)
        oid = first_id + k
        assert fed.pay(oid, debtor, creditor, rng.randint(1, 5000), LEDGERS[k % 2], window_s) == Result.OK
        out[oid] = (debtor, creditor)
    return out


def _statuses(fed: LocalFederation, payments: dict[int, tuple[str, str]]) -> dict[int, int]:
    """Each obligation's status, the same in both its regions (never half done)."""
    out = {}
    for oid, (debtor, creditor) in payments.items():
        (d,), (c,) = fed.lookup(debtor, [oid]), fed.lookup(creditor, [oid])
        assert d.status == c.status, f"obligation {oid}: debtor {debtor} {d.status}, creditor {creditor} {c.status}"
        assert d.obligation == c.obligation
        out[oid] = d.status
    return out


def _settle_and_audit(fed: LocalFederation, cycle: int) -> dict[str, object]:
    cfg = str(fed.client_config)
    run = sovledger("settle", "--federation", cfg, "--insecure", "--json", "--cycle", str(cycle))
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    audit = sovledger("audit", "settlement", report["batch_id"], "--federation", cfg, "--insecure")
    assert audit.returncode == 0, audit.stderr + audit.stdout
    assert f"{report['gross']} gross obligations" in audit.stdout and "net transfers" in audit.stdout
    return dict(report)


def test_cross_region_payments_net_settle_and_audit(fed: LocalFederation) -> None:
    rng = random.Random(1)
    all_pairs = [(a, b) for a in NAMES for b in NAMES if a != b]
    for i, n in enumerate(NAMES):
        fed.domestic(n, 1_000_000 * (i + 1), 300)
    payments = _cross(fed, rng, 1, 60, 60, all_pairs)
    fed.wait_decided(payments)
    assert set(_statuses(fed, payments).values()) == {OPEN}
    assert fed.customer_sums() == {lg: (0, 0) for lg in LEDGERS}
    report = _settle_and_audit(fed, 1)
    assert report["gross"] == 60 and 1 <= len(report["net"]) <= 2 * (len(NAMES) - 1)  # type: ignore[arg-type]
    assert set(_statuses(fed, payments).values()) == {SETTLED}
    bad = sovledger("audit", "settlement", "00" * 16, "--federation", str(fed.client_config), "--insecure")
    assert bad.returncode == 18 and "no region holds" in bad.stderr


def test_a_partitioned_region_keeps_serving_and_nothing_is_half_done(fed: LocalFederation) -> None:
    rng = random.Random(2)
    before = fed.customer_sums()
    fed.cut("ap-south")
    try:
        fed.domestic("ap-south", 9_000_000, 200)  # domestic payments never wait for another region
        touching = _cross(fed, rng, 10_000, 12, 2, [("ap-south", "eu-west"), ("us-east", "ap-south")])
        others = _cross(fed, rng, 20_000, 12, 60, [("eu-west", "us-east"), ("us-east", "eu-west")])
        fed.wait_decided(others)  # the rest of the federation goes on meanwhile
        time.sleep(3)  # past the 2 s deadlines of the obligations touching the cut region
        assert set(_statuses(fed, others).values()) == {OPEN}
        assert all(d.status == 1 for oid, (debtor, _c) in touching.items() for d in fed.lookup(debtor, [oid]))
    finally:
        fed.heal()
    fed.wait_decided(touching)
    assert set(_statuses(fed, touching).values()) == {VOIDED}  # voided cleanly in both regions
    assert fed.customer_sums() == before  # Σ of each currency unchanged, nothing pending
    report = _settle_and_audit(fed, 2)
    assert report["gross"] == len(others)
    statuses = _statuses(fed, {**touching, **others})
    assert set(statuses.values()) <= {SETTLED, VOIDED}  # every obligation settled or voided
