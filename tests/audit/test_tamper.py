"""Tampering harness: real node processes, real LMDB files altered in the test, `audit` run as a CLI.

Each case produces the situation against real files/processes and asserts the exit code AND that
the message names what broke (index, block, node, sizes). A replica is a copy of a stopped node's
data directory (LMDB files + node.key + signer-guard.bin) started as a second process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import blake3
import lmdb
import pytest

from clients.auditor.export import read_export, write_export
from clients.auditor.failures import EXIT_BAD_SIGNATURE, EXIT_INCONSISTENT, EXIT_LOG_MISMATCH, EXIT_OK
from clients.client import LedgerClient
from clients.workload import TransferGenerator, account_records
from ledger.codec import BlockHeader
from ledger.hashing import block_hash
from ledger.merkle import CompactRange
from ledger.state import Head
from ledger.types import EventKind
from node.guard_file import GUARD_FILE
from tests.integration.nodeproc import ROOT, NodeProcess

pytestmark = pytest.mark.integration

ACCOUNTS = 50
NODE_KEY = struct.Struct(">QB")  # docs/formats.md §8: end u64 BE ‖ level u8, end = (index + 1) << level


def nkey(level: int, index: int) -> bytes:
    return NODE_KEY.pack((index + 1) << level, level)
U64BE = struct.Struct(">Q")


def audit(*args: str) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'proto'}", COLUMNS="200")
    plain = ["--insecure"] if {"--node", "--nodes"} & set(args) else []  # the harness's nodes run --insecure
    r = subprocess.run([sys.executable, "-m", "clients.auditor", *args, *plain], capture_output=True, text=True,
                       cwd=ROOT,
                       env=env, timeout=120)
    return r.returncode, r.stdout + r.stderr


def audit_json(*args: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    code, text = audit(*args, "--json")
    start = text.index("{")
    return code, json.loads(text[start : text.rindex("}") + 1])


def feed(target: str, transfers: int, seed: int, first_id: int, accounts: bool = False) -> None:
    with LedgerClient(target) as c:
        c.wait_ready()
        if accounts:
            c.submit_one(EventKind.CREATE_ACCOUNT, account_records(ACCOUNTS))
        gen = TransferGenerator(ACCOUNTS, seed=seed, first_transfer_id=first_id)
        for recs, _ in gen.batches(transfers, 250):
            c.submit_one(EventKind.CREATE_TRANSFER, recs)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DIR/old: 50 accounts + 1000 transfers (1050 leaves); DIR/base: the same node after 1000 more (2050)."""
    root = tmp_path_factory.mktemp("audit")
    node = NodeProcess(root / "base").start()
    try:
        feed(node.target, 1000, seed=1, first_id=1 << 64, accounts=True)
    finally:
        node.stop()
    shutil.copytree(root / "base", root / "old")
    node.start()
    try:
        feed(node.target, 1000, seed=2, first_id=2 << 64)
    finally:
        node.stop()
    return root


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[NodeProcess]]:
    started: list[NodeProcess] = []
    yield started
    for n in started:
        n.stop()


def replica(base: Path, tmp_path: Path, name: str, src: str = "base") -> Path:
    dst = tmp_path / name
    shutil.copytree(base / src, dst)
    return dst


def start(nodes: list[NodeProcess], data: Path) -> NodeProcess:
    n = NodeProcess(data).start()
    nodes.append(n)
    return n


def env_of(data: Path) -> lmdb.Environment:
    return lmdb.open(str(data / "ledger"), max_dbs=32, subdir=True, map_size=1 << 30)


def flip_leaf_byte(data: Path, index: int, offset: int, fix_parent: bool = False) -> bytes:
    """Flip one byte of a stored leaf. ``fix_parent`` also rewrites the level-1 tree node over it,
    so the node's own read check (leaf pair vs stored node) passes: a replica that lies, which
    only the auditor's recomputation against the signed root can catch."""
    env = env_of(data)
    with env.begin(write=True) as txn:
        db = env.open_db(b"leaves", txn=txn, create=False)
        raw = bytearray(txn.get(U64BE.pack(index), db=db))
        raw[offset] ^= 0x01
        txn.put(U64BE.pack(index), bytes(raw), db=db)
        if fix_parent:
            nodes = env.open_db(b"nodes", txn=txn, create=False)
            pair = [txn.get(U64BE.pack(i), db=db) for i in (index & ~1, index | 1)]
            h = [blake3.blake3(b"\x00" + leaf).digest() for leaf in pair]
            txn.put(nkey(1, index >> 1), blake3.blake3(b"\x01" + h[0] + h[1]).digest(), db=nodes)
    env.close()
    return bytes(raw)


def trust_init(tmp_path: Path, target: str) -> Path:
    path = tmp_path / "trust.json"
    code, text = audit("trust", "init", "--node", target, "--trust", str(path))
    assert code == EXIT_OK, text
    assert "TRUST ON FIRST USE" in text
    return path


# -- (1) one flipped byte on one replica ------------------------------------------------------------


def test_flipped_byte_on_one_replica(base: Path, tmp_path: Path, nodes: list[NodeProcess]) -> None:
    good = start(nodes, replica(base, tmp_path, "a"))
    bad_dir = replica(base, tmp_path, "b")
    flip_leaf_byte(bad_dir, 1234, 24 + 48, fix_parent=True)  # the amount of transfer leaf 1234
    bad = start(nodes, bad_dir)
    trust = trust_init(tmp_path, good.target)
    code, text = audit("verify", "--node", good.target, "--trust", str(trust), "--full")
    assert code == EXIT_OK, text

    code, out = audit_json("verify", "--node", bad.target, "--trust", str(trust), "--full")
    assert code == EXIT_LOG_MISMATCH, out
    err = out["error"]
    assert err["kind"] == "tree_mismatch"
    assert 1234 in err["suspects"], err  # named by inclusion proofs against the signed root
    assert "1234" in err["message"] and f"block {err['block']}" in err["message"]

    code, text = audit("compare", "--nodes", f"{good.target},{bad.target}", "--trust", str(trust))
    assert code == EXIT_INCONSISTENT, text
    assert "first diverging leaf index 1234" in text
    assert text.count("— local/node-1") >= 2  # both signed checkpoint notes are printed
    code, out = audit_json("compare", "--nodes", f"{good.target},{bad.target}", "--trust", str(trust))
    assert out["error"]["index"] == 1234
    assert out["error"]["leaf_a"]["amount"] != out["error"]["leaf_b"]["amount"]


# -- (2) truncated log ------------------------------------------------------------------------------


def test_truncated_log(base: Path, tmp_path: Path, nodes: list[NodeProcess]) -> None:
    tail = replica(base, tmp_path, "tail")
    _delete_leaves(tail, (2048, 2049))  # the last two leaves: the node's start check refuses
    with pytest.raises(RuntimeError, match="refusing to start: block 9: stored entry 2048"):
        NodeProcess(tail).start(timeout_s=20)
    data = replica(base, tmp_path, "t")
    _delete_leaves(data, (1000, 1001))  # inside the log: the start check (tail only) does not see it
    n = start(nodes, data)
    trust = trust_init(tmp_path, n.target)
    code, text = audit("verify", "--node", n.target, "--trust", str(trust))
    assert code == EXIT_OK, text  # the checkpoint alone cannot see it …
    code, out = audit_json("verify", "--node", n.target, "--trust", str(trust), "--full")
    assert code == EXIT_LOG_MISMATCH, out  # … streaming every entry does (the node answers DATA_LOSS there)
    assert out["error"]["kind"] == "truncated"
    assert out["error"]["index"] <= 1000 and out["error"]["expected"] == 2050
    assert n.target in out["error"]["message"]


def _delete_leaves(data: Path, indexes: tuple[int, ...]) -> None:
    env = env_of(data)
    with env.begin(write=True) as txn:
        db = env.open_db(b"leaves", txn=txn, create=False)
        for i in indexes:
            assert txn.delete(U64BE.pack(i), db=db)
    env.close()


# -- (3) rollback to an older copy of the data directory ----------------------------------------------


def test_rollback_to_older_copy(base: Path, tmp_path: Path, nodes: list[NodeProcess]) -> None:
    current = start(nodes, replica(base, tmp_path, "cur"))
    trust = trust_init(tmp_path, current.target)  # trusts size 2050
    current.stop()
    old = NodeProcess(replica(base, tmp_path, "old", src="old"), port=current.port).start()  # same address
    nodes.append(old)
    code, out = audit_json("verify", "--node", old.target, "--trust", str(trust))
    assert code == EXIT_INCONSISTENT, out
    assert out["error"]["kind"] == "rollback"
    assert out["error"]["expected"] == 2050 and out["error"]["got"] == 1050
    assert "smaller than the trusted size 2050" in out["error"]["message"]
    saved = json.loads(trust.read_text())
    assert saved["checkpoint"]["size"] == 2050  # trust never moves on failure


# -- (4) forged checkpoint signatures -----------------------------------------------------------------


def test_forged_signature_in_export_and_foreign_key(base: Path, tmp_path: Path, nodes: list[NodeProcess]) -> None:
    n = start(nodes, replica(base, tmp_path, "s"))
    trust = trust_init(tmp_path, n.target)
    exp = tmp_path / "log.export"
    code, text = audit("export", "--node", n.target, "--out", str(exp))
    assert code == EXIT_OK, text
    code, text = audit("verify", "--file", str(exp), "--trust", str(trust), "--no-update")
    assert code == EXIT_OK, text
    # modify one character of the base64 signature line of the note inside the export
    exp_data = read_export(exp.read_bytes())
    note = exp_data.meta["checkpoint_note"]
    i = note.index("— local/node-1 ") + len("— local/node-1 ") + 20
    exp_data.meta["checkpoint_note"] = note[:i] + ("A" if note[i] != "A" else "B") + note[i + 1 :]
    with open(tmp_path / "forged.export", "wb") as f:
        write_export(f, exp_data.meta, exp_data.headers, exp_data.leaves)
    code, out = audit_json("verify", "--file", str(tmp_path / "forged.export"), "--trust", str(trust))
    assert code == EXIT_BAD_SIGNATURE, out
    assert "does not verify" in out["error"]["message"] and "local/node-1" in out["error"]["message"]
    # a node with another key (fresh data dir) is not trusted
    stranger = start(nodes, tmp_path / "stranger")
    code, out = audit_json("verify", "--node", stranger.target, "--trust", str(trust))
    assert code == EXIT_BAD_SIGNATURE, out
    assert "none of them trusted" in out["error"]["message"]


# -- (5) fork: same key, different histories ------------------------------------------------------------


def test_fork_same_key_different_histories(base: Path, tmp_path: Path, nodes: list[NodeProcess]) -> None:
    a = start(nodes, replica(base, tmp_path, "fa"))
    b = start(nodes, replica(base, tmp_path, "fb"))
    trust = trust_init(tmp_path, a.target)
    feed(a.target, 300, seed=10, first_id=3 << 64)
    feed(b.target, 200, seed=11, first_id=4 << 64)
    code, text = audit("compare", "--nodes", f"{a.target},{b.target}", "--trust", str(trust))
    assert code == EXIT_INCONSISTENT, text
    assert "first diverging leaf index 2050" in text
    assert "note a" in text and "note b" in text and text.count("— local/node-1") >= 2
    code, out = audit_json("compare", "--nodes", f"{a.target},{b.target}", "--trust", str(trust))
    err = out["error"]
    assert err["kind"] == "fork" and err["index"] == 2050
    assert "\n2350\n" in err["note_a"] and "\n2250\n" in err["note_b"]  # both signed, both presented
    assert err["leaf_a"]["id"] != err["leaf_b"]["id"]
    # the trust store (at 2050) accepts each branch on its own: only comparing reveals the fork
    assert audit("verify", "--node", a.target, "--trust", str(trust), "--no-update")[0] == EXIT_OK


# -- (6) an entry altered together with its hashes ------------------------------------------------------


def _rehash_tree(data: Path, index: int, size: int) -> None:
    """Recompute the stored Merkle nodes above ``index``, the compact range and the last block header,
    so the tree is self-consistent with the altered leaf (older headers, chain and guard left as they were)."""
    env = env_of(data)
    with env.begin(write=True) as txn:
        leaves = env.open_db(b"leaves", txn=txn, create=False)
        nodes = env.open_db(b"nodes", txn=txn, create=False)
        meta = env.open_db(b"meta", txn=txn, create=False)

        def get(level: int, i: int) -> bytes:
            if level == 0:
                return blake3.blake3(b"\x00" + txn.get(U64BE.pack(i), db=leaves)).digest()
            return txn.get(nkey(level, i), db=nodes)

        level, i = 1, index >> 1
        while txn.get(nkey(level, i), db=nodes) is not None:
            h = blake3.blake3(b"\x01" + get(level - 1, 2 * i) + get(level - 1, 2 * i + 1)).digest()
            txn.put(nkey(level, i), h, db=nodes)
            level, i = level + 1, i >> 1
        hashes, start = [], 0
        for lvl in range(size.bit_length() - 1, -1, -1):
            if size & (1 << lvl):
                hashes.append(get(lvl, start >> lvl))
                start += 1 << lvl
        rng = CompactRange(size, hashes)
        txn.put(b"range", rng.to_bytes(), db=meta)
        # … and the last block header's root and the head's block hash, so the node's start check
        # (tail only) passes: only the older headers and the signed checkpoints still hold the truth
        blocks = env.open_db(b"blocks", txn=txn, create=False)
        head = Head.decode(txn.get(b"head", db=meta))
        key = U64BE.pack(head.height)
        header = dataclasses.replace(BlockHeader.decode(txn.get(key, db=blocks)), merkle_root=rng.root())
        txn.put(key, header.encode(), db=blocks)
        head = dataclasses.replace(head, block_hash=block_hash(header.encode()))
        txn.put(b"head", head.encode(), db=meta)
    env.close()


def test_entry_altered_with_its_hashes(base: Path, tmp_path: Path, nodes: list[NodeProcess]) -> None:
    data = replica(base, tmp_path, "h")
    n = start(nodes, data)
    trust = trust_init(tmp_path, n.target)  # trusts the genuine size-2050 checkpoint
    n.stop()
    flip_leaf_byte(data, 700, 24 + 48)
    _rehash_tree(data, 700, 2050)
    # the node's own guard refuses to sign the rewritten tree with its key
    with pytest.raises(RuntimeError):
        NodeProcess(data, port=n.port).start(timeout_s=20)
    # an insider deletes the guard: the key now signs the rewritten tree …
    (data / GUARD_FILE).unlink()
    forged = NodeProcess(data, port=n.port).start()
    nodes.append(forged)
    # … which contradicts the checkpoint the auditor trusts (same size, other root)
    code, out = audit_json("verify", "--node", forged.target, "--trust", str(trust), "--no-update")
    assert code == EXIT_INCONSISTENT, out
    assert out["error"]["kind"] == "fork" and out["error"]["size"] == 2050
    assert "trusted_note" in out["error"] and "note" in out["error"]
    # a fresh auditor (TOFU on the forged checkpoint) still catches it against the signed block headers
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    trust2 = trust_init(fresh, forged.target)
    code, out = audit_json("verify", "--node", forged.target, "--trust", str(trust2), "--full")
    assert code == EXIT_LOG_MISMATCH, out
    assert out["error"]["kind"] in ("tree_mismatch", "chain_mismatch")
    assert out["error"]["first_index"] <= 700 < out["error"]["tree_size"]
