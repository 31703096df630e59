"""A 3-node region of real processes on 127.0.0.1 under continuous client load.

Faults: kill -9 the leader 10 times at random moments (restarting it each time), SIGSTOP the leader
for 10 s then resume it, kill all three at once and restart them. Afterwards: every acknowledged
transfer is present exactly once on every replica, no transfer appears twice, balances equal a
model's, and all replicas' checkpoints at the same size have identical bodies. Prints the time to
elect a new leader after each kill.
"""

from __future__ import annotations

import random
import signal
import statistics
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest

from clients.client import BatchRefused, LedgerClient
from clients.workload import TransferGenerator, account_records
from ledger.codec import decode_leaf
from ledger.note import Checkpoint, split_note
from ledger.types import EventKind, Result
from sovledger.cluster import Cluster
from tests.integration.nodeproc import kill_region

pytestmark = pytest.mark.integration

ACCOUNTS = 200
BATCH = 500


class FailoverLoad:
    """Streams batches to whoever leads; re-sends a batch with the same ids until it is definitive."""

    def __init__(self, cluster: Cluster, seed: int) -> None:
        self.cluster = cluster
        self.gen = TransferGenerator(ACCOUNTS, seed=seed)
        self.acked: dict[int, int] = {}  # transfer id -> log index acknowledged
        self.sent_meta: list[tuple[int, int, int, int]] = []
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _leader_client(self) -> LedgerClient | None:
        leader = self.cluster.leader()
        return LedgerClient(leader.target, timeout_s=5) if leader else None

    def _submit(self, records: bytes) -> list[tuple[int, int]] | None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            client = self._leader_client()
            if client is None:
                time.sleep(0.05)
                continue
            try:
                r = client.submit_one(EventKind.CREATE_TRANSFER, records)
                return list(zip(r.results, r.log_indexes, strict=True))
            except (BatchRefused, grpc.RpcError):
                time.sleep(0.05)  # not leader / leadership moved / node died: same ids again
            finally:
                client.close()
        self.errors.append("a batch could not be committed within 60 s")
        return None

    def _run(self) -> None:
        for _ in range(2000):  # bounded: at most 1M transfers
            if self.stop.is_set():
                return
            records, meta = self.gen.records(BATCH)
            self.sent_meta.extend(meta)
            out = self._submit(records)
            if out is None:
                return
            for (tid, *_), (code, index) in zip(meta, out, strict=True):
                if code not in (Result.OK, Result.TRANSFER_EXISTS):
                    self.errors.append(f"transfer {tid}: {Result(code).name}")
                self.acked[tid] = index


def wait_progress(load: FailoverLoad, extra: int, timeout_s: float = 60) -> None:
    target = len(load.acked) + extra
    deadline = time.monotonic() + timeout_s
    while len(load.acked) < target and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(load.acked) >= target, f"no progress: {len(load.acked)} acked, wanted {target}"


def test_region_survives_leader_kills_pause_and_full_restart(tmp_path: Path) -> None:
    rng = random.Random(2026)
    cluster = Cluster(tmp_path / "region")
    cluster.create(3, "eu-west", [])
    for n in cluster.nodes:
        cluster.start(n)
    election_s: list[float] = []
    try:
        leader, _ = cluster.wait_leader(30)
        with LedgerClient(leader.target) as c:
            c.wait_ready()
            assert set(c.submit_one(EventKind.CREATE_ACCOUNT, account_records(ACCOUNTS)).results) == {0}
        load = FailoverLoad(cluster, seed=7)
        load.thread.start()
        wait_progress(load, 2 * BATCH)

        for _ in range(10):  # kill -9 the leader at random moments, restart it
            time.sleep(rng.uniform(0.05, 0.6))
            old = cluster.leader()
            if old is None:
                continue
            t0 = time.monotonic()
            cluster.kill(old, signal.SIGKILL)
            new, _ = cluster.wait_leader(30)
            election_s.append(time.monotonic() - t0)
            assert new is not old
            cluster.start(old)
            wait_progress(load, BATCH)

        old = cluster.leader()  # pause the leader 10 s, then resume it
        assert old is not None
        cluster.kill(old, signal.SIGSTOP)
        t0 = time.monotonic()
        cluster.wait_leader(30)
        election_s.append(time.monotonic() - t0)
        wait_progress(load, BATCH)
        time.sleep(max(0.0, 10 - (time.monotonic() - t0)))
        cluster.kill(old, signal.SIGCONT)
        wait_progress(load, BATCH)

        for n in cluster.nodes:  # all three at once
            cluster.kill(n, signal.SIGKILL)
        for n in cluster.nodes:
            cluster.start(n)
        cluster.wait_leader(30)
        wait_progress(load, 2 * BATCH)
        load.stop.set()
        load.thread.join(90)
        assert not load.errors, load.errors[:5]

        # let followers catch up, then compare every replica
        time.sleep(1.0)
        leader, _ = cluster.wait_leader(30)
        with LedgerClient(leader.target) as c:
            final = c.checkpoint().tree_size
        bodies: dict[int, set[bytes]] = {}
        for n in cluster.nodes:
            with LedgerClient(n.target, stale_reads=True) as c:  # each replica's own state
                deadline = time.monotonic() + 30
                while c.checkpoint().tree_size < final and time.monotonic() < deadline:
                    time.sleep(0.1)
                cp = c.checkpoint()
                assert cp.tree_size >= final, f"{n.node_id} did not catch up"
                body, _ = split_note(cp.note)
                bodies.setdefault(Checkpoint.parse(body).size, set()).add(body)
                seen: Counter[bytes] = Counter()
                for raw in c.entries(0, final):
                    leaf = decode_leaf(raw)
                    if leaf.kind == EventKind.CREATE_TRANSFER and leaf.result == Result.OK:
                        seen[leaf.body[:16]] += 1
                assert max(seen.values()) == 1, f"{n.node_id}: a transfer applied twice"
                for tid in load.acked:
                    assert seen[tid.to_bytes(16, "little")] == 1, f"{n.node_id}: acked transfer {tid} missing"
                model: Counter[int] = Counter()
                applied = {int.from_bytes(k, "little") for k in seen}
                for tid, dr, cr, amount in load.sent_meta:
                    if tid in applied:
                        model[dr] -= amount
                        model[cr] += amount
                for aid, st in zip(range(1, ACCOUNTS + 1), c.lookup_accounts(list(range(1, ACCOUNTS + 1))),
                                   strict=True):
                    assert st is not None and st.credits_posted - st.debits_posted == model[aid]
        for size, same in bodies.items():
            assert len(same) == 1, f"replicas signed different checkpoints at size {size}"
        print(f"\nelection after leader loss: median {statistics.median(election_s):.2f}s, "
              f"max {max(election_s):.2f}s over {len(election_s)} elections; {len(load.acked):,} acked")
    finally:
        kill_region(cluster)
