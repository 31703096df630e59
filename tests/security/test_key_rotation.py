"""`sovledger keys rotate` on the `cluster up` region (TLS): only an operator may rotate, on the
leader; the region keeps committing; the auditor (its own certificate) follows the new key through
the log while the followers keep their keys."""

from __future__ import annotations

import json

import pytest

from clients.client import LedgerClient
from clients.workload import account_records
from ledger.ownership import account_id_for
from ledger.types import EventKind
from tests.security.region import Region, cli

pytestmark = pytest.mark.integration


def _status(region: Region, target: str) -> tuple[str, str]:
    with LedgerClient(target, tls=region.tls["operator"]) as c:
        st = c.status()
    return st.role, st.verifier_key


def test_operator_rotates_the_leaders_key_and_the_auditor_follows(region: Region) -> None:
    ca = region.ca_dir
    auditor = ["--tls-config", str(ca / "auditor-auditor.toml")]
    trust = region.data / "trust-rotation.json"
    init = cli("audit", "trust", "init", "--node", region.leader, "--trust", str(trust), *auditor)
    assert init.returncode == 0, init.stdout + init.stderr
    _, old_key = _status(region, region.leader)
    nodes = json.loads((region.data / "cluster.json").read_text())["nodes"]
    member = next(f"127.0.0.1:{n['port']}" for n in nodes if n["node_id"] == region.member)  # a follower
    others = {member: _status(region, member)[1]}

    as_psp = cli("keys", "rotate", "--node", region.leader, "--tls-config", str(ca / "psp-1.toml"))
    assert as_psp.returncode != 0 and "PERMISSION_DENIED" in as_psp.stderr, as_psp.stderr
    for target in others:  # a follower answers with the leader's address, nothing is logged
        on_follower = cli("keys", "rotate", "--node", target, "--tls-config", str(ca / "operator-operator.toml"))
        assert on_follower.returncode != 0 and "UNAVAILABLE" in on_follower.stderr, on_follower.stderr

    done = cli("keys", "rotate", "--node", region.leader, "--json", "--tls-config", str(ca / "operator-operator.toml"))
    assert done.returncode == 0, done.stdout + done.stderr
    rot = json.loads(done.stdout)
    assert rot["result"] == "ok" and rot["old_verifier_key"] == old_key

    with LedgerClient(region.leader, tls=region.tls["psp_a"]) as c:  # the region keeps committing
        c.submit_one(EventKind.CREATE_ACCOUNT, account_records(3, first_id=account_id_for(1, 500)))
    assert _status(region, region.leader)[1] == rot["new_verifier_key"]
    for target, key in others.items():
        assert _status(region, target)[1] == key  # only the leader's key changed

    full = cli("audit", "verify", "--node", region.leader, "--trust", str(trust), "--full", "--json", *auditor)
    assert full.returncode == 0, full.stdout + full.stderr
    out = json.loads(full.stdout[full.stdout.index("{"): full.stdout.rindex("}") + 1])
    assert out["keys_learned"] == [rot["new_verifier_key"]], out
