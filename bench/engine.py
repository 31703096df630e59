"""The native engine against the Python reference, in one process, same workload, same run.

Two real LMDB stores in a temp dir get the same proposals (accounts, then blocks of single-phase
micro-payments from ``clients.workload``); the engines alternate block by block so machine noise
hits both alike. Prints CPU µs per transfer of ``apply_block`` for each engine, and of the part the
native engine replaces (leaf hashes, hash chain, Merkle nodes) alone; compare the ratios.

    .venv/bin/python -m bench.engine [--transfers 50000] [--block 1000] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "proto")]

from clients.workload import TransferGenerator, account_records  # noqa: E402
from ledger import native  # noqa: E402
from ledger.codec import Batch, Proposal  # noqa: E402
from ledger.hashing import GENESIS_LINK  # noqa: E402
from ledger.lmdb_store import LmdbStore  # noqa: E402
from ledger.merkle import CompactRange  # noqa: E402
from ledger.state import LedgerState  # noqa: E402
from ledger.types import EventKind  # noqa: E402

ACCOUNTS = 10_000
T0 = 1_700_000_000 * 10**9


def apply_cpu(transfers: int, block: int, time_limit_s: float) -> tuple[dict[str, float], list[bytes], int]:
    """CPU seconds per engine over the same blocks; also returns one block's leaves for the hash probe."""
    cpu = dict.fromkeys(native.ENGINES, 0.0)
    leaves: list[bytes] = []
    with tempfile.TemporaryDirectory(prefix="sovledger-bench-engine-") as tmp:
        states = {e: LedgerState(LmdbStore(str(Path(tmp) / e), map_size_bytes=4 << 30)) for e in native.ENGINES}
        ts = T0
        for state in states.values():
            state.apply_block(Proposal(ts, (Batch(EventKind.CREATE_ACCOUNT, account_records(ACCOUNTS)),)))
        gen = TransferGenerator(ACCOUNTS, seed=11)
        done, deadline = 0, time.monotonic() + time_limit_s
        while done < transfers and time.monotonic() < deadline:
            recs, _ = gen.records(min(block, transfers - done))
            ts += 10**9
            proposal = Proposal(ts, (Batch(EventKind.CREATE_TRANSFER, recs),))
            for engine, state in states.items():
                native.select(engine)
                c0 = time.process_time()
                out = state.apply_block(proposal)
                cpu[engine] += time.process_time() - c0
                if any(out.batches[0].results):
                    raise SystemExit("a workload transfer failed: the bench workload is broken")
            done += len(recs) // 176
        with states["python"].store.read() as txn:
            leaves = [v for _, v in txn.range("leaves", limit=block)]
        for state in states.values():
            state.store.close()
    return cpu, leaves, done


def hash_cpu(leaves: list[bytes], rounds: int) -> dict[str, float]:
    """CPU seconds of leaf hashes + chain + Merkle append over ``leaves``, ``rounds`` times, per engine."""
    out = {}
    for engine in native.ENGINES:
        native.select(engine)
        c0 = time.process_time()
        for _ in range(rounds):
            hashes, _link = native.hash_and_chain(GENESIS_LINK, leaves)
            native.append_many(CompactRange(), hashes, min_level=1)
        out[engine] = time.process_time() - c0
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transfers", type=int, default=50_000)
    ap.add_argument("--block", type=int, default=1000)
    ap.add_argument("--time-limit", type=float, default=300.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not native.available():
        print("native engine not built: nothing to compare (pip install -e . with a C compiler)")
        return 1
    before = native.active()
    try:
        cpu, leaves, done = apply_cpu(args.transfers, args.block, args.time_limit)
        rounds = 20
        hashed = hash_cpu(leaves, rounds)
    finally:
        native.select(before)
    row = {
        "transfers": done, "block": args.block,
        "apply_us_per_transfer": {e: 1e6 * s / done for e, s in cpu.items()},
        "hash_us_per_leaf": {e: 1e6 * s / (rounds * len(leaves)) for e, s in hashed.items()},
    }
    row["apply_ratio_native_vs_python"] = cpu["native"] / cpu["python"]
    row["hash_ratio_native_vs_python"] = hashed["native"] / hashed["python"]
    if args.json:
        print(json.dumps(row, indent=2))
        return 0
    print(f"{done} transfers in blocks of {args.block} (CPU µs per transfer; same run, engines alternate)")
    print("                     python    native    native/python")
    a, h = row["apply_us_per_transfer"], row["hash_us_per_leaf"]
    print(f"apply_block        {a['python']:8.2f}  {a['native']:8.2f}    {row['apply_ratio_native_vs_python']:.2f}")
    print(f"hash+chain+tree    {h['python']:8.2f}  {h['native']:8.2f}    {row['hash_ratio_native_vs_python']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
