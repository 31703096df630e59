"""Witnessing on real node processes: three regions (one node each, TLS, each its own CA).

The leader of each region offers its checkpoints to the other regions' witnesses; a checkpoint
cosigned by both passes `audit witness --witnesses 2-of-2`; a planted split view (a second
checkpoint of the same size, signed with the region's real key) is refused by the witness, kept
as evidence, and the auditor writes the evidence file and exits 17. A region whose witness is
down cannot meet 2-of-2 for newer checkpoints (exit 16).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from clients.channels import open_sync_channel
from ledger.note import Checkpoint, sign_note, split_note
from ledger.witness import AddCheckpoint, SplitView, check_pair
from node.keys import load_key_file
from sovledger_pb import ledger_pb2 as pb
from sovledger_pb import ledger_pb2_grpc as pb_grpc
from sovledger_pb import witness_pb2 as wpb
from sovledger_pb import witness_pb2_grpc as wpb_grpc
from tests.federation.harness import Fed, cosignatures, start, stop, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    f = start(tmp_path_factory.mktemp("witness"))
    try:
        yield f
    finally:
        stop(f)


def _size(note: str) -> int:
    return Checkpoint.parse(split_note(note)[0]).size


def test_a_checkpoint_cosigned_by_a_witness_quorum(fed: Fed) -> None:
    fed.load("eu-west")
    wait_for("eu-west's grown checkpoint cosigned by both other regions",
             lambda: _size(n := fed.region_note("eu-west")) > 0 and cosignatures(n) == 2)
    rc, out = fed.audit("eu-west", "--witnesses", "2-of-2")
    assert rc == 0, out
    report = json.loads(out[: out.rindex("}") + 1])
    assert sorted(report["cosigned_by"]) == ["ap-south/node-1/witness", "us-east/node-1/witness"]
    # what each witness persisted is the same checkpoint history
    ch, stub = fed.witness("us-east", fed.tls("us-east"))
    with ch:
        seen = stub.GetCosigned(wpb.OriginRequest(origin="sovledger/eu-west"), timeout=10)
    assert seen.tree_size > 0 and "us-east/node-1/witness" in seen.note
    rc, out = fed.audit("eu-west", "--witnesses", "3-of-3")
    assert rc == 16, out  # the federation lists only two witnesses for eu-west


def test_audit_verify_takes_a_witness_policy(fed: Fed, tmp_path: Path) -> None:
    from tests.security.region import cli

    trust, tls = str(tmp_path / "trust.json"), ["--tls-config", str(fed.data / "eu-west" / "ca" /
                                                                   "auditor-auditor.toml")]
    key = fed.fed.region("eu-west").checkpoint_keys[0].to_string()
    r = cli("audit", "trust", "init", "--node", fed.target("eu-west"), "--trust", trust, "--key", key, *tls)
    assert r.returncode == 0, r.stdout + r.stderr
    verify = ("audit", "verify", "--node", fed.target("eu-west"), "--trust", trust, "--federation", fed.config)
    r = cli(*verify, "--witnesses", "2-of-2", *tls)
    assert r.returncode == 0, r.stdout + r.stderr
    r = cli(*verify, "--witnesses", "3-of-3", *tls)
    assert r.returncode == 16, r.stdout + r.stderr


def test_federation_role_opens_only_the_witness_service(fed: Fed) -> None:
    foreign = fed.foreign_tls("eu-west", towards="us-east")
    with open_sync_channel(fed.target("us-east"), foreign) as ch:
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.AuditStub(ch).GetCheckpoint(pb.CheckpointRequest(), timeout=10)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as e:
            wpb_grpc.WitnessStub(ch).AddCheckpoint(wpb.AddCheckpointRequest(body=b"old x\n\n"), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "old N" in (e.value.details() or "")
    # the region's own operator may not hand in checkpoints to cosign
    ch, stub = fed.witness("us-east", fed.tls("us-east"))
    with ch, pytest.raises(grpc.RpcError) as e:
        stub.AddCheckpoint(wpb.AddCheckpointRequest(body=b"old 0\n\n"), timeout=10)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_planted_split_view_is_refused_kept_and_caught(fed: Fed, tmp_path: Path) -> None:
    key = load_key_file(fed.data / "eu-west" / "node-1" / "node.key")
    for _attempt in range(5):  # the live region may have a newer checkpoint cosigned in between: forge again
        ch, stub = fed.witness("us-east", fed.tls("us-east"))
        with ch:
            cosigned = stub.GetCosigned(wpb.OriginRequest(origin="sovledger/eu-west"), timeout=10)
        assert cosigned.tree_size > 0
        real = Checkpoint.parse(split_note(cosigned.note)[0])
        # someone holding eu-west's real checkpoint key signs another history of the same size
        forged_root = bytes(b ^ 0xFF for b in real.root)
        forged = sign_note(Checkpoint(real.origin, real.size, forged_root, real.extensions).to_body(), key)
        ch, stub = fed.witness("us-east", fed.foreign_tls("eu-west", towards="us-east"))
        with ch:
            resp = stub.AddCheckpoint(wpb.AddCheckpointRequest(body=AddCheckpoint(real.size, (), forged).encode()),
                                      timeout=10)
        if resp.verdict != wpb.OLD_SIZE_MISMATCH:
            break
    ch, stub = fed.witness("us-east", fed.foreign_tls("eu-west", towards="us-east"))
    with ch:
        assert resp.verdict == wpb.SPLIT_VIEW and not resp.cosignature, resp
        kept = stub.GetEvidence(wpb.OriginRequest(origin="sovledger/eu-west"), timeout=10).evidence
        again = stub.GetCosigned(wpb.OriginRequest(origin="sovledger/eu-west"), timeout=10)
    assert len(kept) == 1 and forged in SplitView.from_json(kept[0]).notes
    assert again.tree_size >= real.size and base64.b64encode(forged_root).decode() not in again.note
    evidence_file = tmp_path / "split.json"
    rc, out = fed.audit("eu-west", "--witnesses", "2-of-2", "--evidence-out", str(evidence_file))
    assert rc == 17, out
    ev = SplitView.from_json(evidence_file.read_bytes())
    assert forged in ev.notes and ev.origin == "sovledger/eu-west"
    assert check_pair(ev.notes[0], ev.notes[1], [key.verifier], None) is not None  # anyone can re-check it
    # the other regions are not affected
    rc, out = fed.audit("us-east", "--witnesses", "2-of-2")
    assert rc == 0, out


def test_without_a_witness_the_policy_is_not_met(fed: Fed) -> None:
    from sovledger.cluster import Cluster

    south = Cluster(fed.data / "ap-south")
    south.kill(south.nodes[0])
    try:
        before = _size(fed.region_note("us-east"))
        fed.load("us-east", seed=2)
        wait_for("a newer us-east checkpoint cosigned by eu-west alone",
                 lambda: _size(n := fed.region_note("us-east")) > before and cosignatures(n) == 1)
        rc, out = fed.audit("us-east", "--witnesses", "2-of-2")
        assert rc == 16, out
        rc, out = fed.audit("us-east", "--witnesses", "1-of-2")
        assert rc == 0, out
    finally:
        south.start(south.nodes[0])
        south.wait_leader(30)
    assert os.path.exists(fed.config)


def test_global_revenue_from_three_regions(fed: Fed) -> None:
    """Each region's newest aggregate, proven against its cosigned checkpoint, in one table; every
    row equals what an auditor of that region folds from the region's own log."""
    from clients.client import LedgerClient
    from ledger.aggregates import Aggregate, fold
    from ledger.codec import decode_leaf
    fed.load("ap-south", seed=3)

    def aggregated(region: str) -> Aggregate | None:
        ch, stub = fed.witness(region)
        with ch:
            resp = stub.GetAggregates(wpb.AggregatesRequest(), timeout=10)
        return Aggregate.decode(decode_leaf(resp.entries[0].leaf).body) if resp.entries else None

    for region in ("eu-west", "us-east", "ap-south"):
        wait_for(f"{region}'s aggregate of its transfers inside a cosigned checkpoint",
                 lambda r=region: (a := aggregated(r)) is not None and any(row.transfers for row in a.rows), 40)
    r = cli_json("global", "revenue", "--federation", fed.config, "--witnesses", "2-of-2",
                 "--tls-config", str(fed.data / "eu-west" / "ca" / "auditor-auditor.toml"))
    assert r["code"] == 0, r
    views = {v["region"]: v for v in r["out"]["regions"]}
    assert set(views) == {"eu-west", "us-east", "ap-south"} and all(v["ok"] for v in views.values())
    for region, v in views.items():
        with LedgerClient(fed.target(region), tls=fed.tls(region, "auditor", "auditor")) as c:
            leaves = [decode_leaf(raw) for raw in c.entries(0, v["covers_leaves"])]
        expected = fold(None, leaves, v["covers_leaves"])
        assert [tuple(row.values()) for row in v["rows"]] == [
            (x.ledger, x.psp_id, x.transfers, x.volume, x.fees, x.residuals, x.exceptions) for x in expected.rows]
        assert v["rows"] and not any(k.endswith("account_id") for row in v["rows"] for k in row)
    totals = {t["ledger"]: t for t in r["out"]["totals"]}
    assert totals[840]["transfers"] == sum(row["transfers"] for v in views.values() for row in v["rows"]
                                           if row["ledger"] == 840)


def cli_json(*args: str) -> dict:  # type: ignore[type-arg]
    from tests.security.region import cli

    r = cli(*args, "--json")
    out = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {"raw": r.stdout + r.stderr}
    return {"code": r.returncode, "out": out}
