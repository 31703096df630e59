"""Backup under load → restore → a node started from it passes ``audit verify --full``.

Real processes throughout: a 3-node region under continuous failover-aware load, a hot backup of
the leader taken by the CLI mid-load, ``sovledger restore`` into a fresh data directory, a node
started from it, and the auditor CLI's full verification against that node. Also: a cold backup of
a stopped node, and restores refused for a changed byte, a changed leaf (manifest re-hashed) and a
checkpoint signed by an untrusted key.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clients.client import LedgerClient
from clients.workload import account_records
from ledger.lmdb_store import DEFAULT_MAP_SIZE_BYTES, LmdbStore
from ledger.note import Signer
from ledger.types import EventKind
from sovledger.backup import DATA_FILE, MANIFEST_FILE, file_digest
from sovledger.cluster import Cluster
from tests.integration.nodeproc import ROOT, NodeProcess, kill_region
from tests.integration.test_region import BATCH, FailoverLoad, wait_progress

pytestmark = pytest.mark.integration


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'proto'}")
    return subprocess.run([sys.executable, "-m", "sovledger", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def audit_full(target: str, trust: Path) -> subprocess.CompletedProcess[str]:
    with LedgerClient(target) as c:
        key = c.checkpoint().verifier_key
    init = cli("audit", "trust", "init", "--node", target, "--trust", str(trust), "--key", key, "--insecure")
    assert init.returncode == 0, init.stdout + init.stderr
    return cli("audit", "verify", "--node", target, "--trust", str(trust), "--full", "--insecure")


def test_hot_backup_under_load_restores_and_audits(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "region")
    cluster.create(3, "eu-west", [])
    for n in cluster.nodes:
        cluster.start(n)
    restored: NodeProcess | None = None
    try:
        leader, _ = cluster.wait_leader(30)
        with LedgerClient(leader.target) as c:
            c.wait_ready()
            assert set(c.submit_one(EventKind.CREATE_ACCOUNT, account_records(200)).results) == {0}
        load = FailoverLoad(cluster, seed=5)
        load.thread.start()
        wait_progress(load, 4 * BATCH)
        out = tmp_path / "backup-1"
        acked_before_backup = len(load.acked)  # all of it must be in the backup
        r = cli("backup", "--node", leader.target, "--out", str(out), "--insecure")
        assert r.returncode == 0, r.stderr
        wait_progress(load, 2 * BATCH)  # the load went on during and after the backup
        load.stop.set()
        load.thread.join(90)
        assert not load.errors, load.errors[:5]
        manifest = json.loads((out / MANIFEST_FILE).read_text())
        assert manifest["origin"] == "sovledger/eu-west"
        assert manifest["tree_size"] >= acked_before_backup > 0

        node_dir = tmp_path / "restored"
        r = cli("restore", str(out), "--data", str(node_dir), "--trust-key", manifest["verifier_key"])
        assert r.returncode == 0, r.stderr
        restored = NodeProcess(node_dir, extra=["--region", "eu-west"]).start()
        with LedgerClient(restored.target) as c:
            c.wait_ready()
            cp = c.checkpoint()
            assert cp.tree_size >= manifest["tree_size"]
            proof = c.consistency_proof(manifest["tree_size"], cp.tree_size)
            assert proof.first == manifest["tree_size"]
        v = audit_full(restored.target, tmp_path / "trust.json")
        assert v.returncode == 0, v.stdout + v.stderr
    finally:
        if restored is not None:
            restored.stop()
        kill_region(cluster)


Cold = tuple[Path, dict[str, object]]  # a stopped node's directory root and its cold backup's manifest


@pytest.fixture(scope="module")
def cold_source(tmp_path_factory: pytest.TempPathFactory) -> Cold:
    """One stopped node (DIR/n1, 300 accounts) and its cold backup (DIR/cold), made once per module;
    every test works on its own copy of both (``_cold_backup``)."""
    root = tmp_path_factory.mktemp("cold")
    node = NodeProcess(root / "n1", extra=["--region", "eu"]).start()
    try:
        with LedgerClient(node.target) as c:
            c.wait_ready()
            assert set(c.submit_one(EventKind.CREATE_ACCOUNT, account_records(300)).results) == {0}
    finally:
        node.stop()
    r = cli("backup", "--data", str(root / "n1"), "--out", str(root / "cold"), "--json")
    assert r.returncode == 0, r.stderr
    manifest = json.loads(r.stdout)
    assert manifest["tree_size"] == 300 and manifest["origin"] == "sovledger/eu"
    return root, manifest


def _cold_backup(tmp_path: Path, source: Cold) -> tuple[Path, dict[str, object]]:
    """This test's own copy of the stopped node (tmp_path/n1) and of its cold backup (tmp_path/cold)."""
    root, manifest = source
    shutil.copytree(root / "n1", tmp_path / "n1")
    shutil.copytree(root / "cold", tmp_path / "cold")
    return tmp_path / "cold", dict(manifest)


def test_cold_backup_restores_into_the_same_node(tmp_path: Path, cold_source: Cold) -> None:
    out, _ = _cold_backup(tmp_path, cold_source)
    refused = cli("restore", str(out), "--data", str(tmp_path / "n1"))
    assert refused.returncode == 1 and "--force" in refused.stderr  # never silently replaces a store
    r = cli("restore", str(out), "--data", str(tmp_path / "n1"), "--force")
    assert r.returncode == 0, r.stderr
    node = NodeProcess(tmp_path / "n1", extra=["--region", "eu"]).start()
    try:
        v = audit_full(node.target, tmp_path / "trust.json")
        assert v.returncode == 0, v.stdout + v.stderr
    finally:
        node.stop()


def test_restore_refuses_a_changed_byte(tmp_path: Path, cold_source: Cold) -> None:
    out, _ = _cold_backup(tmp_path, cold_source)
    with open(out / DATA_FILE, "r+b") as f:
        f.seek(5000)
        b = f.read(1)
        f.seek(5000)
        f.write(bytes([b[0] ^ 1]))
    r = cli("restore", str(out), "--data", str(tmp_path / "fresh"))
    assert r.returncode == 1 and "does not match the manifest" in r.stderr
    assert not (tmp_path / "fresh" / "ledger").exists()


def test_restore_refuses_an_altered_leaf_even_with_a_rehashed_manifest(tmp_path: Path, cold_source: Cold) -> None:
    out, _ = _cold_backup(tmp_path, cold_source)
    work = tmp_path / "edit"
    work.mkdir()
    (work / "data.mdb").write_bytes((out / DATA_FILE).read_bytes())
    store = LmdbStore(str(work), DEFAULT_MAP_SIZE_BYTES)
    with store.write() as w:
        key = (17).to_bytes(8, "big")
        leaf = bytearray(w.get("leaves", key) or b"")
        leaf[-3] ^= 0xFF
        w.put("leaves", key, bytes(leaf))
    store.copy_to(str(work / "c"))
    store.close()
    (out / DATA_FILE).write_bytes((work / "c" / "data.mdb").read_bytes())
    m = json.loads((out / MANIFEST_FILE).read_text())
    m["files"][DATA_FILE] = file_digest(out / DATA_FILE)  # an attacker can re-hash the manifest
    (out / MANIFEST_FILE).write_text(json.dumps(m))
    r = cli("restore", str(out), "--data", str(tmp_path / "fresh"))
    assert r.returncode == 1 and "a leaf was altered" in r.stderr, r.stderr
    assert not (tmp_path / "fresh" / "ledger").exists()


def test_restore_refuses_an_untrusted_signer(tmp_path: Path, cold_source: Cold) -> None:
    out, _ = _cold_backup(tmp_path, cold_source)
    other = Signer.generate("eu/node-9").verifier.to_string()
    r = cli("restore", str(out), "--data", str(tmp_path / "fresh"), "--trust-key", other)
    assert r.returncode == 1 and "does not verify" in r.stderr
    assert not (tmp_path / "fresh" / "ledger").exists()
