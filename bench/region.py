"""Region benchmark: a 3-node Raft region (quorum-durable) beside a single node, in the same run.

Run: ``python -m bench.region [--quick]``. Every process — three region nodes, the single node and
the load client — shares this machine's cores, all on 127.0.0.1.

Workload (the one bench/peers.py also uses): 10k accounts with the debit limit
(``DEBITS_MUST_NOT_EXCEED_CREDITS``), each funded first from one unlimited funding account; then
uniform random transfers between them (micro-payment amounts, client-chosen unique ids). The node
hash-chains every event. The very same transfer bytes are sent to both setups.

Measured per setup and batch size (100, 1000, 8189; bounded in count and time): transfers/s from
first send to last acknowledgement, and p50/p99 acknowledgement latency per batch (send on the wire
→ durable ack: fsynced on a quorum for the region). Then an open-loop, rate-limited run at about
half the region's batch-8189 rate, on both setups at the same rate, for latency below saturation.
Speeds are reported as ratios (region ÷ single node) because the machine is shared and noisy.

Results: a rich table, and JSON under bench/results/ (``region-*.json``).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.report import ROOT, fmt_ms, fmt_rate, machine, percentile, ratio, write_results
from clients.client import LedgerClient
from clients.workload import LEDGER_USD, TRANSFER_CODE, TransferGenerator, account_records
from ledger.codec import ACCOUNT_SIZE, TRANSFER_SIZE, TRANSFER_STRUCT
from ledger.types import AccountFlags, EventKind, Result
from sovledger_pb import ledger_pb2 as pb

ACCOUNTS = 10_000
FUND_ACCOUNT = ACCOUNTS + 1  # the one account without the debit limit
FUND_TRANSFER_ID0 = 1 << 63  # funding transfer ids; workload ids start at 1 << 64
FUND_AMOUNT = 10**9  # minor units per account: far above what any run debits
BATCHES = (100, 1000, 8189)
# Raft election timeout of the bench region, in 50 ms ticks (default 10): on a shared 2-core machine a
# node process can be descheduled for longer than 0.5 s, and a leader change in the middle of a step
# would measure the failover, not the ledger. Steady-state throughput does not depend on it.
BENCH_ELECTION_TICKS = 30
_Z16, _Z32 = bytes(16), bytes(32)


# -- workload -------------------------------------------------------------------------------------


def funding_records(accounts: int = ACCOUNTS, amount: int = FUND_AMOUNT) -> bytes:
    """One transfer per limited account from the funding account, so payers can pay."""
    pack = TRANSFER_STRUCT.pack
    src = FUND_ACCOUNT.to_bytes(16, "little")
    return b"".join(
        pack((FUND_TRANSFER_ID0 + i).to_bytes(16, "little"), src, (1 + i).to_bytes(16, "little"), amount, 0,
             _Z16, _Z16, _Z32, _Z32, LEDGER_USD, 1, 0, TRANSFER_CODE, 0)
        for i in range(accounts))


def transfer_stream(total: int, seed: int = 7, accounts: int = ACCOUNTS, first_id: int = 1 << 64) -> bytes:
    """``total`` uniform random transfer records (176 bytes each); ids ``first_id``, ``first_id + 1``, …"""
    gen = TransferGenerator(accounts, seed=seed, first_transfer_id=first_id)
    out = []
    for off in range(0, total, 100_000):
        recs, _ = gen.records(min(100_000, total - off))
        out.append(recs)
    return b"".join(out)


def split(records: bytes, batch: int) -> list[bytes]:
    step = batch * TRANSFER_SIZE
    return [records[i : i + step] for i in range(0, len(records), step)]


class Feed:
    """Hands out consecutive, never re-used slices of one pre-generated transfer stream."""

    def __init__(self, records: bytes) -> None:
        self.records = records
        self.pos = 0

    def take(self, n: int) -> bytes:
        n = min(n, (len(self.records) - self.pos) // TRANSFER_SIZE)
        out = self.records[self.pos : self.pos + n * TRANSFER_SIZE]
        self.pos += n * TRANSFER_SIZE
        return out


def setup_ledger(client: LedgerClient, accounts: int = ACCOUNTS) -> None:
    """Create the limited accounts and the funding account, then fund every limited account."""
    limited = account_records(accounts, first_id=1, flags=int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS))
    recs = limited + account_records(1, first_id=FUND_ACCOUNT)
    for off in range(0, len(recs), 8000 * ACCOUNT_SIZE):
        _expect_ok(client.submit_one(EventKind.CREATE_ACCOUNT, recs[off : off + 8000 * ACCOUNT_SIZE]).results)
    fund = funding_records(accounts)
    for chunk in split(fund, 8000):
        _expect_ok(client.submit_one(EventKind.CREATE_TRANSFER, chunk).results)


def _expect_ok(results: list[int]) -> None:
    bad = Counter(Result(r).name for r in results if r != Result.OK)
    if bad:
        raise RuntimeError(f"setup failed: {dict(bad)}")


# -- load -----------------------------------------------------------------------------------------


def run_stream(client: LedgerClient, batches: list[bytes], inflight: int, time_limit_s: float,
               rate: float | None = None, on_ack: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Stream ``batches`` of transfers on one Submit call with at most ``inflight`` unanswered.

    Bounded by count (the list) and by ``time_limit_s``. With ``rate`` (transfers/s) sends are
    paced open-loop; ``on_ack(n)`` is called per acknowledged batch (progress). Latency per batch:
    from handing the message to gRPC (after the window admitted it) to its acknowledgement.
    """
    window = threading.Semaphore(inflight)
    done = threading.Event()
    sent_at: deque[float] = deque()
    ids = itertools.count(1)
    deadline = time.monotonic() + time_limit_s
    per_tx = TRANSFER_SIZE

    def requests() -> Iterator[pb.SubmitRequest]:
        start = time.perf_counter()
        queued = 0
        for recs in batches:
            if rate:
                delay = start + queued / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            while not window.acquire(timeout=0.5):
                if done.is_set():
                    return
            if time.monotonic() > deadline or done.is_set():
                return
            queued += len(recs) // per_tx
            sent_at.append(time.perf_counter())
            yield pb.SubmitRequest(batch_id=next(ids), kind=pb.CREATE_TRANSFERS, records=recs)

    latencies: list[float] = []
    codes: Counter[int] = Counter()
    refused: Counter[str] = Counter()
    acked = 0
    t0 = time.perf_counter()
    call = client.ledger.Submit(requests(), timeout=time_limit_s + 120)
    try:
        for resp in call:
            now = time.perf_counter()
            latencies.append(now - sent_at.popleft())
            window.release()
            if resp.status.code:
                refused[resp.status.message[:60]] += 1
            else:
                acked += len(resp.results)
                codes.update(resp.results)
                if on_ack:
                    on_ack(len(resp.results))
    finally:
        done.set()
        call.cancel()
    elapsed = time.perf_counter() - t0
    batch = len(batches[0]) // per_tx if batches else 0
    return {"batch": batch, "inflight": inflight, "target_rate": rate, "transfers": acked,
            "ok": codes.get(int(Result.OK), 0), "seconds": elapsed,
            "tx_per_s": acked / elapsed if elapsed else 0.0,
            "p50_ms": percentile(latencies, 50) * 1000, "p90_ms": percentile(latencies, 90) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000, "max_ms": max(latencies, default=0.0) * 1000,
            "results": {Result(c).name.lower(): n for c, n in codes.items()},
            "refused_batches": dict(refused)}


# -- setups ---------------------------------------------------------------------------------------


@contextmanager
def single_node(tmp: Path, extra: list[str] | None = None, pids: dict[str, int] | None = None) -> Iterator[str]:
    """A real single-node process (durable LMDB) on 127.0.0.1; yields its target."""
    sys.path.insert(0, str(ROOT))
    from tests.integration.nodeproc import NodeProcess

    node = NodeProcess(tmp / "single", extra=extra).start()
    try:
        if pids is not None and node.proc is not None:
            pids["node"] = node.proc.pid
        yield node.target
    finally:
        node.stop()


@contextmanager
def region_nodes(tmp: Path, count: int = 3, pids: dict[str, int] | None = None) -> Iterator[str]:
    """A local Raft region of real processes (sovledger/cluster.py); yields the leader's target.
    ``pids`` (if given) is filled with ``leader``/``follower-N`` → pid."""
    from sovledger.cluster import Cluster

    cluster = Cluster(tmp / "region")
    config = tmp / "region-node.toml"
    config.write_text(f"election_ticks = {BENCH_ELECTION_TICKS}\n")
    cluster.create(count, "bench", ["--config", str(config)])
    for n in cluster.nodes:
        cluster.start(n)
    try:
        leader, _ = cluster.wait_leader(60)
        if pids is not None:
            followers = (n for n in cluster.nodes if n is not leader)
            pids.update({"leader": leader.pid, **{f"follower-{i}": n.pid for i, n in enumerate(followers, 1)}})
        yield leader.target
    finally:
        cluster.stop_all()


def wide_console() -> Console:
    c = Console()
    return c if c.is_terminal else Console(width=160)


def connect(target: str) -> LedgerClient:
    client = LedgerClient(target, timeout_s=60)
    client.wait_ready(30)
    return client


def plan_for(scale: float) -> list[tuple[int, int, int]]:
    """(batch, transfers, in-flight batches) per step."""
    return [(100, max(200, int(100_000 * scale)), 32), (1000, max(2_000, int(300_000 * scale)), 8),
            (8189, max(16_378, int(600_000 * scale)), 4)]


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process (all its threads) from /proc; 0 if unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    snap = {name: cpu_seconds(pid) for name, pid in pids.items()}
    t = os.times()  # with the reaped child processes: bench.streams' client processes
    snap["client"] = t.user + t.system + t.children_user + t.children_system
    return snap


def cpu_report(before: dict[str, float], after: dict[str, float], row: dict[str, Any]) -> dict[str, Any]:
    """CPU used per process during a step: cores busy on average and µs per transfer."""
    secs, n = row["seconds"] or 1e-9, row["transfers"] or 1
    used = {k: after[k] - before.get(k, 0.0) for k in after}
    return {"cores": {k: round(v / secs, 2) for k, v in used.items()},
            "us_per_transfer": {k: round(v / n * 1e6, 1) for k, v in used.items()},
            "total_cores": round(sum(used.values()) / secs, 2)}


def rss_snapshot(pids: dict[str, int]) -> dict[str, dict[str, float]]:
    """Resident memory per node process in MiB (/proc/PID/status): total, anonymous, file-backed."""
    from node.memory import proc_memory

    out = {}
    for name, pid in pids.items():
        m = proc_memory(pid)
        if m:
            out[name] = {"rss": round(m.get("VmRSS", 0) / 2**20, 1), "anon": round(m.get("RssAnon", 0) / 2**20, 1),
                         "file": round(m.get("RssFile", 0) / 2**20, 1)}
    return out


def streams_step(target: str, scale: float, time_limit_s: float, pids: dict[str, int], seed: int) -> dict[str, Any]:
    """64 concurrent streams x one payment per request (group commit), bounded in count and time."""
    from bench.streams import STREAMS, WINDOW, run_streams

    recs = transfer_stream(max(2_000, int(100_000 * scale)), seed=seed, first_id=(1 << 64) + (1 << 41) + (seed << 36))
    before = cpu_snapshot(pids)
    row = run_streams(target, recs, STREAMS, WINDOW, min(time_limit_s, 30.0))
    row["cpu"] = cpu_report(before, cpu_snapshot(pids), row)
    row["rss_mib"] = rss_snapshot(pids)
    return row


def run_plan(client: LedgerClient, records: bytes, plan: list[tuple[int, int, int]], time_limit_s: float,
             console: Console, label: str, pids: dict[str, int] | None = None) -> list[dict[str, Any]]:
    feed = Feed(records)
    rows = []
    for batch, total, inflight in plan:
        with console.status(f"{label}: {total:,} transfers in batches of {batch} …"):
            before = cpu_snapshot(pids or {})
            row = run_stream(client, split(feed.take(total), batch), inflight, time_limit_s)
            row["cpu"] = cpu_report(before, cpu_snapshot(pids or {}), row)
            row["rss_mib"] = rss_snapshot(pids or {})
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small counts (smoke run)")
    ap.add_argument("--scale", type=float, default=None, help="multiply transfer counts (default 1, quick 0.1)")
    ap.add_argument("--time-limit", type=float, default=40.0, help="seconds per step at most")
    ap.add_argument("--half-rate-seconds", type=float, default=None, help="length of each rate-limited run")
    ap.add_argument("--results-dir", default=None, help="where to write JSON (default bench/results)")
    args = ap.parse_args(argv)
    scale = args.scale if args.scale is not None else (0.1 if args.quick else 1.0)
    half_s = args.half_rate_seconds if args.half_rate_seconds is not None else (3.0 if args.quick else 15.0)
    console = wide_console()
    plan = plan_for(scale)
    with console.status("generating transfers …"):
        records = transfer_stream(sum(t for _, t, _ in plan), seed=7)
    out: dict[str, Any] = {"machine": machine(), "workload": workload_description(), "plan": plan,
                           "single": [], "region": [], "half_rate": [], "streams": []}
    with tempfile.TemporaryDirectory(prefix="sovledger-bench-region-") as tmp_s:
        tmp = Path(tmp_s)
        pids: dict[str, int] = {}
        with region_nodes(tmp, pids=pids) as target, connect(target) as client:
            setup_ledger(client)
            out["region"] = run_plan(client, records, plan, args.time_limit, console, "3-node region", pids)
            half = max(1000.0, out["region"][-1]["tx_per_s"] / 2)
            out["half_rate_target"] = half
            hr = transfer_stream(int(half * half_s * 2) + 20_000, seed=8, first_id=(1 << 64) + (1 << 40))
            feed = Feed(hr)
            for batch in (100, 1000):
                with console.status(f"3-node region: {half:,.0f} tx/s for {half_s:.0f}s in batches of {batch} …"):
                    r = run_stream(client, split(feed.take(int(half * half_s) + batch), batch), 64,
                                   half_s + 30, rate=half)
                out["half_rate"].append(dict(r, setup="region"))
            with console.status("3-node region: 64 streams x 1 payment per request …"):
                out["streams"].append(dict(streams_step(target, scale, args.time_limit, pids, 9), setup="region"))
        pids = {}
        with single_node(tmp, pids=pids) as target, connect(target) as client:
            setup_ledger(client)
            out["single"] = run_plan(client, records, plan, args.time_limit, console, "single node", pids)
            feed = Feed(hr)
            for batch in (100, 1000):
                with console.status(f"single node: {half:,.0f} tx/s for {half_s:.0f}s in batches of {batch} …"):
                    r = run_stream(client, split(feed.take(int(half * half_s) + batch), batch), 64,
                                   half_s + 30, rate=half)
                out["half_rate"].append(dict(r, setup="single"))
            with console.status("single node: 64 streams x 1 payment per request …"):
                out["streams"].append(dict(streams_step(target, scale, args.time_limit, pids, 10), setup="single"))
    out["ratios"] = {str(s["batch"]): r["tx_per_s"] / s["tx_per_s"] if s["tx_per_s"] else None
                     for s, r in zip(out["single"], out["region"], strict=True)}
    out["targets"] = {"region_tx_per_s_at_8189": {"target": 60_000, "reached": out["region"][-1]["tx_per_s"]},
                      "region_p99_ms_at_half_rate": {
                          "target": 50.0,
                          "reached": {str(h["batch"]): h["p99_ms"] for h in out["half_rate"]
                                      if h["setup"] == "region"}}}
    console.print(render(out))
    path = write_results("region", out, args.results_dir)
    console.print(f"wrote {path}")
    return 0


def workload_description() -> dict[str, Any]:
    return {"accounts": ACCOUNTS, "account_flags": "debits_must_not_exceed_credits",
            "funding_per_account": FUND_AMOUNT, "transfers": "uniform random payer/payee, micro-payment amounts",
            "ids": "client-chosen, unique", "record_bytes": TRANSFER_SIZE, "hash_chain": "BLAKE3 chain on the node"}


def render(out: dict[str, Any]) -> Table:
    table = Table(title="3-node region (quorum fsync) vs single node — same run, same transfers, same machine")
    for col in ("batch", "1 node tx/s", "1 node p50 / p99 ms", "region tx/s", "region p50 / p99 ms",
                "region ÷ 1 node"):
        table.add_column(col, justify="right")
    for s, r in zip(out["single"], out["region"], strict=True):
        table.add_row(str(s["batch"]), fmt_rate(s["tx_per_s"]), f"{fmt_ms(s['p50_ms'])} / {fmt_ms(s['p99_ms'])}",
                      fmt_rate(r["tx_per_s"]), f"{fmt_ms(r['p50_ms'])} / {fmt_ms(r['p99_ms'])}",
                      ratio(r["tx_per_s"], s["tx_per_s"]))
    by = {(h["setup"], h["batch"]): h for h in out["half_rate"]}
    for batch in (100, 1000):
        s, r = by.get(("single", batch)), by.get(("region", batch))
        if not s or not r:
            continue
        table.add_row(f"{batch} @ {out['half_rate_target']:,.0f}/s", fmt_rate(s["tx_per_s"]),
                      f"{fmt_ms(s['p50_ms'])} / {fmt_ms(s['p99_ms'])}", fmt_rate(r["tx_per_s"]),
                      f"{fmt_ms(r['p50_ms'])} / {fmt_ms(r['p99_ms'])}",
                      f"p99 {ratio(r['p99_ms'], s['p99_ms'])}")
    streams = {h["setup"]: h for h in out.get("streams", [])}
    if streams:
        s, r = streams.get("single"), streams.get("region")
        table.add_row("64 streams × 1", fmt_rate(s["tx_per_s"]) if s else "–",
                      f"{fmt_ms(s['p50_ms'])} / {fmt_ms(s['p99_ms'])}" if s else "–",
                      fmt_rate(r["tx_per_s"]) if r else "–",
                      f"{fmt_ms(r['p50_ms'])} / {fmt_ms(r['p99_ms'])}" if r else "–",
                      ratio(r["tx_per_s"], s["tx_per_s"]) if s and r else "–")
    cpu = []
    for key, label in (("single", "1 node"), ("region", "region")):
        r = out[key][-1] if out[key] else None
        if r and r.get("cpu"):
            cpu.append(f"{label} @ {r['batch']}: cores busy " + ", ".join(
                f"{k} {v:.2f}" for k, v in r["cpu"]["cores"].items()) + f" (total {r['cpu']['total_cores']:.2f})")
    table.caption = "CPU — " + "; ".join(cpu) if cpu else None
    bad = {k: v for rows in (out["single"], out["region"], out["half_rate"], out.get("streams", [])) for row in rows
           for k, v in row["results"].items() if k != "ok"}
    if bad:
        table.caption = f"{table.caption or ''}\nnon-ok results: {bad}"
    return table


if __name__ == "__main__":
    sys.exit(main())
