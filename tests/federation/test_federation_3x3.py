"""Three regions of three nodes each (nine processes; `faults_slow`: run by `make test-faults`).

Every checkpoint is offered to the six witnesses of the other two regions; the auditor demands
5-of-6. Then eu-west's leader is killed: the new leader continues the aggregate chain from the log
and resumes gathering (the witnesses answer its first offer with the size they hold, it proves
consistency from there), so a newer checkpoint again meets 5-of-6 and `global revenue` still
proves every region's aggregates.
"""

from __future__ import annotations

import base64
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clients.channels import open_sync_channel
from ledger.note import Checkpoint, split_note
from sovledger.cluster import Cluster
from sovledger.regions import load
from sovledger_pb import witness_pb2 as wpb
from sovledger_pb import witness_pb2_grpc as wpb_grpc
from tests.federation.harness import REGIONS, Fed, cosignatures, stop, wait_for
from tests.security.region import cli

pytestmark = [pytest.mark.integration, pytest.mark.faults_slow]


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    data = tmp_path_factory.mktemp("fed3x3") / "fed"
    up = cli("cluster", "up", "--regions", ",".join(REGIONS), "--nodes", "3", "--data", str(data),
             "--aggregate-every-ms", "1000", "--json", timeout=240)
    assert up.returncode == 0, up.stdout + up.stderr
    f = Fed(data, load(data))
    try:
        yield f
    finally:
        stop(f)


def _leader(fed: Fed, region: str) -> Cluster:
    return Cluster(fed.data / region)


def _note(fed: Fed, region: str) -> str:
    """The region's best cosigned checkpoint over all its nodes."""
    from clients.federation import FederationClient

    tls = fed.tls(region, "auditor", "auditor")
    return FederationClient(fed.config, tls).region_checkpoint(fed.fed.region(region))


def _size(note: str) -> int:
    return Checkpoint.parse(split_note(note)[0]).size if note else 0


def test_witness_quorum_survives_a_leader_change(fed: Fed) -> None:
    c = _leader(fed, "eu-west")
    leader, _ = c.wait_leader(30)
    fed.load("eu-west", target=leader.target)
    wait_for("eu-west checkpoint cosigned by all six witnesses",
             lambda: cosignatures(_note(fed, "eu-west")) == 6, 60)
    rc, out = fed.audit("eu-west", "--witnesses", "5-of-6")
    assert rc == 0, out
    before = _size(_note(fed, "eu-west"))
    c.kill(leader)
    new, _ = c.wait_leader(30)
    assert new.node_id != leader.node_id
    fed.load("eu-west", seed=5, target=new.target)
    wait_for("a newer eu-west checkpoint from the new leader cosigned by five or more witnesses",
             lambda: _size(n := _note(fed, "eu-west")) > before and cosignatures(n) >= 5, 60)
    rc, out = fed.audit("eu-west", "--witnesses", "5-of-6")
    assert rc == 0, out
    c.start(leader)
    r = cli("global", "revenue", "--federation", fed.config, "--json",
            "--tls-config", str(fed.data / "eu-west" / "ca" / "auditor-auditor.toml"))
    view = {v["region"]: v for v in json.loads(r.stdout)["regions"]}
    assert r.returncode == 0 and view["eu-west"]["ok"] and view["eu-west"]["rows"], r.stdout + r.stderr


def _verify_follower(fed: Fed, follower: str, trust: str, policy: str) -> tuple[int, dict[str, Any], str]:
    tls = ["--tls-config", str(fed.data / "eu-west" / "ca" / "auditor-auditor.toml")]
    r = cli("audit", "verify", "--node", follower, "--trust", trust, "--federation", fed.config,
            "--witnesses", policy, "--json", *tls)
    report = json.loads(r.stdout[: r.stdout.rindex("}") + 1]) if "}" in r.stdout else {}
    return r.returncode, report, r.stdout + r.stderr


def _trust_init(fed: Fed, follower: str, trust: str) -> dict[str, Any]:
    tls = ["--tls-config", str(fed.data / "eu-west" / "ca" / "auditor-auditor.toml")]
    keys = [a for k in fed.fed.region("eu-west").checkpoint_keys for a in ("--key", k.to_string())]
    r = cli("audit", "trust", "init", "--node", follower, "--trust", trust, "--force", *keys, *tls)
    assert r.returncode == 0, r.stdout + r.stderr
    return dict(json.loads(Path(trust).read_text()))


def _witness_groups(fed: Fed) -> list[int]:
    """The process groups of the six witnesses of eu-west (the nodes of the two other regions; each node
    is started in its own session, so its pid is its group)."""
    return [n.pid for r in REGIONS if r != "eu-west" for n in Cluster(fed.data / r).nodes if n.pid > 0]


def test_audit_verify_of_a_follower_takes_the_regions_cosigned_checkpoint(fed: Fed, tmp_path: Path) -> None:
    """Only the leader gathers cosignatures, so a follower serves a plain note: `audit verify --witnesses
    --node FOLLOWER` takes the region's cosigned checkpoint from its members and verifies the follower
    against it (it used to exit 16, "policy not met"). Witnesses cosign with a lag, so the trusted
    checkpoint (from `trust init`, a plain one) may be newer than the newest cosigned one: that case is
    made on purpose (the witnesses are paused) and must not be called a rollback (it used to exit 11)."""
    c = _leader(fed, "eu-west")
    leader, _ = c.wait_leader(30)
    follower = next(n for n in c.nodes if n.node_id != leader.node_id and c.status(n) is not None)
    fed.load("eu-west", seed=7, target=leader.target)
    wait_for("a cosigned eu-west checkpoint the follower holds",
             lambda: cosignatures(n := _note(fed, "eu-west")) >= 5
             and (cp := c.checkpoint(follower)) is not None and cp.tree_size >= _size(n), 60)
    with open_sync_channel(follower.target, fed.tls("eu-west")) as ch:
        own = str(wpb_grpc.WitnessStub(ch).GetRegionCheckpoint(wpb.RegionCheckpointRequest(), timeout=10).note)
    assert cosignatures(own) < 5  # the follower's own answer cannot meet the policy: the fallback is exercised

    # the normal case: the trusted checkpoint is a cosigned one, so every later cosigned one is at least as new
    trust = str(tmp_path / "trust.json")
    store = _trust_init(fed, follower.target, trust)
    cosigned = _note(fed, "eu-west")
    cp = Checkpoint.parse(split_note(cosigned)[0])
    store["checkpoint"] = {"size": cp.size, "root": base64.b64encode(cp.root).decode(), "note": cosigned}
    Path(trust).write_text(json.dumps(store))
    rc, report, out = _verify_follower(fed, follower.target, trust, "5-of-6")
    assert rc == 0, out
    assert report["node"] == follower.target and "members of eu-west" in report["checkpoint_from"]
    assert "cosigned_behind_trusted" not in report and report["size"] >= cp.size, out

    # the lagging case: no witness can cosign while paused, so every cosigned note is at most the leader's
    # size now, and the follower's plain checkpoint trusted below is beyond it
    groups = _witness_groups(fed)
    assert len(groups) == 6
    for g in groups:
        os.killpg(g, signal.SIGSTOP)
    try:
        frozen = c.checkpoint(leader, timeout_s=5)
        assert frozen is not None
        fed.load("eu-west", seed=9, target=leader.target)
        wait_for("the follower beyond the last size any witness could cosign",
                 lambda: (f := c.checkpoint(follower)) is not None and f.tree_size > frozen.tree_size, 60)
        trusted = _trust_init(fed, follower.target, trust)["checkpoint"]
        assert trusted["size"] > frozen.tree_size
        # 1-of-6: a gathering round cut short by the pause may leave a newer note with fewer cosignatures
        rc, report, out = _verify_follower(fed, follower.target, trust, "1-of-6")
        assert rc == 0, out  # not exit 11 (rollback)
        assert report["cosigned_behind_trusted"] is True and report["trusted_size"] == trusted["size"], out
        assert report["size"] <= frozen.tree_size < trusted["size"] <= report["node_size"], out
        assert "wait for the witnesses to cosign a newer one" in out, out
        assert json.loads(Path(trust).read_text())["checkpoint"] == trusted  # never moved backwards
    finally:
        for g in groups:
            os.killpg(g, signal.SIGCONT)
