"""The fault suite's harness: a load that remembers every answer, and ONE checker for every scenario.

The checker's promise (docs/reliability.md): every acknowledged payment is in the log exactly once
with the acknowledged result; no payment the client was told was refused is in the log; the
replicas are byte-identical (same leaves, same signed checkpoint body at the same size, same
account states); ``audit verify --full`` passes. A scenario where a node refused to serve instead
asserts the refusal and its reason, and runs the checker on the nodes that do serve.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from clients.client import BatchRefused, LedgerClient
from clients.workload import TransferGenerator, account_records
from ledger.codec import decode_leaf
from ledger.note import Checkpoint, split_note
from ledger.types import EventKind, Result
from tests.integration.nodeproc import ROOT

ACCOUNTS = 100
BATCH = 200
# a refusal says "nothing of this batch was applied"; anything else (a broken stream, a timeout,
# UNAVAILABLE while leadership moves) leaves the outcome unknown: the load re-sends the same ids
DEFINITIVE = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED,
              grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE}
# RESOURCE_EXHAUSTED (overload, store full, or an outcome left unknown by a leader change) is
# re-sent with the same ids, slowly, until definitive; after ``resend_s`` the ids count as unknown,
# never as refused: a commit that outran its answer (issue #12 item 1) must not make the checker lie
RETRY_SLOWLY = {grpc.StatusCode.RESOURCE_EXHAUSTED}


@dataclass
class Ledger:
    """What the clients were told: per transfer id, the acknowledged (result, log index) or a refusal."""

    acked: dict[int, tuple[int, int]] = field(default_factory=dict)
    refused: set[int] = field(default_factory=set)
    unknown: set[int] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)


class Load:
    """Sends batches of transfers to whoever ``target()`` names, re-sending the same ids until definitive.

    Bounded: at most ``batches_max`` batches and ``seconds_max`` seconds."""

    def __init__(self, target: object, seed: int = 1, batches_max: int = 400, seconds_max: float = 120,
                 resend_s: float = 30) -> None:
        self._target = target  # callable returning HOST:PORT or None
        self.gen = TransferGenerator(ACCOUNTS, seed=seed, first_transfer_id=(seed + 1) << 64)
        self.ledger = Ledger()
        self.stop = threading.Event()
        self.batches_max = batches_max
        self.seconds_max = seconds_max
        self.resend_s = resend_s
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Load:
        self.thread.start()
        return self

    def finish(self, timeout_s: float = 90) -> Ledger:
        self.stop.set()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the load did not stop"
        return self.ledger

    def wait_acked(self, extra: int, timeout_s: float = 60) -> None:
        want = len(self.ledger.acked) + extra
        deadline = time.monotonic() + timeout_s
        while len(self.ledger.acked) < want and time.monotonic() < deadline and self.thread.is_alive():
            time.sleep(0.02)
        assert self.thread.is_alive() or len(self.ledger.acked) >= want, (
            f"the load ended (its count or time bound) at {len(self.ledger.acked)} acked, before {want}")
        assert len(self.ledger.acked) >= want, f"no progress: {len(self.ledger.acked)} acked, wanted {want}"

    def _run(self) -> None:
        t_end = time.monotonic() + self.seconds_max
        for _ in range(self.batches_max):
            if self.stop.is_set() or time.monotonic() > t_end:
                return
            records, meta = self.gen.records(BATCH)
            self._send(records, [m[0] for m in meta])

    def _send(self, records: bytes, ids: list[int]) -> None:
        deadline = time.monotonic() + self.resend_s
        led = self.ledger
        while time.monotonic() < deadline:
            target = self._target()  # type: ignore[operator]
            if target is None:
                time.sleep(0.05)
                continue
            try:
                with LedgerClient(target, timeout_s=5) as c:
                    r = c.submit_one(EventKind.CREATE_TRANSFER, records)
            except BatchRefused as e:
                if e.code in DEFINITIVE:
                    led.refused.update(ids)
                    return
                time.sleep(0.2 if e.code in RETRY_SLOWLY else 0.05)
                continue
            except grpc.RpcError:
                time.sleep(0.05)
                continue
            for tid, code, index in zip(ids, r.results, r.log_indexes, strict=True):
                led.acked[tid] = (Result.OK if code == Result.TRANSFER_EXISTS else code, index)
            return
        led.unknown.update(ids)


def create_accounts(target: str) -> None:
    with LedgerClient(target, timeout_s=15) as c:
        c.wait_ready(30)
        res = c.submit_one(EventKind.CREATE_ACCOUNT, account_records(ACCOUNTS))
        assert set(res.results) <= {Result.OK, Result.EXISTS}, res.results


# -- the one checker ---------------------------------------------------------------------------


@dataclass
class Replica:
    name: str
    size: int
    leaves_digest: str
    body: bytes
    accounts: list[bytes]


def _read_replica(name: str, target: str, size: int, timeout_s: float = 60) -> tuple[Replica, list[bytes]]:
    deadline = time.monotonic() + timeout_s
    with LedgerClient(target, timeout_s=30, stale_reads=True) as c:
        while True:
            try:
                cp = c.checkpoint()
                if cp.tree_size >= size:
                    break
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, f"{name} did not reach tree size {size}"
            time.sleep(0.1)
        # compare at the checkpoint this replica signed: its leaves, body and balances are one snapshot
        # only when no block is being applied, so the caller stops the load first
        leaves = list(c.entries(0, cp.tree_size))
        body, _ = split_note(cp.note)
        accts = c.lookup_accounts(list(range(1, ACCOUNTS + 1)))
    import blake3

    h = blake3.blake3()
    for leaf in leaves:
        h.update(len(leaf).to_bytes(4, "little") + leaf)
    raw_accts = [repr(a).encode() for a in accts]
    return Replica(name, cp.tree_size, h.hexdigest(), body, raw_accts), leaves


def check(nodes: dict[str, str], ledger: Ledger, leader: str | None = None, scenario: str = "",
          audit: bool = True) -> int:
    """The one checker. ``nodes``: name → HOST:PORT of every replica that serves. Returns the count of
    acknowledged payments checked (printed, per scenario)."""
    assert not ledger.errors, ledger.errors[:5]
    assert nodes, "no node serves"
    sizes = {}
    for name, target in nodes.items():
        with LedgerClient(target, timeout_s=10, stale_reads=True) as c:
            sizes[name] = int(c.status().tree_size)
    final = max(sizes.values())
    replicas = {}
    log: list[bytes] = []
    for name, target in nodes.items():
        replicas[name], leaves = _read_replica(name, target, final)
        if len(leaves) > len(log):
            log = leaves
    _check_log(log, ledger)
    _check_identical(list(replicas.values()))
    if audit:
        audit_full(nodes[leader] if leader else next(iter(nodes.values())), list(nodes.values()))
    print(f"\n[faults] {scenario}: {len(ledger.acked):,} acknowledged payments checked, "
          f"{len(ledger.refused):,} refused checked absent, {len(ledger.unknown):,} of unknown outcome, "
          f"{len(nodes)} replica(s) identical at {final:,} entries")
    return len(ledger.acked)


def _check_log(leaves: list[bytes], ledger: Ledger) -> None:
    seen: Counter[int] = Counter()
    at: dict[int, tuple[int, int]] = {}
    for raw in leaves:
        leaf = decode_leaf(raw)
        if leaf.kind == EventKind.CREATE_TRANSFER:
            tid = int.from_bytes(leaf.body[:16], "little")
            seen[tid] += 1
            at[leaf.index] = (tid, int(leaf.result))
    for tid, (result, index) in ledger.acked.items():
        assert seen[tid] == 1, f"acknowledged transfer {tid} is in the log {seen[tid]} times"
        assert at.get(index) == (tid, result), (
            f"transfer {tid} was acknowledged as {Result(result).name} at index {index}; the log has {at.get(index)}")
    wrongly = sorted(t for t in ledger.refused if seen[t])
    assert not wrongly, f"{len(wrongly)} transfers told 'refused' are in the log, e.g. {wrongly[:3]}"


def _check_identical(replicas: list[Replica]) -> None:
    by_size: dict[int, set[bytes]] = {}
    for r in replicas:
        by_size.setdefault(r.size, set()).add(r.body)
        Checkpoint.parse(r.body)
    for size, bodies in by_size.items():
        assert len(bodies) == 1, f"replicas signed different checkpoints at size {size}"
    first = replicas[0]
    for r in replicas[1:]:
        if r.size == first.size:
            assert r.leaves_digest == first.leaves_digest, f"{r.name} and {first.name} hold different leaves"
            assert r.accounts == first.accounts, f"{r.name} and {first.name} hold different balances"


def audit_full(target: str, all_targets: list[str]) -> None:
    """``audit verify --full`` against ``target``, trusting every replica's advertised key."""
    keys = []
    for t in all_targets:
        with LedgerClient(t, timeout_s=10, stale_reads=True) as c:
            keys.append(c.status().verifier_key)
    trust = Path(os.environ.get("TMPDIR", "/tmp")) / f"faults-trust-{os.getpid()}-{time.monotonic_ns()}.json"
    try:
        args = ["trust", "init", "--node", target, "--trust", str(trust)] + [a for k in keys for a in ("--key", k)]
        code, text = run_audit(*args)
        assert code == 0, text
        code, text = run_audit("verify", "--node", target, "--trust", str(trust), "--full", "--no-psp")
        assert code == 0, f"audit verify --full failed:\n{text}"
    finally:
        trust.unlink(missing_ok=True)


def run_audit(*args: str) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'proto'}", COLUMNS="200")
    plain = ["--insecure"] if "--node" in args else []  # the suite's nodes run --insecure
    r = subprocess.run([sys.executable, "-m", "clients.auditor", *args, *plain], capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=180)
    return r.returncode, r.stdout + r.stderr


def node_refused(log_text: str) -> str:
    """The refusal line a node printed when it would not start ('' if none)."""
    for line in log_text.splitlines():
        if "refusing to start" in line:
            return line
    return ""


def dump(obj: object) -> str:
    return json.dumps(obj, default=str)[:2000]
