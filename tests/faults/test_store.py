"""Faults of one node's data directory, on real node processes: damaged bytes in ``data.mdb``, a
second process on one directory, hostile RPC inputs, connection floods.

Bytes are flipped in the real ``data.mdb`` of a stopped node: the value is read with LMDB, found in
the file by searching for its bytes (every copy, so a stale copy in a free page cannot hide the
live one), and one byte of each copy is flipped.
"""

from __future__ import annotations

import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import grpc
import lmdb
import pytest

from clients.client import LedgerClient
from ledger.codec import BlockHeader
from ledger.state import Head
from ledger.store import TABLES
from tests.faults.harness import Ledger, Load, check, create_accounts, node_refused
from tests.integration.nodeproc import NodeProcess

pytestmark = pytest.mark.integration
U64BE = struct.Struct(">Q")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Ledger]:
    """A stopped single node that acknowledged 20 batches of 200 transfers."""
    root = tmp_path_factory.mktemp("faults-store")
    node = NodeProcess(root / "base").start()
    try:
        create_accounts(node.target)
        load = Load(lambda: node.target, seed=3, batches_max=20)
        load.start().thread.join(120)
        ledger = load.finish()
    finally:
        node.stop()
    assert len(ledger.acked) == 20 * 200
    return root / "base", ledger


@pytest.fixture
def nodes() -> Iterator[list[NodeProcess]]:
    started: list[NodeProcess] = []
    yield started
    for n in started:
        n.stop()


def copy_of(base: Path, tmp_path: Path, name: str) -> Path:
    dst = tmp_path / name
    shutil.copytree(base, dst)
    return dst


def read_value(data: Path, table: str, key: bytes | None = None) -> tuple[bytes, bytes]:
    """(key, value) of ``key`` in ``table``, or its middle item."""
    env = lmdb.open(str(data / "ledger"), max_dbs=32, subdir=True, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            db = env.open_db(table.encode(), txn=txn, create=False)
            if key is not None:
                return key, bytes(txn.get(key, db=db))
            items = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=db)]
    finally:
        env.close()
    return items[len(items) // 2] if items else (b"", b"")


def flip_in_file(data: Path, needle: bytes, at: int) -> int:
    """Flip byte ``at`` of every copy of ``needle`` in data.mdb; returns the number of copies."""
    path = data / "ledger" / "data.mdb"
    raw = bytearray(path.read_bytes())
    pos, hits = raw.find(needle), 0
    while pos >= 0:
        raw[pos + at] ^= 0x40
        hits += 1
        pos = raw.find(needle, pos + 1)
    assert hits, "value not found in data.mdb"
    path.write_bytes(bytes(raw))
    return hits


def last_block(data: Path) -> tuple[Head, BlockHeader, bytes]:
    _, raw_head = read_value(data, "meta", b"head")
    head = Head.decode(raw_head)
    _, raw = read_value(data, "blocks", U64BE.pack(head.height))
    return head, BlockHeader.decode(raw), raw


def refused_start(data: Path, *flags: str) -> str:
    node = NodeProcess(data, extra=list(flags))
    with pytest.raises(RuntimeError):
        node.start(timeout_s=60)
    line = node_refused(node.log_text())
    assert line, node.log_text()[-2000:]
    return line


# -- a tampered store is refused at start: leaf, header, balance ---------------------------------


def test_tampered_leaf_in_the_tail_is_refused_at_start(base: tuple[Path, Ledger], tmp_path: Path) -> None:
    data = copy_of(base[0], tmp_path, "leaf")
    head, hdr, _ = last_block(data)
    _, leaf = read_value(data, "leaves", U64BE.pack(hdr.first_index))
    flip_in_file(data, leaf, 24 + 48)  # the amount of the last block's first transfer
    line = refused_start(data)
    assert f"block {head.height}" in line and str(hdr.first_index) in line and "damaged" in line, line


def test_tampered_old_leaf_answers_data_loss_and_verify_full_refuses(
        base: tuple[Path, Ledger], tmp_path: Path, nodes: list[NodeProcess]) -> None:
    data = copy_of(base[0], tmp_path, "old-leaf")
    _, leaf = read_value(data, "leaves", U64BE.pack(1234))
    tid = int.from_bytes(leaf[24:40], "little")
    flip_in_file(data, leaf, 24 + 48)
    line = refused_start(data, "--verify-full")
    assert "1234" in line and "damaged" in line and "block" in line, line
    node = NodeProcess(data).start()  # the tail is intact: the node serves, but nothing unverified
    nodes.append(node)
    with LedgerClient(node.target) as c:
        for read in (lambda: c.lookup_transfers([tid]), lambda: list(c.entries(1200, 1300)),
                     lambda: c.inclusion_proof(index=1234)):
            with pytest.raises(grpc.RpcError) as e:
                read()
            assert e.value.code() == grpc.StatusCode.DATA_LOSS, e.value
            assert "entry 1234 or 1235" in (e.value.details() or ""), e.value.details()
        assert c.lookup_transfers([tid + 5000])  # other entries still answer


def test_tampered_header_is_refused_at_start(base: tuple[Path, Ledger], tmp_path: Path) -> None:
    data = copy_of(base[0], tmp_path, "header")
    head, _, raw = last_block(data)
    flip_in_file(data, raw, 150)  # inside the state hash of the last header
    line = refused_start(data)
    assert f"block {head.height}" in line and "header" in line, line


def test_tampered_balance_is_refused_by_verify_full(base: tuple[Path, Ledger], tmp_path: Path) -> None:
    data = copy_of(base[0], tmp_path, "balance")
    _, state = read_value(data, "accounts", (7).to_bytes(16, "little"))
    flip_in_file(data, state, 64 + 17)  # debits_posted, second byte
    line = refused_start(data, "--verify-full")
    assert "account 7" in line, line


# -- a data directory from before the end-major tree-node keys (docs/formats.md §8) ----------------


def test_legacy_node_keys_are_rewritten_at_start_and_the_log_still_checks(
        base: tuple[Path, Ledger], tmp_path: Path, nodes: list[NodeProcess]) -> None:
    data = copy_of(base[0], tmp_path, "legacy-nodes")
    env = lmdb.open(str(data / "ledger"), max_dbs=32, subdir=True, map_size=1 << 30)
    with env.begin(write=True) as txn:  # what an older node wrote: level u8 ‖ index u64 BE
        db = env.open_db(b"nodes", txn=txn, create=False)
        rows = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=db)]
        for k, v in rows:
            end, level = struct.unpack(">QB", k)
            txn.delete(k, db=db)
            txn.put(struct.pack(">BQ", level, (end >> level) - 1), v, db=db)
    env.close()
    assert rows
    node = NodeProcess(data, extra=["--verify-full"]).start()  # every node checked, after the rewrite
    nodes.append(node)
    check({"node-1": node.target}, base[1], scenario="legacy node keys rewritten at start")
    node.stop()
    env = lmdb.open(str(data / "ledger"), max_dbs=32, subdir=True, readonly=True, lock=False)
    with env.begin() as txn:
        keys = [bytes(k) for k, _ in txn.cursor(db=env.open_db(b"nodes", txn=txn, create=False))]
    env.close()
    assert len(keys) >= len(rows) and all(k[0] == 0 for k in keys)


# -- flipped bytes in every table ----------------------------------------------------------------

GUARDED = {"meta", "leaves", "nodes", "blocks", "accounts"}  # --verify-full refuses to start
OUTCOMES: dict[str, str] = {}


@pytest.mark.parametrize("table", [t for t in TABLES])
def test_flipped_byte_in_every_table(table: str, base: tuple[Path, Ledger], tmp_path: Path,
                                     nodes: list[NodeProcess]) -> None:
    data = copy_of(base[0], tmp_path, table)
    key, value = read_value(data, table, b"head" if table == "meta" else None)
    if not key:
        pytest.skip(f"table {table} holds nothing in this workload")  # rules/raft tables: empty here
    needle, at = (value, len(value) // 2) if len(value) >= 8 else (key, len(key) - 1)
    flip_in_file(data, needle, at)
    node = NodeProcess(data, extra=["--verify-full"])
    try:
        node.start(timeout_s=60)
    except RuntimeError:
        OUTCOMES[table] = "refused at start: " + node_refused(node.log_text())
        assert node_refused(node.log_text()), node.log_text()[-2000:]
        print(f"\n[faults] flipped byte in {table}: {OUTCOMES[table]}")
        return
    nodes.append(node)
    assert table not in GUARDED, f"a flipped byte in {table} was not caught by --verify-full"
    # the node serves: whatever it serves from the log must still pass the one checker
    OUTCOMES[table] = "served; log verified"
    check({"node-1": node.target}, base[1], scenario=f"flipped byte in {table}")


def test_missing_node_key_is_an_error_not_a_new_identity(base: tuple[Path, Ledger], tmp_path: Path) -> None:
    data = copy_of(base[0], tmp_path, "nokey")
    (data / "node.key").unlink()
    line = refused_start(data)
    assert "node.key is missing" in line and "restore the key" in line, line
    assert not (data / "node.key").exists(), "a new identity was created"
