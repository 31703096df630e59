"""A full disk under load: the node's data directory on a small tmpfs (mounted by the test; needs
root, as in this project's sandbox and CI). Every batch the node acknowledged must be in the log
exactly once, every batch it refused as store-full must be absent, and the node keeps serving reads."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.faults import harness
from tests.faults.harness import Load, check, create_accounts
from tests.integration.nodeproc import NodeProcess

pytestmark = pytest.mark.integration

TMPFS_BYTES = 12 << 20


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:  # an environment without mount rights cannot run this scenario at all
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.faults_slow
def test_disk_full_refuses_cleanly_and_loses_nothing(small_disk: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a store-full refusal is a definitive "nothing applied" here: that is the promise under test
    monkeypatch.setattr(harness, "DEFINITIVE", harness.DEFINITIVE | {grpc.StatusCode.RESOURCE_EXHAUSTED})
    node = NodeProcess(small_disk / "n1", extra=["--map-size", str(256 << 20)])
    node.log_path = small_disk.parent / "n1.log"  # the log must not fill the disk under test
    node.start()
    try:
        create_accounts(node.target)
        load = Load(lambda: node.target, seed=21, batches_max=400, seconds_max=150, resend_s=10).start()
        load.thread.join(200)
        ledger = load.finish()
        assert ledger.acked, "nothing was acknowledged before the disk filled"
        check({"node-1": node.target}, ledger, scenario=f"disk full ({TMPFS_BYTES >> 20} MiB tmpfs)")
        free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
        assert ledger.refused, (f"{len(ledger.acked)} acked, {len(ledger.unknown)} of unknown outcome, none refused "
                                f"as store-full ({free} bytes free): the disk filled without a clear refusal")
    finally:
        node.stop()
