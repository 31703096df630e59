"""Vault replication on a real 3-node region: majority acknowledgement, node loss, catch-up of a node that
was down during a put, and a put refused when no majority can store it."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import grpc
import pytest

from clients.client import LedgerClient
from clients.pii import PiiVault, VaultCallError
from tests.integration.nodeproc import kill_region, start_region
from tests.pii.helpers import vault_key

pytestmark = pytest.mark.integration

FIELDS = {"name": "Rita Replica", "country": "NL"}


def _has(target: str, subject: int, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    with PiiVault(target, 5) as v:
        while time.monotonic() < deadline:
            try:
                return v.get(subject).record.fields["name"] == FIELDS["name"]
            except VaultCallError:
                time.sleep(0.2)
    return False


def test_copies_survive_node_loss_and_reach_a_node_that_was_down(tmp_path: Path) -> None:
    cluster = start_region(tmp_path / "region")
    try:
        cluster.wait_leader(30)
        for n in cluster.nodes:  # every member listening before the put
            with LedgerClient(n.target, stale_reads=True) as lc:
                lc.wait_ready(30)
        a, b, c = cluster.nodes
        cluster.kill(c, signal.SIGKILL)
        with PiiVault(a.target) as v:
            r = v.put(7, FIELDS, psp_id=2)
        assert r.copies == 2  # a and b fsynced record and key: acknowledged
        assert vault_key(Path(c.data_dir), 7) is None
        cluster.kill(a, signal.SIGKILL)  # the node that took the put is lost: b still answers
        assert _has(b.target, 7)
        cluster.start(c)  # c was down during the put: it pulls the copy from b on start
        assert _has(c.target, 7)
        assert vault_key(Path(c.data_dir), 7) == vault_key(Path(b.data_dir), 7)
        # b alone of three cannot reach a majority: the put is refused, the caller told to retry
        cluster.kill(c, signal.SIGKILL)
        with PiiVault(b.target, 30) as v, pytest.raises(VaultCallError) as e:
            v.put(8, FIELDS, psp_id=2)
        assert e.value.code == grpc.StatusCode.UNAVAILABLE and "majority" in str(e.value)
    finally:
        kill_region(cluster)
