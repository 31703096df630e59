"""What TLS costs: transfers/s through one real node with mutual TLS vs the same node --insecure.

Run with ``python -m bench.tls_cost [--quick]`` (part of ``make bench``). Two node processes on
127.0.0.1 with durable LMDB stores, started in the same run: one plaintext, one with a region CA,
a node certificate and a PSP client certificate (every call passes the authorization table and the
PSP's record checks). The same PSP-owned workload streams in batches of 8189 to each, alternating
rounds so machine noise hits both alike. The figure is the ratio TLS ÷ insecure (target ≥ 0.90:
at most 10% fewer transfers/s). Results: a table and ``bench/results/tls_cost-*.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.report import ROOT, fmt_rate, machine, write_results
from bench.single_node import stream_load
from clients.client import LedgerClient
from clients.connect import ClientTls
from clients.workload import TransferGenerator, account_records
from ledger.ownership import account_id_for
from ledger.types import BATCH_ITEMS_MAX, EventKind

ACCOUNTS = 10_000
PSP_ID = 1


def _start(tmp: Path, tls: bool) -> tuple[Any, ClientTls | None]:
    from sovledger import ca
    from tests.integration.nodeproc import NodeProcess

    if not tls:
        return NodeProcess(tmp / "insecure").start(), None
    c = tmp / "ca"
    ca.init_ca(c, "bench")
    cert, key, _ = ca.issue(c, "node", "node-1")
    ca.issue(c, "psp", str(PSP_ID))
    node = NodeProcess(tmp / "tls", extra=["--tls-ca", str(c / "ca.pem"), "--tls-cert", str(cert),
                                           "--tls-key", str(key)]).start()
    return node, ClientTls.from_file(str(c / f"psp-{PSP_ID}.toml"))


def _accounts(client: LedgerClient) -> None:
    client.wait_ready()
    first = account_id_for(PSP_ID, 1)
    for off in range(0, ACCOUNTS, 8000):
        client.submit_one(EventKind.CREATE_ACCOUNT, account_records(min(8000, ACCOUNTS - off), first_id=first + off))


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds the node process used so far (robust to a shared, noisy machine)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(total: int, rounds: int, time_limit_s: float) -> dict[str, Any]:
    per_mode: dict[str, list[float]] = {"insecure": [], "tls": []}
    cpu_us: dict[str, list[float]] = {"insecure": [], "tls": []}
    with tempfile.TemporaryDirectory(prefix="sovledger-bench-tls-") as tmp:
        nodes = {mode: _start(Path(tmp), mode == "tls") for mode in per_mode}
        try:
            clients = {mode: LedgerClient(node.target, tls=tls) for mode, (node, tls) in nodes.items()}
            gens = {}
            for mode, client in clients.items():
                _accounts(client)
                gens[mode] = TransferGenerator(ACCOUNTS, first_account_id=account_id_for(PSP_ID, 1), psps=1, seed=7)
            for _ in range(rounds):
                for mode in per_mode:
                    pid = nodes[mode][0].proc.pid
                    cpu0 = _cpu_s(pid)
                    row = stream_load(clients[mode], gens[mode], total, BATCH_ITEMS_MAX, 4, time_limit_s)
                    assert row["results"] == {"ok": row["transfers"]}, row["results"]
                    per_mode[mode].append(row["tx_per_s"])
                    cpu_us[mode].append((_cpu_s(pid) - cpu0) / max(1, row["transfers"]) * 1e6)
            for client in clients.values():
                client.close()
        finally:
            for node, _ in nodes.values():
                node.stop()
    med = {mode: statistics.median(v) for mode, v in per_mode.items()}
    cpu = {mode: statistics.median(v) for mode, v in cpu_us.items()}
    return {"batch": BATCH_ITEMS_MAX, "transfers_per_round": total, "rounds": rounds, "tx_per_s": per_mode,
            "median_tx_per_s": med, "tls_over_insecure": med["tls"] / med["insecure"] if med["insecure"] else None,
            "node_cpu_us_per_transfer": cpu_us, "median_node_cpu_us_per_transfer": cpu,
            "cpu_tls_over_insecure": cpu["tls"] / cpu["insecure"] if cpu["insecure"] else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small counts (smoke run)")
    ap.add_argument("--transfers", type=int, default=None, help="transfers per round (default 200k, quick 20k)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per mode")
    ap.add_argument("--time-limit", type=float, default=40.0, help="seconds per round at most")
    ap.add_argument("--results-dir", default=None, help="where to write JSON (default bench/results)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    total = args.transfers or (20_000 if args.quick else 200_000)
    console = Console()
    with console.status(f"TLS vs --insecure: {args.rounds} rounds of {total:,} transfers each …"):
        res = run(total, args.rounds, args.time_limit)
    table = Table(title=f"TLS cost — one node, durable, batch {BATCH_ITEMS_MAX}, same run")
    for col in ("mode", "median tx/s", "rounds tx/s", "tx/s ÷ insecure", "node CPU µs/tx", "CPU ÷ insecure"):
        table.add_column(col, justify="right")
    cpu = res["median_node_cpu_us_per_transfer"]
    for mode in ("insecure", "tls"):
        ratio = res["median_tx_per_s"][mode] / res["median_tx_per_s"]["insecure"]
        table.add_row(mode, fmt_rate(res["median_tx_per_s"][mode]),
                      " ".join(fmt_rate(x) for x in res["tx_per_s"][mode]), f"{ratio:.2f}×",
                      f"{cpu[mode]:.1f}",
                      f"{cpu[mode] / cpu['insecure']:.2f}×" if cpu["insecure"] else "–")  # 0: below /proc's tick
    console.print(table)
    out = write_results("tls_cost", {"machine": machine(), **res}, args.results_dir)
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
