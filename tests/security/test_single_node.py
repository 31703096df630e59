"""One TLS node (a real process): certificates rotate without a restart, revocation applies from the
next call on, and per-PSP fair share answers RESOURCE_EXHAUSTED with a retry-after hint."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from clients.client import BatchRefused, LedgerClient
from clients.connect import ClientTls
from clients.workload import account_records
from ledger.ownership import account_id_for
from ledger.types import EventKind
from sovledger import ca
from sovledger_pb import ledger_pb2 as pb
from sovledger_pb import ledger_pb2_grpc as pb_grpc
from tests.integration.nodeproc import NodeProcess
from tests.security.region import tls_of

pytestmark = pytest.mark.integration


def _node_files(ca_dir: Path, into: Path) -> None:
    """Install the CA certificate and node-1's certificate and key where the node reads them."""
    into.mkdir(exist_ok=True)
    for src, dst in ((ca_dir / "node-node-1.key", "node.key"), (ca_dir / "node-node-1.pem", "node.pem"),
                     (ca_dir / "ca.pem", "ca.pem")):
        shutil.copy(src, into / (dst + ".tmp"))
        os.replace(into / (dst + ".tmp"), into / dst)


@pytest.fixture()
def tls_node(tmp_path: Path) -> Iterator[tuple[NodeProcess, Path]]:
    c = tmp_path / "ca"
    ca.init_ca(c, "single")
    ca.issue(c, "node", "node-1")
    for psp in ("1", "2"):
        ca.issue(c, "psp", psp)
    live = tmp_path / "tls"
    _node_files(c, live)
    (tmp_path / "node.toml").write_text('psp_limits = { "1" = { rate_per_s = 1, burst = 3 } }\n')
    node = NodeProcess(tmp_path / "data", config=tmp_path / "node.toml", extra=[
        "--tls-ca", str(live / "ca.pem"), "--tls-cert", str(live / "node.pem"), "--tls-key", str(live / "node.key"),
        "--tls-revoked", str(c / "revoked.txt")])
    node.start()
    try:
        yield node, c
    finally:
        node.stop()


def _status_code(target: str, tls: ClientTls) -> grpc.StatusCode:
    with LedgerClient(target, tls=tls) as c:
        try:
            c.admin.Status(pb.StatusRequest(), timeout=10)
        except grpc.RpcError as e:
            return e.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_node_certificate_and_ca_rotate_without_restart(tls_node: tuple[NodeProcess, Path], tmp_path: Path) -> None:
    node, old_ca = tls_node
    assert _status_code(node.target, tls_of(old_ca, "psp", "2")) == grpc.StatusCode.OK
    new_ca = tmp_path / "ca2"
    ca.init_ca(new_ca, "single")
    ca.issue(new_ca, "node", "node-1")
    ca.issue(new_ca, "psp", "2")
    _node_files(new_ca, tmp_path / "tls")
    assert _status_code(node.target, tls_of(new_ca, "psp", "2")) == grpc.StatusCode.OK
    assert _status_code(node.target, tls_of(old_ca, "psp", "2")) == grpc.StatusCode.UNAVAILABLE
    assert node.proc is not None and node.proc.poll() is None  # same process throughout


def test_a_client_rotates_its_certificate_then_the_old_one_is_revoked(tls_node: tuple[NodeProcess, Path],
                                                                        tmp_path: Path) -> None:
    node, c = tls_node
    old = tls_of(c, "psp", "2")
    old_copy = ClientTls(old.ca, str(tmp_path / "old.pem"), str(tmp_path / "old.key"))
    shutil.copy(old.cert, old_copy.cert)
    shutil.copy(old.key, old_copy.key)
    ca.issue(c, "psp", "2")  # the rotated certificate (same identity, new key and serial)
    assert _status_code(node.target, old_copy) == grpc.StatusCode.OK
    assert _status_code(node.target, tls_of(c, "psp", "2")) == grpc.StatusCode.OK
    with LedgerClient(node.target, tls=old_copy) as still_open:
        still_open.wait_ready()
        ca.revoke(c, ca.serial_of(Path(old_copy.cert)))
        with pytest.raises(grpc.RpcError) as err:  # refused from the next call on, even on an open channel
            still_open.admin.Status(pb.StatusRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in (err.value.details() or "")
    assert _status_code(node.target, tls_of(c, "psp", "2")) == grpc.StatusCode.OK


def test_fair_share_limits_one_psp_not_the_others(tls_node: tuple[NodeProcess, Path]) -> None:
    node, c = tls_node
    with LedgerClient(node.target, tls=tls_of(c, "psp", "1")) as one, \
            LedgerClient(node.target, tls=tls_of(c, "psp", "2")) as two:
        one.submit_one(EventKind.CREATE_ACCOUNT, account_records(3, first_id=account_id_for(1, 1)))
        with pytest.raises(BatchRefused) as err:
            one.submit_one(EventKind.CREATE_ACCOUNT, account_records(3, first_id=account_id_for(1, 10)))
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry in" in str(err.value)
        for first in (1, 10, 20):  # PSP 2 has no limit configured: unaffected
            two.submit_one(EventKind.CREATE_ACCOUNT, account_records(3, first_id=account_id_for(2, first)))
        stream = pb_grpc.LedgerStub(one.channel).Submit(iter([pb.SubmitRequest(
            batch_id=7, kind=pb.CREATE_ACCOUNTS, records=account_records(3, first_id=account_id_for(1, 30)))]),
            timeout=10)
        (resp,) = list(stream)
        assert resp.status.reason == pb.REASON_RATE_LIMITED
