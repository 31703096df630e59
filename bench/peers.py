"""Peers benchmark: sovledger (1 node and a 3-node region) against the systems people would use instead.

Run: ``python -m bench.peers [--quick] [--skip postgres,etcd] [--no-install]``. Everything runs on
this machine, on 127.0.0.1, in one run, with the same workload bench/region.py uses: 10k accounts
with a debit limit (debits must not exceed credits), funded first; uniform random transfers with
client-chosen unique ids; a hash chain over the transfers. Batch sizes 100, 1000 and 8189.

Peers (each one skipped with a message if it cannot be installed or started; the bench goes on):

* **PostgreSQL, "do it yourself" ledger.** A private instance (``initdb`` into a temp dir, run as
  the ``postgres`` user, 127.0.0.1 and a free port, ``fsync=on``, ``synchronous_commit=on``).
  Tables: ``accounts`` (debits, credits, a CHECK that limited accounts never debit more than they
  were credited) and ``transfers`` (client-chosen id UNIQUE, foreign keys to accounts, the record,
  and a BLAKE3 hash-chain column computed client-side). Best batch mode: one transaction per batch
  — binary ``COPY`` of the batch, then two set-based ``UPDATE``s of the balances aggregated over
  the batch, then ``COMMIT`` (fsync). Note this is *kinder* to PostgreSQL than the ledger's
  semantics: the limit is checked per batch (a violation aborts the whole batch), not per transfer
  in order. One writer connection (balance rows are hot; more writers would wait on row locks).
* **etcd, 3 members** (Debian's ``etcd-server``): a raw replicated log with no ledger logic. Each
  transfer is one put (key = its id, value = record ‖ chain hash), batched into one ``Txn`` per
  batch (``--max-txn-ops`` raised), sent over etcd's native gRPC API (protobuf encoded by hand, so
  no ``etcd3`` client package is needed), several batches in flight, to the leader. Batch 1 (plain
  ``Put``, many in flight) is measured too since it is etcd's usual mode.
* **sovledger** 1 node (``NodeProcess``) and 3-node region (``Cluster``), quorum-durable.

Reported: transfers (or puts)/s and p50/p99 per-batch latency, and ratios sovledger ÷ peer. The
machine is shared and noisy: compare the ratios, not the absolute numbers.
Results: a rich table and JSON under bench/results/ (``peers-*.json``).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import blake3
from rich.console import Console
from rich.table import Table

from bench.region import (
    ACCOUNTS,
    FUND_ACCOUNT,
    FUND_AMOUNT,
    Feed,
    connect,
    region_nodes,
    run_stream,
    setup_ledger,
    single_node,
    split,
    transfer_stream,
    wide_console,
    workload_description,
)
from bench.report import fmt_ms, fmt_rate, machine, percentile, ratio, write_results
from ledger.codec import TRANSFER_SIZE

# the fields a DIY ledger needs out of a 176-byte record: id, debit, credit, amount (low 64 bits)
_FIELDS = struct.Struct("<16s16s16sQ120x")
assert _FIELDS.size == TRANSFER_SIZE


class Skip(Exception):
    """A peer that cannot be installed or started: reported, never fatal."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def apt_install(packages: list[str], console: Console, allowed: bool) -> None:
    if not allowed:
        raise Skip(f"{' '.join(packages)} not installed (and --no-install given)")
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Skip(f"{' '.join(packages)} not installed and apt-get is not usable here (need root)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    with console.status(f"apt-get install {' '.join(packages)} …"):
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-q", *packages]):
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            if r.returncode:
                raise Skip(f"{' '.join(cmd)} failed: {r.stderr.strip()[-300:]}")


def _timed_batches(batches: list[bytes], time_limit_s: float, commit: Callable[[int, bytes], None]
                   ) -> dict[str, Any]:
    """Run ``commit(seq0, batch)`` for each batch in order; bounded by count and time."""
    lat: list[float] = []
    done = 0
    deadline = time.monotonic() + time_limit_s
    t0 = time.perf_counter()
    for recs in batches:
        if time.monotonic() > deadline:
            break
        s = time.perf_counter()
        commit(done, recs)
        lat.append(time.perf_counter() - s)
        done += len(recs) // TRANSFER_SIZE
    elapsed = time.perf_counter() - t0
    return {"batch": len(batches[0]) // TRANSFER_SIZE if batches else 0, "transfers": done, "seconds": elapsed,
            "tx_per_s": done / elapsed if elapsed else 0.0, "p50_ms": percentile(lat, 50) * 1000,
            "p99_ms": percentile(lat, 99) * 1000}


# -- PostgreSQL -----------------------------------------------------------------------------------


def pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    exe = shutil.which("pg_ctl")
    return Path(exe).resolve().parent if exe else None


PG_SCHEMA = """
CREATE TABLE accounts (
    id          bigint PRIMARY KEY,
    debits      bigint NOT NULL DEFAULT 0,
    credits     bigint NOT NULL DEFAULT 0,
    debit_limit boolean NOT NULL,
    CONSTRAINT debits_must_not_exceed_credits CHECK (NOT debit_limit OR debits <= credits)
);
CREATE TABLE transfers (
    seq       bigint PRIMARY KEY,                            -- log position (single writer assigns)
    id        bytea  NOT NULL UNIQUE,                        -- client-chosen 16-byte id
    debit_id  bigint NOT NULL REFERENCES accounts (id),
    credit_id bigint NOT NULL REFERENCES accounts (id),
    amount    bigint NOT NULL CHECK (amount > 0),
    record    bytea  NOT NULL,                               -- the 176-byte canonical record
    chain     bytea  NOT NULL                                -- BLAKE3(previous chain || record)
);
"""
PG_APPLY = [
    "UPDATE accounts a SET debits = a.debits + s.amt FROM (SELECT debit_id, sum(amount) AS amt FROM transfers"
    " WHERE seq BETWEEN %(lo)s AND %(hi)s GROUP BY debit_id) s WHERE a.id = s.debit_id",
    "UPDATE accounts a SET credits = a.credits + s.amt FROM (SELECT credit_id, sum(amount) AS amt FROM transfers"
    " WHERE seq BETWEEN %(lo)s AND %(hi)s GROUP BY credit_id) s WHERE a.id = s.credit_id",
]
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_ROW = struct.Struct(">h iq i16s iq iq iq i176s i32s")
_COPY_TRAILER = struct.pack(">h", -1)


class PgLedger:
    """A hash-chained transfers table with balance limits, written one transaction per batch."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.chain = bytes(32)
        self.seq = 0

    def create(self, accounts: int) -> None:
        with self.conn.cursor() as cur:
            cur.execute(PG_SCHEMA)
            with cur.copy("COPY accounts (id, debit_limit) FROM STDIN") as cp:
                for i in range(1, accounts + 1):
                    cp.write_row((i, True))
                cp.write_row((FUND_ACCOUNT, False))
        self.conn.commit()

    def encode(self, records: bytes) -> tuple[bytes, int, int]:
        """Binary COPY payload for a batch, extending the hash chain; returns (payload, first, last seq)."""
        pack = _COPY_ROW.pack
        chain = self.chain
        seq = self.seq
        lo = seq + 1
        out = [_COPY_HEADER]
        for off, (tid, dr, cr, amount) in zip(range(0, len(records), TRANSFER_SIZE), _FIELDS.iter_unpack(records),
                                              strict=True):
            rec = records[off : off + TRANSFER_SIZE]
            chain = blake3.blake3(chain + rec).digest()
            seq += 1
            out.append(pack(7, 8, seq, 16, tid, 8, int.from_bytes(dr, "little"), 8, int.from_bytes(cr, "little"),
                            8, amount, TRANSFER_SIZE, rec, 32, chain))
        out.append(_COPY_TRAILER)
        self.chain, self.seq = chain, seq
        return b"".join(out), lo, seq

    def commit_batch(self, records: bytes) -> None:
        payload, lo, hi = self.encode(records)
        with self.conn.cursor() as cur:
            with cur.copy("COPY transfers (seq, id, debit_id, credit_id, amount, record, chain) "
                          "FROM STDIN (FORMAT BINARY)") as cp:
                cp.write(payload)
            for q in PG_APPLY:
                cur.execute(q, {"lo": lo, "hi": hi})
        self.conn.commit()  # synchronous_commit=on: returns after the WAL is fsynced


@contextmanager
def postgres_instance(console: Console, install: bool) -> Iterator[str]:
    """A private PostgreSQL on 127.0.0.1:free port in a temp dir; yields a conninfo string."""
    bindir = pg_bindir()
    if bindir is None:
        apt_install(["postgresql"], console, install)
        bindir = pg_bindir()
        if bindir is None:
            raise Skip("postgresql installed but pg_ctl not found under /usr/lib/postgresql/*/bin")
    tmp = Path(tempfile.mkdtemp(prefix="sovledger-bench-pg-"))
    run_as: list[str] = []
    user = "postgres"
    if os.geteuid() == 0:
        try:
            import pwd

            pw = pwd.getpwnam("postgres")
        except KeyError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise Skip("running as root but there is no 'postgres' user to run the server as") from e
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
        runuser = shutil.which("runuser") or shutil.which("su")
        run_as = [runuser, "-u", "postgres", "--"] if runuser and runuser.endswith("runuser") else []
        if not run_as:
            shutil.rmtree(tmp, ignore_errors=True)
            raise Skip("cannot switch to the postgres user (no runuser)")
    else:
        import getpass

        user = getpass.getuser()
    data, log = tmp / "data", tmp / "pg.log"
    port = free_port()

    def run(*cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*run_as, *cmd], capture_output=True, text=True, timeout=120, cwd=tmp)

    r = run(str(bindir / "initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8", "--no-sync")
    if r.returncode:
        shutil.rmtree(tmp, ignore_errors=True)
        raise Skip(f"initdb failed: {r.stderr.strip()[-300:]}")
    opts = (f"-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={tmp} "
            "-c fsync=on -c synchronous_commit=on -c full_page_writes=on -c wal_sync_method=fdatasync "
            "-c shared_buffers=256MB -c max_wal_size=4GB -c checkpoint_timeout=15min")
    r = run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", opts, "start")
    if r.returncode:
        text = log.read_text(errors="replace")[-500:] if log.exists() else r.stderr
        shutil.rmtree(tmp, ignore_errors=True)
        raise Skip(f"pg_ctl start failed: {text.strip()}")
    try:
        yield f"host=127.0.0.1 port={port} user={user} dbname=postgres"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(tmp, ignore_errors=True)


def bench_postgres(records: bytes, plan: list[tuple[int, int]], time_limit_s: float, console: Console,
                   install: bool) -> dict[str, Any]:
    try:
        import psycopg
    except ImportError as e:
        raise Skip("psycopg is not installed (pip install 'psycopg[binary]')") from e
    with postgres_instance(console, install) as dsn, psycopg.connect(dsn) as conn:
        ver = conn.execute("SHOW server_version").fetchone()
        settings = {k: conn.execute(f"SHOW {k}").fetchone()[0]  # type: ignore[index]
                    for k in ("fsync", "synchronous_commit", "wal_sync_method", "full_page_writes")}
        led = PgLedger(conn)
        led.create(ACCOUNTS)
        fund = b"".join(_funding())
        for chunk in split(fund, 8000):
            led.commit_batch(chunk)
        feed = Feed(records)
        rows = []
        for batch, total in plan:
            with console.status(f"PostgreSQL: {total:,} transfers in transactions of {batch} …"):
                rows.append(_timed_batches(split(feed.take(total), batch), time_limit_s,
                                           lambda _seq, recs: led.commit_batch(recs)))
        # verify: the limit held and the books balance
        bad = conn.execute("SELECT count(*) FROM accounts WHERE debit_limit AND debits > credits").fetchone()
        sums = conn.execute("SELECT (sum(debits) - sum(credits))::bigint, (SELECT count(*) FROM transfers) "
                            "FROM accounts").fetchone()
    return {"version": ver[0] if ver else "?", "settings": settings, "rows": rows,
            "check": {"limit_violations": bad[0] if bad else None, "debits_minus_credits": sums[0] if sums else None,
                      "rows": sums[1] if sums else None},
            "mode": "one transaction per batch: binary COPY + 2 set-based balance UPDATEs + COMMIT (fsync)"}


def _funding() -> Iterator[bytes]:
    from bench.region import funding_records

    yield funding_records(ACCOUNTS, FUND_AMOUNT)


# -- etcd -----------------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def etcd_put(key: bytes, value: bytes) -> bytes:
    """etcdserverpb.PutRequest{key=1, value=2}."""
    return _field(1, key) + _field(2, value)


def etcd_txn(puts: list[bytes]) -> bytes:
    """etcdserverpb.TxnRequest{success=2: [RequestOp{request_put=2: PutRequest}]}."""
    return b"".join(_field(2, _field(2, p)) for p in puts)


@contextmanager
def etcd_cluster(console: Console, install: bool, members: int = 3) -> Iterator[list[str]]:
    """Three etcd members on 127.0.0.1 with temp data dirs; yields their client addresses."""
    exe = shutil.which("etcd")
    if exe is None:
        apt_install(["etcd-server"], console, install)
        exe = shutil.which("etcd")
        if exe is None:
            raise Skip("etcd-server installed but no etcd binary on PATH")
    tmp = Path(tempfile.mkdtemp(prefix="sovledger-bench-etcd-"))
    names = [f"e{i}" for i in range(1, members + 1)]
    client = {n: free_port() for n in names}
    peer = {n: free_port() for n in names}
    initial = ",".join(f"{n}=http://127.0.0.1:{peer[n]}" for n in names)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for n in names:
            cmd = [exe, "--name", n, "--data-dir", str(tmp / n),
                   "--listen-client-urls", f"http://127.0.0.1:{client[n]}",
                   "--advertise-client-urls", f"http://127.0.0.1:{client[n]}",
                   "--listen-peer-urls", f"http://127.0.0.1:{peer[n]}",
                   "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer[n]}",
                   "--initial-cluster", initial, "--initial-cluster-state", "new",
                   "--initial-cluster-token", "sovledger-bench", "--max-txn-ops", "10000",
                   "--max-request-bytes", str(8 << 20), "--quota-backend-bytes", str(8 << 30),
                   "--logger", "zap", "--log-level", "error"]
            env = dict(os.environ, ETCD_UNSUPPORTED_ARCH=os.environ.get("ETCD_UNSUPPORTED_ARCH", ""))
            log = open(tmp / f"{n}.log", "wb")  # noqa: SIM115 - handed to the child
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True))
        deadline = time.monotonic() + 30
        healthy: set[str] = set()
        while time.monotonic() < deadline and len(healthy) < members:
            for n in names:
                if n in healthy:
                    continue
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{client[n]}/health", timeout=1) as r:
                        if json.loads(r.read()).get("health") == "true":
                            healthy.add(n)
                except OSError:
                    pass
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(0.2)
        if len(healthy) < members:
            tail = (tmp / f"{names[0]}.log").read_text(errors="replace")[-400:]
            raise Skip(f"etcd cluster did not become healthy within 30 s: {tail.strip()}")
        yield [f"127.0.0.1:{client[n]}" for n in names]
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        shutil.rmtree(tmp, ignore_errors=True)


def etcd_leader(addrs: list[str]) -> str:
    """The member whose own id is the leader's (maintenance/status through the JSON gateway)."""
    for a in addrs:
        try:
            req = urllib.request.Request(f"http://{a}/v3/maintenance/status", data=b"{}", method="POST")
            with urllib.request.urlopen(req, timeout=2) as r:
                st = json.loads(r.read())
            if st.get("leader") and st.get("leader") == st.get("header", {}).get("member_id"):
                return a
        except OSError:
            continue
    return addrs[0]


def etcd_load(channel: Any, bodies: list[tuple[int, bytes]], method: str, inflight: int, time_limit_s: float
              ) -> dict[str, Any]:
    """Send pre-encoded requests with at most ``inflight`` outstanding; per-request latency."""
    call = channel.unary_unary(method)  # bytes in, bytes out: no serializers
    window = threading.Semaphore(inflight)
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    done_puts = 0
    deadline = time.monotonic() + time_limit_s

    def finished(fut: Any, n: int, started: float) -> None:
        nonlocal done_puts
        took = time.perf_counter() - started
        with lock:
            if fut.exception() is None:
                lat.append(took)
                done_puts += n
            elif len(errors) < 5:
                errors.append(str(fut.exception())[:200])
        window.release()

    t0 = time.perf_counter()
    for n, body in bodies:
        if time.monotonic() > deadline or errors:
            break
        window.acquire()
        s = time.perf_counter()
        fut = call.future(body, timeout=60)
        fut.add_done_callback(lambda f, n=n, s=s: finished(f, n, s))
    for _ in range(inflight):  # drain
        window.acquire()
    elapsed = time.perf_counter() - t0
    return {"transfers": done_puts, "seconds": elapsed, "tx_per_s": done_puts / elapsed if elapsed else 0.0,
            "inflight": inflight, "p50_ms": percentile(lat, 50) * 1000, "p99_ms": percentile(lat, 99) * 1000,
            "errors": errors}


def bench_etcd(records: bytes, plan: list[tuple[int, int]], time_limit_s: float, console: Console,
               install: bool, single_puts: int) -> dict[str, Any]:
    import grpc

    with etcd_cluster(console, install) as addrs:
        leader = etcd_leader(addrs)
        opts = [("grpc.max_send_message_length", 16 << 20), ("grpc.max_receive_message_length", 16 << 20)]
        with grpc.insecure_channel(leader, options=opts) as ch:
            grpc.channel_ready_future(ch).result(timeout=10)
            feed = Feed(records)
            chain = bytes(32)

            def puts(recs: bytes) -> list[bytes]:
                nonlocal chain
                out = []
                for off in range(0, len(recs), TRANSFER_SIZE):
                    rec = recs[off : off + TRANSFER_SIZE]
                    chain = blake3.blake3(chain + rec).digest()
                    out.append(etcd_put(b"t/" + rec[:16], rec + chain))
                return out

            rows = []
            if single_puts:
                with console.status(f"etcd: {single_puts:,} single puts, 256 in flight …"):
                    bodies = [(1, p) for p in puts(feed.take(single_puts))]
                    rows.append(dict(etcd_load(ch, bodies, "/etcdserverpb.KV/Put", 256, time_limit_s), batch=1,
                                     mode="Put"))
            for batch, total in plan:
                with console.status(f"etcd: {total:,} puts in txns of {batch} …"):
                    bodies = [(len(b) // TRANSFER_SIZE, etcd_txn(puts(b))) for b in split(feed.take(total), batch)]
                    inflight = 16 if batch <= 1000 else 4
                    rows.append(dict(etcd_load(ch, bodies, "/etcdserverpb.KV/Txn", inflight, time_limit_s),
                                     batch=batch, mode="Txn"))
    version = subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return {"version": version, "leader": leader, "rows": rows,
            "mode": "one Txn of puts per batch over native gRPC (hand-encoded protobuf), to the leader; "
                    "requests encoded before timing; chain hash computed client-side"}


# -- sovledger ------------------------------------------------------------------------------------


def bench_sovledger(records: bytes, plan: list[tuple[int, int]], time_limit_s: float, console: Console,
                    region: bool) -> dict[str, Any]:
    inflight = {100: 32, 1000: 8}
    label = "sovledger 3-node region" if region else "sovledger 1 node"
    with tempfile.TemporaryDirectory(prefix="sovledger-bench-peers-") as tmp:
        ctx = region_nodes(Path(tmp)) if region else single_node(Path(tmp))
        with ctx as target, connect(target) as client:
            setup_ledger(client)
            feed = Feed(records)
            rows = []
            for batch, total in plan:
                with console.status(f"{label}: {total:,} transfers in batches of {batch} …"):
                    rows.append(run_stream(client, split(feed.take(total), batch), inflight.get(batch, 4),
                                           time_limit_s))
    return {"rows": rows, "mode": "gRPC Submit stream, quorum-durable ack" if region else "gRPC Submit stream, "
            "durable ack"}


# -- main -----------------------------------------------------------------------------------------

SYSTEMS = ("sovledger-1", "sovledger-3", "postgres", "etcd")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small counts (smoke run)")
    ap.add_argument("--scale", type=float, default=None, help="multiply transfer counts (default 1, quick 0.1)")
    ap.add_argument("--time-limit", type=float, default=40.0, help="seconds per step at most")
    ap.add_argument("--skip", default="", help=f"comma-separated systems to skip: {','.join(SYSTEMS)}")
    ap.add_argument("--no-install", action="store_true", help="never apt-get install a missing peer")
    ap.add_argument("--results-dir", default=None, help="where to write JSON (default bench/results)")
    args = ap.parse_args(argv)
    scale = args.scale if args.scale is not None else (0.1 if args.quick else 1.0)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(SYSTEMS)
    if unknown:
        ap.error(f"unknown system(s) in --skip: {', '.join(sorted(unknown))}")
    console = wide_console()
    plan = [(100, max(200, int(50_000 * scale))), (1000, max(2_000, int(150_000 * scale))),
            (8189, max(16_378, int(300_000 * scale)))]
    single_puts = max(200, int(20_000 * scale))
    with console.status("generating transfers …"):
        records = transfer_stream(sum(t for _, t in plan) + single_puts, seed=21)
    out: dict[str, Any] = {"machine": machine(), "workload": workload_description(), "plan": plan, "systems": {}}
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "sovledger-1": lambda: bench_sovledger(records, plan, args.time_limit, console, region=False),
        "sovledger-3": lambda: bench_sovledger(records, plan, args.time_limit, console, region=True),
        "postgres": lambda: bench_postgres(records, plan, args.time_limit, console, not args.no_install),
        "etcd": lambda: bench_etcd(records, plan, args.time_limit, console, not args.no_install, single_puts),
    }
    for name in SYSTEMS:
        if name in skip:
            out["systems"][name] = {"skipped": "--skip"}
            continue
        try:
            out["systems"][name] = runners[name]()
        except Skip as e:
            console.print(f"[yellow]{name} skipped: {e}[/yellow]")
            out["systems"][name] = {"skipped": str(e)}
        except Exception as e:  # a peer failing must not lose the others' results
            console.print(f"[red]{name} failed: {type(e).__name__}: {e}[/red]")
            out["systems"][name] = {"skipped": f"failed: {type(e).__name__}: {e}"}
    base = _row(out, "sovledger-1", 8189)
    out["baseline_tx_per_s"] = base["tx_per_s"] if base else None
    out["ratios"] = ratios(out)
    console.print(render(out))
    path = write_results("peers", out, args.results_dir)
    console.print(f"wrote {path}")
    return 0


def _row(out: dict[str, Any], system: str, batch: int) -> dict[str, Any] | None:
    res = out["systems"].get(system, {})
    for r in res.get("rows", []):
        if r["batch"] == batch:
            return dict(r)
    return None


def ratios(out: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per batch size: sovledger 1 node and region ÷ each peer (transfers/s)."""
    res: dict[str, dict[str, float | None]] = {}
    for batch, _ in out["plan"]:
        row: dict[str, float | None] = {}
        for sov in ("sovledger-1", "sovledger-3"):
            for peer in ("postgres", "etcd"):
                a, b = _row(out, sov, batch), _row(out, peer, batch)
                row[f"{sov}/{peer}"] = a["tx_per_s"] / b["tx_per_s"] if a and b and b["tx_per_s"] else None
        res[str(batch)] = row
    return res


def render(out: dict[str, Any]) -> Table:
    names = {"sovledger-1": "sovledger 1 node", "sovledger-3": "sovledger 3-node region",
             "postgres": "PostgreSQL DIY (1 node)", "etcd": "etcd 3 members (raw puts)"}
    table = Table(title="sovledger vs peers — same workload, same run, same machine (transfers or puts per second)")
    table.add_column("batch", justify="right")
    for s in SYSTEMS:
        table.add_column(f"{names[s]}\ntx/s (p99 ms)", justify="right")
    for col in ("1 node ÷ PG", "region ÷ PG", "region ÷ etcd"):
        table.add_column(col, justify="right")
    batches = sorted({r["batch"] for res in out["systems"].values() for r in res.get("rows", [])})
    for b in batches:
        cells = []
        for s in SYSTEMS:
            r = _row(out, s, b)
            cells.append(f"{fmt_rate(r['tx_per_s'])} ({fmt_ms(r['p99_ms'])})" if r else "–")
        s1, s3, pg, et = (_row(out, s, b) for s in SYSTEMS)

        def rt(a: dict[str, Any] | None, c: dict[str, Any] | None) -> str:
            return ratio(a["tx_per_s"] if a else None, c["tx_per_s"] if c else None)

        table.add_row(str(b), *cells, rt(s1, pg), rt(s3, pg), rt(s3, et))
    notes = [f"{s}: {res['skipped']}" for s, res in out["systems"].items() if res.get("skipped")]
    if notes:
        table.caption = "skipped — " + "; ".join(notes)
    return table


if __name__ == "__main__":
    sys.exit(main())
