"""The SDK against real node processes on 127.0.0.1: streaming, kill -9 of the node mid-stream,
kill -9 of the PSP process and journal recovery, signed transfers end to end.

Exactly-once is checked from the log itself: every transfer id appears in exactly one successful
CREATE_TRANSFER leaf (StreamEntries), LookupTransfers finds every acknowledged payment, and
balances equal what the payments imply.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clients.client import BatchRefused, LedgerClient
from clients.ids import new_id
from clients.journal import Journal
from clients.sdk import LedgerSDK, SdkConfig
from clients.sdk_errors import PermissionDeniedError
from ledger.codec import TRANSFER_SIZE, decode_leaf, decode_transfer, encode_transfer, iter_aux, u128_from
from ledger.note import Signer
from ledger.psp_group import AUX_TAG_PSP_GROUP, check_group_aux, group_messages
from ledger.types import Account, EventKind, Result, Transfer
from tests.integration.nodeproc import ROOT, NodeProcess, kill_region

pytestmark = pytest.mark.integration
ACCOUNTS = 50


def accounts(n: int = ACCOUNTS) -> list[Account]:
    return [Account(id=i, ledger=840, code=1) for i in range(1, n + 1)]


def transfers(n: int) -> list[Transfer]:
    return [Transfer(id=new_id(), debit_account_id=1 + i % ACCOUNTS, credit_account_id=1 + (i + 7) % ACCOUNTS,
                     amount=1 + i % 97, ledger=840, code=1, psp_id=1 + i % 4) for i in range(n)]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    n = NodeProcess(tmp_path / "n1").start()
    yield n
    n.stop()


def ledger_transfer_counts(target: str) -> Counter[int]:
    """transfer id -> number of successful CREATE_TRANSFER leaves in the whole log."""
    out: Counter[int] = Counter()
    with LedgerClient(target) as c:
        for raw in c.entries(0):
            leaf = decode_leaf(raw)
            if leaf.kind == EventKind.CREATE_TRANSFER and Result(leaf.result).is_success:
                out[u128_from(leaf.body[:16])] += 1
    return out


def test_stream_and_submit_against_a_real_node(node: NodeProcess) -> None:
    cfg = SdkConfig(batch_size_max=1000, batch_delay_s=0.005, window_items=5000)
    ts = transfers(20_000)
    with LedgerSDK([node.target], config=cfg) as sdk:
        assert all(o.ok for o in sdk.create_accounts(accounts()))
        assert all(o.result == Result.EXISTS for o in sdk.create_accounts(accounts()))  # idempotent
        with sdk.session() as s:
            futs = [s.send(t) for t in ts]
            s.flush()
            assert max(s.stats.recent_batch_sizes) == 1000
        outs = [f.result() for f in futs]
        assert all(o.result == Result.OK for o in outs)
        assert len({o.log_index for o in outs}) == len(outs)
        infos = sdk.lookup_transfers([t.id for t in ts[:100]])
        assert all(i.found for i in infos)
        assert [i.log_index for i in infos] == [o.log_index for o in outs[:100]]
        (again,) = sdk.submit([ts[0]])
        assert again.result == Result.TRANSFER_EXISTS and again.log_index == outs[0].log_index
    counts = ledger_transfer_counts(node.target)
    assert len(counts) == len(ts) and set(counts.values()) == {1}


@pytest.mark.parametrize("path", ["objects", "bulk"])
def test_node_kill9_mid_stream_is_never_a_failure_and_never_a_duplicate(node: NodeProcess, path: str) -> None:
    cfg = SdkConfig(batch_size_max=1000, batch_delay_s=0.005, window_items=8000, window_batches=8)
    ts = transfers(60_000)
    futs: list[Any] = []
    with LedgerSDK([node.target], config=cfg) as sdk:
        sdk.create_accounts(accounts())
        s = sdk.session()

        def stream() -> None:
            if path == "bulk":  # the same payments as packed records, 1000 per send_records
                records = b"".join(encode_transfer(t) for t in ts)
                step = 1000 * TRANSFER_SIZE
                futs.extend(s.send_records(records[k : k + step]) for k in range(0, len(records), step))
            else:
                futs.extend(s.send(t) for t in ts)
            s.flush()

        th = threading.Thread(target=stream)
        th.start()
        deadline = time.monotonic() + 30
        while s.acked < 15_000 and time.monotonic() < deadline:
            time.sleep(0.005)
        node.kill9()  # batches are in flight: their outcome is now indeterminate
        time.sleep(0.3)
        node.start()
        th.join(60)
        s.close()
        # raises if any payment got an error
        outs = [o for f in futs for o in (f.result(0).outcomes() if path == "bulk" else [f.result(0)])]
        assert len(outs) == len(ts) and [o.transfer_id for o in outs] == [t.id for t in ts]
        assert all(o.result == Result.OK for o in outs), Counter(o.result for o in outs)
        assert s.stats.broken_streams >= 1 and s.stats.indeterminate_batches >= 1
        print(f"\nkill -9: {s.stats.indeterminate_batches} indeterminate batches, "
              f"{s.stats.resolved_by_lookup} payments settled by lookup, resolutions "
              f"{Counter(o.resolution for o in outs)}")
    counts = ledger_transfer_counts(node.target)
    assert set(counts) == {t.id for t in ts}
    assert set(counts.values()) == {1}


def run_worker(target: str, journal: Path, count: int, *extra: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'proto'}", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "tests.sdk.psp_worker", target, str(journal), str(count),
                             str(ACCOUNTS), *extra], stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)


@pytest.mark.parametrize("path", ["objects", "bulk"])
def test_psp_kill9_and_journal_recovery_creates_no_duplicates(node: NodeProcess, tmp_path: Path, path: str) -> None:
    journal_path = tmp_path / "psp-journal.sqlite"
    with LedgerSDK([node.target]) as sdk:
        sdk.ensure_accounts(accounts())
    worker = run_worker(node.target, journal_path, 200_000, *(["--bulk"] if path == "bulk" else []))
    assert worker.stdout is not None
    acked = 0
    deadline = time.monotonic() + 30
    while acked < 6000 and time.monotonic() < deadline:
        line = worker.stdout.readline()
        if line.startswith("ACKED"):
            acked = int(line.split()[1])
    os.kill(worker.pid, signal.SIGKILL)  # mid-stream: journaled payments are in flight
    worker.wait(10)
    with Journal(journal_path) as j:
        before = j.counts()
    assert before["pending"] > 0, before  # the crash left unresolved payments behind

    again = run_worker(node.target, journal_path, 0, "--recover-only")
    out, _ = again.communicate(timeout=60)
    assert again.returncode == 0, out
    assert f"RECOVERED {before['pending']}" in out

    with Journal(journal_path) as j:
        entries = j.entries()
        assert j.counts() == {"pending": 0, "done": len(entries), "refused": 0}
    assert all(e.result == Result.OK for e in entries)
    journaled = {e.transfer_id: decode_transfer(e.record) for e in entries}
    # every journaled payment is in the ledger exactly once, and nothing else is
    counts = ledger_transfer_counts(node.target)
    assert set(counts) == set(journaled)
    assert set(counts.values()) == {1}
    with LedgerSDK([node.target]) as sdk:
        ids = list(journaled)
        infos = sdk.lookup_transfers(ids)
        assert all(i.found for i in infos)
        assert {u128_from(i.id): i.log_index for i in infos} == {e.transfer_id: e.log_index for e in entries}
        # balances: net of every journaled payment, exactly once
        net = Counter[int]()
        for t in journaled.values():
            net[t.credit_account_id] += t.amount
            net[t.debit_account_id] -= t.amount
        states = sdk.lookup_accounts([a.id for a in accounts()])
        for a, st in zip(accounts(), states, strict=True):
            assert st is not None
            assert st.credits_posted - st.debits_posted == net[a.id], a.id


@pytest.fixture
def psp_key() -> Signer:
    return Signer.generate("acme-psp")


@pytest.fixture
def signing_node(tmp_path: Path, psp_key: Signer) -> Iterator[NodeProcess]:
    """A node that knows the PSP's verifier key (signatures optional)."""
    config = tmp_path / "node.toml"
    config.write_text(f'psp_verifier_keys = ["{psp_key.verifier.to_string()}"]\n')
    n = NodeProcess(tmp_path / "n1", config=config).start()
    yield n
    n.stop()


def test_sdk_signs_each_record_and_the_signature_lands_in_the_leaf(signing_node: NodeProcess,
                                                                    psp_key: Signer) -> None:
    node, psp = signing_node, psp_key
    ts = transfers(300)
    with LedgerSDK([node.target], signer=psp) as sdk:
        sdk.ensure_accounts(accounts())
        outs = sdk.submit(ts)
    assert all(o.ok for o in outs)
    with LedgerClient(node.target) as c:
        for o in outs[:: 37]:
            leaf = decode_leaf(next(iter(c.entries(o.log_index, o.log_index + 1))))
            assert leaf.psp_signature is not None
            key_id, sig = leaf.psp_signature
            assert key_id == psp.key_id
            assert psp.verifier.verify(leaf.body, sig)  # Ed25519 over the exact 176-byte record


def test_batch_signed_groups_end_to_end(signing_node: NodeProcess, psp_key: Signer) -> None:
    """sign_group: one signature per 16 records; every leaf proves its own record; a forged group
    signature is refused with the group and its records named, and nothing of the batch is applied."""
    node, psp = signing_node, psp_key
    ts = transfers(100)
    records = b"".join(encode_transfer(t) for t in ts)
    with LedgerSDK([node.target], signer=psp, config=SdkConfig(sign_group=16)) as sdk:
        sdk.ensure_accounts(accounts())
        out = sdk.submit_records(records)
        assert out.ok.all()
        objs = sdk.submit(transfers(20))  # the per-object path signs in groups too
        assert all(o.ok for o in objs)
        fresh = b"".join(encode_transfer(t) for t in transfers(100))
        forged = bytearray(b"".join(psp.sign(m) for m in group_messages(EventKind.CREATE_TRANSFER,
                                                                           fresh, TRANSFER_SIZE, 16)))
        forged[3 * 64] ^= 1
        with pytest.raises(PermissionDeniedError, match=r"group signature #3 \(records #48\.\.#63\)"):
            sdk.submit_records(fresh, signatures=bytes(forged), key_id=psp.key_id, sign_group=16)
    verify = lambda kid, msg, sig: kid == psp.key_id and psp.verifier.verify(msg, sig)  # noqa: E731
    with LedgerClient(node.target) as c:
        for i in range(0, 100, 7):
            leaf = decode_leaf(next(iter(c.entries(int(out.log_indexes[i]), int(out.log_indexes[i]) + 1))))
            assert leaf.body == records[i * TRANSFER_SIZE : (i + 1) * TRANSFER_SIZE]
            ((tag, value),) = list(iter_aux(leaf.aux))
            assert tag == AUX_TAG_PSP_GROUP and check_group_aux(EventKind.CREATE_TRANSFER, leaf.body, value, verify)
    assert sum(ledger_transfer_counts(node.target).values()) == 120  # the forged batch left nothing


def test_journal_recovery_resends_a_group_signed_batch_with_its_group_signatures(
        signing_node: NodeProcess, psp_key: Signer, tmp_path: Path) -> None:
    """A crashed PSP left a batch-signed batch pending: recover() re-sends it with the journaled group
    signatures and sign_group (the node verifies them; a count mismatch would be refused)."""
    node, psp = signing_node, psp_key
    with LedgerSDK([node.target]) as sdk:
        sdk.ensure_accounts(accounts())
    recs = b"".join(encode_transfer(t) for t in transfers(40))
    sigs = b"".join(psp.sign(m) for m in group_messages(EventKind.CREATE_TRANSFER, recs, TRANSFER_SIZE, 16))
    with Journal(tmp_path / "j.db") as j:
        j.record_batch(recs, sigs, psp.key_id, 16)
    with LedgerSDK([node.target], signer=psp, journal=str(tmp_path / "j.db")) as sdk:
        outs = sdk.recover()
    assert len(outs) == 40 and all(o.ok for o in outs)
    with Journal(tmp_path / "j.db") as j:
        assert j.counts() == {"pending": 0, "done": 40, "refused": 0}
    with LedgerClient(node.target) as c:
        leaf = decode_leaf(next(iter(c.entries(outs[17].log_index, outs[17].log_index + 1))))
    ((tag, value),) = list(iter_aux(leaf.aux))
    assert tag == AUX_TAG_PSP_GROUP and value[68:72] == bytes([16, 0, 1, 0])  # group of 16, index 1


def test_a_signed_batch_by_a_key_the_node_does_not_know_is_refused(node: NodeProcess) -> None:
    """Without configured PSP keys a node never logs signatures it did not check."""
    with LedgerSDK([node.target], signer=Signer.generate("unknown-psp")) as sdk:
        sdk.ensure_accounts(accounts())
        with pytest.raises(PermissionDeniedError, match="unknown PSP key"):
            sdk.submit(transfers(3))
    assert ledger_transfer_counts(node.target) == Counter()


def test_psp_load_cli_json(signing_node: NodeProcess, psp_key: Signer, tmp_path: Path) -> None:
    node = signing_node
    key_file = tmp_path / "psp.key"
    key_file.write_text(psp_key.to_string() + "\n")
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'proto'}")
    out = subprocess.run([sys.executable, "-m", "sovledger", "psp", "load", "--target", node.target, "--rate", "3000",
                          "--duration", "1", "--accounts", "100", "--batch", "500", "--sign", "--key", str(key_file),
                          "--json", "--insecure"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    import json

    report = json.loads(out.stdout)
    assert report["sent"] == report["acked"] > 2000
    assert report["results"] == {"ok": report["acked"]} and report["errors"] == {}
    assert report["signed"] and report["psp_verifier_key"] == psp_key.verifier.to_string()
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]


def test_signed_transfers_end_to_end(tmp_path: Path) -> None:
    psp, other = Signer.generate("acme-psp"), Signer.generate("mallory-psp")
    config = tmp_path / "node.toml"
    config.write_text(f'psp_verifier_keys = ["{psp.verifier.to_string()}"]\npsp_require_signatures = true\n')
    n = NodeProcess(tmp_path / "n1", config=config).start()
    try:
        with LedgerSDK([n.target], signer=psp) as sdk:
            sdk.ensure_accounts(accounts())
            ts = transfers(500)
            assert all(o.ok for o in sdk.submit(ts))
        with LedgerClient(n.target) as c:  # the signature is in the leaf for auditors
            leaf = decode_leaf(next(iter(c.entries(ACCOUNTS, ACCOUNTS + 1))))
            assert leaf.psp_signature is not None and leaf.psp_signature[0] == psp.key_id
        # a forged signature (valid framing, wrong bytes) is refused with the record named
        recs = b"".join(encode_transfer(t) for t in transfers(2))
        with LedgerClient(n.target) as c, pytest.raises(BatchRefused, match="record #0"):
            c.submit_one(EventKind.CREATE_TRANSFER, recs, bytes(128), psp.key_id)
        with LedgerSDK([n.target], signer=other) as sdk, pytest.raises(PermissionDeniedError, match="unknown PSP key"):
            sdk.submit(transfers(3))
        with LedgerSDK([n.target]) as sdk, pytest.raises(PermissionDeniedError, match="requires PSP signatures"):
            sdk.submit(transfers(3))
    finally:
        n.stop()


@pytest.mark.parametrize("path", ["objects", "bulk"])
def test_region_leader_kill9_fails_over_without_failures_or_duplicates(tmp_path: Path, path: str) -> None:
    from tests.integration.nodeproc import start_region

    region = start_region(tmp_path / "region", 3)
    try:
        targets = [n.target for n in region.nodes]
        cfg = SdkConfig(batch_size_max=1000, batch_delay_s=0.005, window_items=5000)
        ts = transfers(20_000)
        futs = []
        with LedgerSDK(targets, config=cfg) as sdk:
            sdk.ensure_accounts(accounts())  # waits out the first election (UNAVAILABLE → retried)
            s = sdk.session()

            def stream() -> None:
                if path == "objects":
                    futs.extend(s.send(t) for t in ts)
                else:  # the bulk path: packed buffers of 1000 records
                    recs = b"".join(encode_transfer(t) for t in ts)
                    step = 1000 * TRANSFER_SIZE
                    futs.extend(s.send_records(recs[k : k + step]) for k in range(0, len(recs), step))
                s.flush()

            th = threading.Thread(target=stream)
            th.start()
            deadline = time.monotonic() + 30
            while s.acked < 5000 and time.monotonic() < deadline:
                time.sleep(0.005)
            old_leader = sdk.router_leader
            region.kill(next(n for n in region.nodes if n.target == old_leader))
            th.join(90)
            s.close()
            outs = [o for f in futs for o in (f.result(0).outcomes() if path == "bulk" else [f.result(0)])]
            assert len(outs) == len(ts) and all(o.result == Result.OK for o in outs), \
                Counter(o.result for o in outs)
            assert sdk.router_leader not in (None, old_leader)
            new_leader = sdk.router_leader
        assert new_leader is not None
        counts = ledger_transfer_counts(new_leader)
        assert set(counts) == {t.id for t in ts} and set(counts.values()) == {1}
    finally:
        kill_region(region)
