"""``sovledger psp load``: realistic PSP micro-payment load through the streaming SDK.

Creates the accounts if needed, then streams rate-limited micro-payments (amounts from
clients/workload.py, uniform random accounts, a mix of PSP ids) for a fixed duration through one
SDK session (batching, window, retries, failover), with a live progress display and a final table:
sent, acknowledged per result code, tx/s, p50/p99 acknowledgement latency, and the load generator's
own CPU time per transfer (all its threads, SDK included).

By default payments go the SDK's bulk path (columns → packed records → ``Session.send_records``,
outcome arrays back); ``--api objects`` sends one ``Transfer`` object at a time (``Session.send``).

    sovledger psp load --target 127.0.0.1:7100 --rate 20000 --duration 10 --accounts 10000
    python -m clients.psp_load load --target 127.0.0.1:7101,127.0.0.1:7102 --rate 5000 --duration 5 --sign --json
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import sys
import threading
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clients.connect import ClientTls, TlsConfigError, add_tls_flags, tls_from_args
from clients.ids import new_id
from clients.psp.bulk import BulkOutcomes
from clients.psp.outcomes import NO_RESULT
from clients.sdk import LedgerSDK, SdkConfig, Session
from clients.sdk_errors import SdkError
from clients.sdk_types import TransferOutcome
from clients.targets import default_targets
from clients.workload import ACCOUNT_CODE, LEDGER_USD, TRANSFER_CODE, ColumnarPayments, micro_amount
from ledger.note import Signer
from ledger.ownership import account_id_for
from ledger.types import BATCH_ITEMS_MAX, Account, Result, Transfer

DEFAULT_TARGET = "127.0.0.1:7100"
# `sovledger cluster up` writes a PSP signer key here and registers its verifier key on every node
CLUSTER_PSP_KEY = Path(".sovledger/cluster/psp.key")


@dataclass
class LoadStats:
    started: float = field(default_factory=time.monotonic)
    sent: int = 0
    acked: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    results: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    latency_weights: list[int] = field(default_factory=list)  # payments per latency sample
    lock: threading.Lock = field(default_factory=threading.Lock)
    finished: float = 0.0
    cpu_started: float = field(default_factory=time.process_time)
    cpu_s: float = 0.0

    def on_outcome(self, sent_at: float, fut: Future[TransferOutcome]) -> None:
        latency = time.monotonic() - sent_at
        exc = fut.exception()
        with self.lock:
            self.acked += 1
            self.latencies_s.append(latency)
            self.latency_weights.append(1)
            if exc is not None:
                self.errors[type(exc).__name__] += 1
            else:
                self.results[fut.result().result.name.lower()] += 1

    def on_bulk(self, sent_at: float, fut: Future[BulkOutcomes]) -> None:
        latency = time.monotonic() - sent_at
        out = fut.result()
        codes, counts = np.unique(out.results, return_counts=True)
        with self.lock:
            self.acked += len(out)
            self.latencies_s.append(latency)
            self.latency_weights.append(len(out))
            for code, k in zip(codes.tolist(), counts.tolist(), strict=True):
                if code != NO_RESULT:
                    self.results[Result(code).name.lower()] += k
            for rows, exc in out.errors:
                self.errors[type(exc).__name__] += len(rows)

    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def summary(self) -> dict[str, Any]:
        lat = np.sort(np.repeat(np.array(self.latencies_s), np.array(self.latency_weights, dtype=np.int64)))

        def pct(p: float) -> float:
            return round(float(lat[min(len(lat) - 1, int(p * len(lat)))]) * 1000, 2) if len(lat) else 0.0

        elapsed = self.elapsed()
        return {
            "sent": self.sent, "acked": self.acked, "results": dict(self.results), "errors": dict(self.errors),
            "seconds": round(elapsed, 3), "tx_per_s": round(self.acked / elapsed, 1) if elapsed else 0.0,
            "latency_ms": {"p50": pct(0.50), "p99": pct(0.99), "max": pct(1.0)},
            "client_cpu_s": round(self.cpu_s, 3),
            "client_cpu_us_per_transfer": round(self.cpu_s / self.acked * 1e6, 2) if self.acked else None,
        }


def _progress_table(stats: LoadStats, rate: float, duration: float) -> Any:
    from rich.table import Table

    elapsed = stats.elapsed()
    t = Table(title=f"psp load — target {rate:,.0f} tx/s for {duration:g} s", show_header=True)
    for col in ("elapsed", "sent", "acked", "in flight", "tx/s (acked)", "errors"):
        t.add_column(col, justify="right")
    t.add_row(f"{elapsed:5.1f} s", f"{stats.sent:,}", f"{stats.acked:,}", f"{stats.sent - stats.acked:,}",
              f"{stats.acked / elapsed:,.0f}" if elapsed else "-", f"{sum(stats.errors.values()):,}")
    return t


def _final_table(summary: dict[str, Any]) -> Any:
    from rich.table import Table

    t = Table(title="psp load — summary")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("sent", f"{summary['sent']:,}")
    t.add_row("acked", f"{summary['acked']:,}")
    for name, n in sorted(summary["results"].items()):
        t.add_row(f"  result {name}", f"{n:,}")
    for name, n in sorted(summary["errors"].items()):
        t.add_row(f"  error {name}", f"{n:,}")
    t.add_row("duration", f"{summary['seconds']} s")
    t.add_row("tx/s (acked)", f"{summary['tx_per_s']:,.0f}")
    t.add_row("ack latency p50", f"{summary['latency_ms']['p50']} ms")
    t.add_row("ack latency p99", f"{summary['latency_ms']['p99']} ms")
    t.add_row("client CPU per transfer", f"{summary['client_cpu_us_per_transfer']} µs")
    return t


def _signer(sign: bool, key_file: str | None) -> Signer | None:
    if sign and not key_file and CLUSTER_PSP_KEY.exists():
        key_file = str(CLUSTER_PSP_KEY)
    if key_file:
        return Signer.parse(Path(key_file).read_text().strip())
    if not sign:
        return None
    signer = Signer.generate("psp-load")
    print(f"psp load: signing with an ephemeral key; nodes accept it only if they list its verifier key "
          f"{signer.verifier.to_string()} in psp_verifier_keys (--psp-keys)", file=sys.stderr)
    return signer


@dataclass
class _Pacer:
    """How many payments are due now at ``rate`` (the load loop is bounded in time by ``end``)."""

    rate: float
    duration: float
    started: float = field(default_factory=time.monotonic)

    @property
    def end(self) -> float:
        return self.started + self.duration

    def due(self, sent: int, now: float) -> int:
        return int((now - self.started) * self.rate) - sent


class _ObjectSender:
    """``--api objects``: one ``Transfer`` per payment through ``Session.send``."""

    def __init__(self, accounts: int, first_account_id: int, psps: int, seed: int | None, own: int | None) -> None:
        self.rng = random.Random(seed)
        self.accounts, self.first, self.psps, self.own = accounts, first_account_id, psps, own

    def send(self, s: Session, n: int, stats: LoadStats) -> None:
        rng = self.rng
        for _ in range(n):
            dr = rng.randrange(self.accounts)
            cr = rng.randrange(self.accounts - 1)
            cr = cr + 1 if cr >= dr else cr
            t = Transfer(id=new_id(), debit_account_id=self.first + dr, credit_account_id=self.first + cr,
                         amount=micro_amount(rng), ledger=LEDGER_USD, code=TRANSFER_CODE,
                         psp_id=self.own if self.own is not None else rng.randint(1, self.psps))
            s.send(t, callback=functools.partial(stats.on_outcome, time.monotonic()))
            stats.sent += 1


class _BulkSender:
    """The default: columns → packed records → ``Session.send_records`` (no object per payment)."""

    def __init__(self, accounts: int, first_account_id: int, psps: int, seed: int | None, own: int | None) -> None:
        self.gen = ColumnarPayments(accounts, first_account_id, psps, seed, psp_id=own)

    def send(self, s: Session, n: int, stats: LoadStats) -> None:
        fut = s.send_records(self.gen.records(n))
        fut.add_done_callback(functools.partial(stats.on_bulk, time.monotonic()))
        stats.sent += n


def _stream(s: Session, sender: _ObjectSender | _BulkSender, pacer: _Pacer, chunk: int, stats: LoadStats,
            redraw: Any) -> None:
    last_draw = 0.0
    while (now := time.monotonic()) < pacer.end:
        due = pacer.due(stats.sent, now)
        if due <= 0:
            time.sleep(min(0.001, pacer.end - now))
            continue
        sender.send(s, min(due, chunk), stats)
        if redraw is not None and now - last_draw > 0.25:
            redraw()
            last_draw = now
    s.flush()


def run_load(targets: list[str], rate: float, duration: float, accounts: int, *, batch: int = BATCH_ITEMS_MAX,
             sign: bool = False, key_file: str | None = None, psps: int = 4, journal: str | None = None,
             first_account_id: int = 1, seed: int | None = None, live: bool = True, api: str = "bulk",
             tls: ClientTls | None = None, sign_group: int = 0) -> dict[str, Any]:
    """With ``tls`` the load speaks as the certificate's PSP: its psp_id on every transfer and
    accounts it owns (ledger/ownership.py: the psp_id in the account id's top 32 bits)."""
    signer = _signer(sign, key_file)
    own = tls.psp_id() if tls is not None else None
    first_account_id = first_account_id if own is None else account_id_for(own, first_account_id)
    cfg = SdkConfig(batch_size_max=batch, batch_delay_s=0.005,
                    window_items=max(4 * batch, int(rate // 2) or 1), window_batches=8, sign_group=sign_group)
    stats = LoadStats()
    report: dict[str, Any] = {"targets": targets, "rate": rate, "duration_s": duration, "accounts": accounts,
                              "batch": batch, "signed": signer is not None, "psps": psps, "api": api,
                              "sign_group": sign_group if signer is not None else 0}
    if signer is not None:
        report["psp_verifier_key"] = signer.verifier.to_string()
    sender_cls = _BulkSender if api == "bulk" else _ObjectSender
    sender = sender_cls(accounts, first_account_id, psps, seed, own)
    with LedgerSDK(targets, signer=signer, journal=journal, config=cfg, tls=tls) as sdk:
        if journal:
            report["recovered"] = len(sdk.recover())
        ids = list(range(first_account_id, first_account_id + accounts))
        for i in range(0, len(ids), BATCH_ITEMS_MAX):
            sdk.ensure_accounts([Account(id=a, ledger=LEDGER_USD, code=ACCOUNT_CODE)
                                 for a in ids[i : i + BATCH_ITEMS_MAX]])
        live_ctx: Any = None
        if live:
            from rich.live import Live

            live_ctx = Live(_progress_table(stats, rate, duration), refresh_per_second=4, transient=False)
            live_ctx.__enter__()
        stats.started, stats.cpu_started = time.monotonic(), time.process_time()
        try:
            with sdk.session() as s:
                redraw = (lambda: live_ctx.update(_progress_table(stats, rate, duration))) if live_ctx else None
                _stream(s, sender, _Pacer(rate, duration, stats.started), batch, stats, redraw)
            stats.finished, stats.cpu_s = time.monotonic(), time.process_time() - stats.cpu_started
        finally:
            if live_ctx is not None:
                live_ctx.update(_progress_table(stats, rate, duration))
                live_ctx.__exit__(None, None, None)
    report.update(stats.summary())
    return report


def _cmd_load(args: argparse.Namespace) -> int:
    targets = [t.strip() for t in args.target.split(",") if t.strip()]
    if args.rate <= 0 or args.duration <= 0 or args.accounts < 2:
        print("psp load: --rate and --duration must be > 0 and --accounts >= 2", file=sys.stderr)
        return 2
    if not 1 <= args.batch <= BATCH_ITEMS_MAX:
        print(f"psp load: --batch must be in 1..{BATCH_ITEMS_MAX}", file=sys.stderr)
        return 2
    if not 0 <= args.sign_group <= BATCH_ITEMS_MAX:
        print(f"psp load: --sign-group must be in 0..{BATCH_ITEMS_MAX}", file=sys.stderr)
        return 2
    try:
        report = run_load(targets, args.rate, args.duration, args.accounts, batch=args.batch, sign=args.sign,
                          key_file=args.key, psps=args.psps, journal=args.journal,
                          first_account_id=args.first_account_id, seed=args.seed,
                          live=not args.json and sys.stdout.isatty(), api=args.api,
                          tls=tls_from_args(args, "psp-1.toml"), sign_group=args.sign_group)
    except (SdkError, TlsConfigError) as e:
        print(f"psp load: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        from rich.console import Console

        Console().print(_final_table(report))
        if report.get("psp_verifier_key"):
            print(f"PSP verifier key (register on the nodes): {report['psp_verifier_key']}")
    return 0 if not report["errors"] else 1


def register(subparsers: Any) -> None:
    """Add ``psp`` with its ``load`` action to a CLI's subparsers."""
    p = subparsers.add_parser("psp", help="PSP load generator and SDK tools", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="psp_command", metavar="ACTION", required=True)
    ld = sub.add_parser("load", help="stream rate-limited micro-payments through the SDK")
    ld.add_argument("--target", default=default_targets(),
                    help="region nodes HOST:PORT[,HOST:PORT…] (any order; default: the `sovledger cluster up` "
                         "region run from this directory, else 127.0.0.1:7100)")
    ld.add_argument("--rate", type=float, default=10_000, help="payments per second (default %(default)s)")
    ld.add_argument("--duration", type=float, default=10.0, help="seconds of load (default %(default)s)")
    ld.add_argument("--accounts", type=int, default=10_000, help="accounts (created if needed, ids from 1)")
    ld.add_argument("--first-account-id", type=int, default=1)
    ld.add_argument("--batch", type=int, default=BATCH_ITEMS_MAX, help="max payments per batch (≤ 8189)")
    ld.add_argument("--psps", type=int, default=4, help="number of PSP ids in the mix (default %(default)s)")
    ld.add_argument("--sign", action="store_true", help="sign each transfer (key: --key, else the local cluster's "
                    f"{CLUSTER_PSP_KEY}, else an ephemeral key the nodes will not know)")
    ld.add_argument("--key", default=None, help="PSP signer key file (PRIVATE+KEY+…) to sign with")
    ld.add_argument("--sign-group", type=int, default=0, metavar="G",
                    help="with --sign: one signature per group of G records over their Merkle root (0: per record)")
    ld.add_argument("--journal", default=None, help="local journal file (sqlite); recovered at start")
    ld.add_argument("--seed", type=int, default=None, help="random seed for accounts and amounts")
    ld.add_argument("--json", action="store_true", help="machine-readable report, no live display")
    ld.add_argument("--api", choices=("bulk", "objects"), default="bulk",
                    help="SDK path: packed records from columns (bulk, default) or one Transfer object each")
    add_tls_flags(ld)
    ld.set_defaults(func=_cmd_load)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m clients.psp_load")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] != "psp":  # `python -m clients.psp_load load …` works too
        argv = ["psp", *argv]
    args = ap.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
