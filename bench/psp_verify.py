"""Speed of the node's PSP signature check (node/psp_auth.py): signatures verified per second.

Signs full batches (8189 transfer records) with one PSP key, then times
``PspAuthenticator.verify_batch`` for 1..N threads (PyNaCl releases the GIL, so threads use cores).

    .venv/bin/python bench/psp_verify.py [--batches 4] [--batch 8189] [--threads 1,2] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "proto")]

from nacl.signing import SigningKey  # noqa: E402

from clients.workload import TransferGenerator  # noqa: E402
from ledger.codec import TRANSFER_SIZE, Batch  # noqa: E402
from ledger.note import Signer  # noqa: E402
from ledger.types import EventKind  # noqa: E402
from node.psp_auth import PspAuthenticator  # noqa: E402


def signed_batches(n_batches: int, batch: int) -> tuple[Signer, list[Batch]]:
    psp = Signer.generate("bench-psp")
    key = SigningKey(psp.seed)
    gen = TransferGenerator(1000, seed=3)
    out = []
    for _ in range(n_batches):
        recs, _meta = gen.records(batch)
        sigs = b"".join(key.sign(recs[i : i + TRANSFER_SIZE]).signature for i in range(0, len(recs), TRANSFER_SIZE))
        out.append(Batch(EventKind.CREATE_TRANSFER, recs, sigs, psp.key_id))
    return psp, out


async def measure(auth: PspAuthenticator, batches: list[Batch]) -> float:
    t0 = time.perf_counter()
    for b in batches:
        await auth.verify_batch(b)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8189)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    psp, batches = signed_batches(args.batches, args.batch)
    total = sum(b.count for b in batches)
    rows = []
    for threads in (int(x) for x in args.threads.split(",")):
        auth = PspAuthenticator([psp.verifier.to_string()], require_signatures=True, threads=threads)
        asyncio.run(measure(auth, batches[:1]))  # warm the pool
        elapsed = asyncio.run(measure(auth, batches))
        auth.close()
        rows.append({"threads": threads, "signatures": total, "seconds": round(elapsed, 3),
                     "signatures_per_s": round(total / elapsed)})
    report = {"bench": "psp_verify", "cpus": os.cpu_count(), "batch": args.batch, "results": rows}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"PSP signature verification ({os.cpu_count()} CPUs, batches of {args.batch})")
        for r in rows:
            print(f"  threads={r['threads']}: {r['signatures_per_s']:>8,} signatures/s "
                  f"({r['signatures']} in {r['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
