"""PSP SDK benchmark: transfers/s and client CPU per transfer, per-object API vs bulk path, in one run.

Run with ``python -m bench.sdk [--quick] [--transfers N]``. One real node process on 127.0.0.1
(durable LMDB, the PSP key registered) and, beside it, a *null ledger* process that answers every
batch OK at once (no ledger, no disk) — it shows what the SDK can do when the node is not the
limit. In the same run:

* node capacity: pre-encoded records streamed with the bare client (``clients.client``), no SDK;
* SDK end to end, from Python objects (``Session.send(Transfer)``) and from the bulk path
  (numpy columns → packed records → ``Session.send_records``), each plain, with the journal,
  signed per record and batch-signed (one signature per group of 16 records over their Merkle root);
  against the node and against the null ledger.

The client CPU per transfer is ``time.process_time()`` of this process (every thread: the caller,
the SDK's event loop, gRPC, journal and signing threads) divided by acknowledged transfers — the
SDK's own figure; the workload generation (ids, accounts, amounts, ``Transfer`` objects or
columns) is inside it, as it would be in a PSP. Ratios against the node's capacity measured in the
same run; the machine is shared, so absolute numbers move.

Results: a table on stdout and JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from rich.table import Table

from bench.region import connect, run_stream, setup_ledger, single_node, split, transfer_stream, wide_console
from bench.report import ROOT, fmt_rate, machine, ratio, write_results
from clients.psp.bulk import BulkOutcomes
from clients.psp.columns import TRANSFER_DTYPE
from clients.sdk import LedgerSDK, SdkConfig, Session, TransferOutcome
from clients.workload import ColumnarPayments
from ledger.codec import TRANSFER_SIZE
from ledger.note import Signer
from ledger.types import BATCH_ITEMS_MAX, Transfer
from sovledger_pb import ledger_pb2 as pb
from sovledger_pb import ledger_pb2_grpc as pb_grpc

ACCOUNTS = 10_000
PATHS = ("objects", "bulk")
MODES = ("plain", "journal", "signed", "batch-signed")
SIGN_GROUP = 16  # records per signature in the batch-signed rows (docs/formats.md, PSP group signature)


# -- a ledger that answers at once (the SDK's ceiling) ----------------------------------------------------


class NullLedger(pb_grpc.LedgerServicer):
    """Answers every batch OK with consecutive indexes; stores nothing."""

    def __init__(self) -> None:
        self.index = itertools.count()

    def Submit(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
        for block, req in enumerate(request_iterator, 1):
            n = len(req.records) // TRANSFER_SIZE if req.kind == pb.CREATE_TRANSFERS else len(req.records) // 64
            first = next(self.index)
            self.index = itertools.count(first + n)
            yield pb.SubmitResponse(batch_id=req.batch_id, results=[0] * n, log_indexes=range(first, first + n),
                                    blocks=[block] * n, timestamp_ns=block)


def serve_null(port: int) -> int:
    server = grpc.server(ThreadPoolExecutor(4), options=[("grpc.max_receive_message_length", 4 << 20)])
    pb_grpc.add_LedgerServicer_to_server(NullLedger(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("READY", flush=True)
    server.wait_for_termination(timeout=3600)  # bounded: the bench stops it long before
    return 0


@contextmanager
def null_ledger() -> Iterator[str]:
    sys.path.insert(0, str(ROOT))
    from tests.integration.nodeproc import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.sdk", "--serve-null", str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"READY"
        yield f"127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(10)


# -- the two client paths ---------------------------------------------------------------------------------


def _objects(gen: ColumnarPayments, n: int) -> list[Transfer]:
    """``n`` payments as the per-object API takes them (built from the same workload columns)."""
    rec = np.frombuffer(gen.records(n), dtype=TRANSFER_DTYPE)
    cols = zip(rec["id"].tolist(), rec["debit_account_id"][:, 0].tolist(), rec["credit_account_id"][:, 0].tolist(),
               rec["amount"][:, 0].tolist(), rec["psp_id"].tolist(), strict=True)
    return [Transfer(id=lo | hi << 64, debit_account_id=d, credit_account_id=c, amount=a, ledger=gen.ledger, code=1,
                     psp_id=p) for (lo, hi), d, c, a, p in cols]


def _send_objects(s: Session, gen: ColumnarPayments, n: int) -> list[Future[TransferOutcome]]:
    return [s.send(t) for t in _objects(gen, n)]


def _send_bulk(s: Session, gen: ColumnarPayments, n: int) -> list[Future[BulkOutcomes]]:
    return [s.send_records(gen.records(n))]


def _count_ok(futs: list[Any]) -> int:
    ok = 0
    for f in futs:
        r = f.result()
        ok += int(r.ok.sum()) if isinstance(r, BulkOutcomes) else int(r.ok)
    return ok


def sdk_run(target: str, path: str, mode: str, total: int, batch: int, time_limit_s: float, tmp: Path,
            signer: Signer) -> dict[str, Any]:
    """``total`` transfers (at most ``time_limit_s``) through one SDK session; tx/s and client CPU."""
    cfg = SdkConfig(batch_size_max=batch, batch_delay_s=0.005, window_items=4 * batch, window_batches=4,
                    sign_group=SIGN_GROUP if mode == "batch-signed" else 0)
    journal = tmp / f"journal-{path}-{mode}-{time.monotonic_ns()}.sqlite" if mode == "journal" else None
    gen = ColumnarPayments(ACCOUNTS, seed=11)
    send = _send_objects if path == "objects" else _send_bulk
    chunk = min(batch, 1000) if path == "objects" else batch
    with LedgerSDK(target, signer=signer if "signed" in mode else None, journal=journal, config=cfg) as sdk:
        deadline = time.monotonic() + time_limit_s
        cpu0, t0 = time.process_time(), time.perf_counter()
        futs: list[Any] = []
        sent = 0
        with sdk.session() as s:
            while sent < total and time.monotonic() < deadline:
                n = min(chunk, total - sent)
                futs += send(s, gen, n)
                sent += n
        ok = _count_ok(futs)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"path": path, "mode": mode, "transfers": sent, "ok": ok, "seconds": elapsed,
            "tx_per_s": sent / elapsed if elapsed else 0.0, "client_cpu_us": cpu / sent * 1e6 if sent else None}


# -- the run ----------------------------------------------------------------------------------------------


def node_capacity(target: str, total: int, time_limit_s: float) -> dict[str, Any]:
    """Pre-encoded records, 8189 per batch, 4 in flight, through the bare client: the node alone."""
    with connect(target) as client:
        return run_stream(client, split(transfer_stream(total, seed=5), BATCH_ITEMS_MAX), 4, time_limit_s)


def run_all(target: str, label: str, total: int, batch: int, time_limit_s: float, tmp: Path, signer: Signer,
            console: Any) -> list[dict[str, Any]]:
    rows = []
    for path, mode in itertools.product(PATHS, MODES):
        with console.status(f"{label}: SDK {path} {mode} …"):
            row = sdk_run(target, path, mode, total, batch, time_limit_s, tmp, signer)
        row["against"] = label
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small counts (smoke run)")
    ap.add_argument("--transfers", type=int, default=200_000, help="transfers per SDK row (default %(default)s)")
    ap.add_argument("--time-limit", type=float, default=40.0, help="seconds per row at most")
    ap.add_argument("--results-dir", default=None)
    ap.add_argument("--serve-null", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_null:
        return serve_null(args.serve_null)
    total = 3 * 1000 if args.quick else args.transfers
    batch = 1000 if args.quick else BATCH_ITEMS_MAX
    console = wide_console()
    signer = Signer.generate("bench-psp")
    out: dict[str, Any] = {"machine": machine(), "transfers_per_row": total, "batch": batch}
    with tempfile.TemporaryDirectory(prefix="sovledger-bench-sdk-") as tmp_name:
        tmp = Path(tmp_name)
        with single_node(tmp, extra=["--psp-keys", signer.verifier.to_string()]) as target:
            with connect(target) as client:
                setup_ledger(client, ACCOUNTS)
            with console.status("node capacity (pre-encoded records) …"):
                out["node_capacity"] = node_capacity(target, max(total, 3 * BATCH_ITEMS_MAX), args.time_limit)
            rows = run_all(target, "node", total, batch, args.time_limit, tmp, signer, console)
        with null_ledger() as target:
            rows += run_all(target, "null", total, batch, args.time_limit, tmp, signer, console)
    out["rows"] = rows
    path = write_results("sdk", out, args.results_dir)
    console.print(render(out))
    console.print(f"results: {path}")
    return 0


def render(out: dict[str, Any]) -> Table:
    cap = out["node_capacity"]["tx_per_s"]
    t = Table(title=f"PSP SDK — node capacity with pre-encoded records: {fmt_rate(cap)} tx/s "
                    f"(batch {out['batch']}, {out['transfers_per_row']:,} transfers per row)")
    for col in ("against", "path", "mode", "tx/s", "÷ node capacity", "client CPU µs/transfer", "ok"):
        t.add_column(col, justify="right")
    for r in out["rows"]:
        cpu = r["client_cpu_us"]
        t.add_row(r["against"], r["path"], r["mode"], fmt_rate(r["tx_per_s"]), ratio(r["tx_per_s"], cap),
                  "–" if cpu is None else f"{cpu:.1f}", f"{r['ok']:,}/{r['transfers']:,}")
    return t


if __name__ == "__main__":
    sys.exit(main())
