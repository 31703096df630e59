"""Issue 14 end to end on a real 3-node TLS region (region CA and certificates as `sovledger cluster
up` makes them; every client call with the certificate of the role that may make it: PSP 1 puts and
pays, the operator erases, the auditor discloses and audits).

Put subjects, stream payments carrying their commitments, disclose and verify one, erase one while a
follower is down, bring the follower back by snapshot, scan every file of every replica for the
erased subject's plaintext, salt and data key (nothing), run the full audit (passes), and see that
disclosing the erased subject now fails with "erased" on every replica.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from clients.auditor import cli as audit
from clients.client import LedgerClient
from clients.pii import PiiVault, SubjectErasedError, write_pii_file
from clients.pii_disclose import add_disclose_parser, cmd_disclose
from clients.workload import LEDGER_USD, account_records
from ledger.ownership import account_id_for
from ledger.pii import ErasureReason
from ledger.types import EventKind, Result, Transfer
from sovledger.cluster import Cluster
from tests.integration.nodeproc import kill_region, wait_tree_size
from tests.pii.helpers import files_containing, vault_key

pytestmark = pytest.mark.integration

KEEP = ["--raft-log-keep", "8"]  # tiny Raft log: the follower that was down must come back by snapshot
SUBJECTS = {
    101: {"name": "Erin Erasable", "email": "erin.erasable@example.org", "card_fingerprint": "fp-7731",
          "country": "IE"},
    102: {"name": "Karl Keepme", "email": "karl.keepme@example.org", "country": "AT"},
    103: {"name": "Lea Lastone", "email": "lea.lastone@example.org", "country": "BE"},
}


PSP = 1
A1 = account_id_for(PSP, 1)  # PSP 1's accounts A1 .. A1+19 (a PSP debits only its own)


def _tls_region(root: Path) -> Cluster:
    cluster = Cluster(root)
    cluster.create(3, "eu-west", [], tls=True)
    for n in cluster.nodes:
        cluster.start(n, KEEP)
    return cluster


def _wait_vault(cluster: Cluster, target: str, subject: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    with PiiVault(target, 5, tls=cluster.client_tls("auditor", "auditor")) as v:
        while True:
            try:
                v.get(subject)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def _transfers(first_id: int, commitments: list[bytes], n: int) -> list[Transfer]:
    return [Transfer(id=first_id + i, debit_account_id=A1 + i % 10, credit_account_id=A1 + 10 + i % 10, amount=1 + i,
                     ledger=LEDGER_USD, code=1, psp_id=PSP, pii_commitment=commitments[i % len(commitments)])
            for i in range(n)]


def _audit_full(tmp: Path, target: str, keys: list[str], as_auditor: list[str]) -> int:
    trust = tmp / f"trust-{target.rsplit(':', 1)[1]}.json"
    assert audit.main(["trust", "init", "--node", target, "--trust", str(trust), *as_auditor,
                       *[a for k in keys for a in ("--key", k)]]) == 0
    return audit.main(["verify", "--node", target, "--trust", str(trust), "--full", "--no-psp", *as_auditor])


def test_erase_while_follower_down_then_snapshot_scan_and_audit(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    cluster = _tls_region(tmp_path / "region")
    psp, operator, auditor = (cluster.client_tls("psp", str(PSP)), cluster.client_tls(),
                              cluster.client_tls("auditor", "auditor"))
    as_auditor = ["--tls-config", str(cluster.ca_dir / "auditor-auditor.toml")]
    try:
        leader, _ = cluster.wait_leader(30)
        with LedgerClient(leader.target, timeout_s=15, tls=psp) as c, PiiVault(leader.target, tls=psp) as v:
            c.wait_ready()
            receipts = {s: v.put(s, f) for s, f in SUBJECTS.items()}  # owner: the certificate's psp_id
            assert all(r.copies >= 2 for r in receipts.values())  # a majority stored record and key
            c.submit_one(EventKind.CREATE_ACCOUNT, account_records(20, first_id=A1))
            commitments = [r.commitment for r in receipts.values()]
            results = c.create_transfers(_transfers(1000, commitments, 300))
            assert {r.result for r in results} == {Result.OK}
            erin_entry = results[0].log_index  # transfer 1000 commits to subject 101
            # disclosure of subject 101 verifies offline against a signed checkpoint
            write_pii_file(tmp_path / "erin.json", v.get(101))
        parser = _disclose_parser()
        args = parser.parse_args(["disclose", str(erin_entry), "--pii", str(tmp_path / "erin.json"),
                                  "--node", leader.target, *as_auditor])
        assert cmd_disclose(args) == 0
        assert "commits to the disclosed data" in capsys.readouterr().out

        for n in cluster.nodes:
            _wait_vault(cluster, n.target, 101)  # every replica holds a copy (pushed or pulled)
        erin_keys = {vault_key(Path(n.data_dir), 101) for n in cluster.nodes}
        assert len(erin_keys) == 1 and None not in erin_keys
        erin_salt = receipts[101].salt

        # a follower goes down; the operator erases subject 101; the log moves far past the Raft log kept
        follower = next(n for n in cluster.nodes if n is not leader)
        cluster.kill(follower, signal.SIGKILL)
        leader, _ = cluster.wait_leader(30)
        with PiiVault(leader.target, tls=operator) as v:
            er = v.erase(101, ErasureReason.SUBJECT_REQUEST)
        with LedgerClient(leader.target, timeout_s=15, tls=psp) as c:
            assert er.result == Result.OK and er.commitment == receipts[101].commitment
            for k in range(30):
                assert {r.result for r in c.create_transfers(_transfers(5000 + 50 * k, commitments[1:], 50))} \
                    == {Result.OK}
        with LedgerClient(leader.target, timeout_s=15, tls=auditor) as c:
            size = int(c.checkpoint().tree_size)
        cluster.start(follower, KEEP)
        for n in cluster.nodes:
            assert wait_tree_size(n.target, size, 90, tls=auditor) >= size
        assert "snapshot installed" in Path(follower.log).read_text(), "the follower caught up without a snapshot"
        # the revived follower shredded on applying the snapshot, before anyone asked it for the subject
        assert vault_key(Path(follower.data_dir), 101) is None
        assert vault_key(Path(follower.data_dir), 102) is not None

        # disclosure of the erased subject fails with "erased" on every replica; the others remain
        for n in cluster.nodes:
            with PiiVault(n.target, tls=auditor) as v:
                with pytest.raises(SubjectErasedError, match="erased"):
                    v.get(101)
                assert v.get(102).commitment == receipts[102].commitment
            with PiiVault(n.target, tls=psp) as v, pytest.raises(SubjectErasedError, match="erased"):
                v.get(101)  # the owner too: gone for everyone
        args = parser.parse_args(["disclose", str(erin_entry), "--subject", "101", "--node", follower.target,
                                  *as_auditor])
        assert cmd_disclose(args) == 1
        assert "erased" in capsys.readouterr().out

        # scan: no byte of the erased subject's plaintext, salt or data key in any file of the region
        cluster.stop_all()
        needles = [b"Erin Erasable", b"erin.erasable@example.org", b"fp-7731", erin_salt, *erin_keys]
        assert files_containing(tmp_path / "region", [n for n in needles if n]) == []
        # and the kept subjects' plaintext was never on disk either (encrypted), while their keys remain
        assert files_containing(tmp_path / "region", [b"Karl Keepme", b"karl.keepme@example.org"]) == []
        assert all(vault_key(Path(n.data_dir), 102) for n in cluster.nodes)

        # the full audit passes over the log with the erasure event (linearizable lookups: ask the leader)
        cluster = Cluster(cluster.data)
        for n in cluster.nodes:
            cluster.start(n, KEEP)
        leader, _ = cluster.wait_leader(30)
        keys = []
        for n in cluster.nodes:
            assert wait_tree_size(n.target, size, 60, tls=auditor) >= size
            with LedgerClient(n.target, stale_reads=True, tls=auditor) as c:
                keys.append(c.checkpoint().verifier_key)
        assert _audit_full(tmp_path, leader.target, keys, as_auditor) == 0
    finally:
        kill_region(cluster)


def _disclose_parser():  # type: ignore[no-untyped-def]
    import argparse

    p = argparse.ArgumentParser()
    add_disclose_parser(p.add_subparsers())
    return p
