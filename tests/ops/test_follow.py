"""The follow stream across a leader change: a consumer on the leader survives its kill -9.

A real 3-node region under continuous load. The consumer (``clients.follow.follow``) starts on the
leader; the leader is killed with SIGKILL mid-stream and restarted. Afterwards the consumer has
seen every index 0..N-1 exactly once, each leaf byte-identical to what a replica serves, and
every acknowledged transfer is among the leaves it saw.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from clients.client import LedgerClient
from clients.follow import follow
from clients.workload import account_records
from ledger.codec import TRANSFER_STRUCT, decode_leaf
from ledger.types import EventKind
from sovledger.cluster import Cluster
from tests.integration.nodeproc import kill_region
from tests.integration.test_region import BATCH, FailoverLoad, wait_progress

pytestmark = pytest.mark.integration


class Consumer:
    def __init__(self, targets: list[str]) -> None:
        self.seen: list[tuple[int, bytes]] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(targets,), daemon=True)

    def _run(self, targets: list[str]) -> None:
        try:
            for e in follow(targets, 0, give_up_after_s=60):
                self.seen.append((e.index, e.leaf))
                if self.stop.is_set():
                    return
        except BaseException as e:  # reported by the test
            self.error = e


def test_follow_survives_leader_kill(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "region")
    cluster.create(3, "eu-west", [])
    for n in cluster.nodes:
        cluster.start(n)
    consumer: Consumer | None = None
    try:
        leader, _ = cluster.wait_leader(30)
        with LedgerClient(leader.target) as c:
            c.wait_ready()
            assert set(c.submit_one(EventKind.CREATE_ACCOUNT, account_records(200)).results) == {0}
        targets = [leader.target] + [n.target for n in cluster.nodes if n is not leader]
        consumer = Consumer(targets)
        consumer.thread.start()
        load = FailoverLoad(cluster, seed=11)
        load.thread.start()
        wait_progress(load, 4 * BATCH)
        seen_before_kill = len(consumer.seen)
        cluster.kill(leader, signal.SIGKILL)  # the node the consumer streams from
        cluster.wait_leader(30)
        wait_progress(load, 4 * BATCH)
        cluster.start(leader)
        wait_progress(load, 2 * BATCH)
        load.stop.set()
        load.thread.join(90)
        assert not load.errors, load.errors[:5]

        new_leader, _ = cluster.wait_leader(30)
        with LedgerClient(new_leader.target) as c:
            final = c.checkpoint().tree_size
            reference = list(c.entries(0, final))
        deadline = time.monotonic() + 60
        while len(consumer.seen) < final and time.monotonic() < deadline and consumer.error is None:
            time.sleep(0.05)
        consumer.stop.set()
        assert consumer.error is None, consumer.error
        assert seen_before_kill > 0, "the consumer must be mid-stream when the leader dies"
        got = consumer.seen[:final]
        assert [i for i, _ in got] == list(range(final)), "gaps or duplicates in the followed indexes"
        assert [leaf for _, leaf in got] == reference, "followed leaves differ from the replica's log"
        followed_ids = set()
        for _, leaf in got:
            d = decode_leaf(leaf)
            if d.kind == EventKind.CREATE_TRANSFER:
                followed_ids.add(int.from_bytes(TRANSFER_STRUCT.unpack(d.body)[0], "little"))
        missing = [tid for tid in load.acked if tid not in followed_ids]
        assert not missing, f"{len(missing)} acknowledged transfers never reached the consumer"
    finally:
        if consumer is not None:
            consumer.stop.set()
        kill_region(cluster)
