"""Node intake, step by step: CPU per transfer of each thing the node does to a Submit batch before
and after apply, on one full batch, the Python reference beside the native engine in the same run.

The steps (node/service.py ``_accept`` and ``_response``, node/psp_auth.py, ledger/apply/batches.py):
decode the SubmitRequest, frame checks (``validate_batch``), the personal-data screen, PSP
signature checks (per record and per group of 16, one thread: ×2 with the pool's two threads),
the aux bytes every leaf of a signed batch carries (tag 1 / tag 5), the SubmitResponse. Apply
itself (ledger/apply/) is measured by ``bench.engine``; end to end by ``bench.sdk`` and
``bench.psp_verify --ingest``.

    .venv/bin/python -m bench.intake [--repeat 3] [--signatures 2048] [--json]

Best of ``--repeat`` per step; a row's ratio is native ÷ python (same run, same batch).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from nacl.signing import SigningKey

from bench.report import machine, write_results
from clients.workload import ColumnarPayments
from ledger import native
from ledger.apply.batches import signature_auxes
from ledger.codec import TRANSFER_SIZE, Batch, validate_batch
from ledger.note import Signer
from ledger.psp_group import group_messages
from ledger.screening import ScreeningConfig, screen_records
from ledger.types import BATCH_ITEMS_MAX, EventKind
from node.psp_auth import PspAuthenticator
from sovledger_pb import ledger_pb2 as pb

KIND = int(EventKind.CREATE_TRANSFER)
GROUP = 16


def per_transfer(fn: Callable[[], Any], n: int, repeat: int) -> float:
    """Best-of-``repeat`` CPU µs per transfer of ``fn`` (which handles ``n`` transfers): process CPU
    time (every thread, the verify pool's included), which a loaded machine inflates far less than
    wall time."""
    fn()  # warm
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best / n * 1e6


def _on(engine: str, fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        previous = native.active()
        native.select(engine)
        try:
            return fn()
        finally:
            native.select(previous)
    return run


def workload(n: int, signatures: int) -> dict[str, Any]:
    psp = Signer.generate("bench-psp")
    key = SigningKey(psp.seed)
    recs = ColumnarPayments(10_000, seed=11).records(n)
    head = recs[: signatures * TRANSFER_SIZE]
    per_record = b"".join(key.sign(head[i : i + TRANSFER_SIZE]).signature for i in range(0, len(head), TRANSFER_SIZE))
    grouped = b"".join(key.sign(m).signature for m in group_messages(KIND, recs, TRANSFER_SIZE, GROUP))
    return {"psp": psp, "records": recs, "signed": Batch(EventKind.CREATE_TRANSFER, head, per_record, psp.key_id),
            "grouped": Batch(EventKind.CREATE_TRANSFER, recs, grouped, psp.key_id, GROUP)}


def steps(w: dict[str, Any], n: int, repeat: int) -> list[dict[str, Any]]:
    recs, signed, grouped = w["records"], w["signed"], w["grouped"]
    raw = pb.SubmitRequest(batch_id=1, kind=KIND, records=recs, signatures=grouped.signatures,
                           signer_key_id=grouped.signer_key_id, sign_group=GROUP).SerializeToString()
    req = pb.SubmitRequest.FromString(raw)
    auth = {loops: PspAuthenticator([w["psp"].verifier.to_string()], True, threads=1, native_loops=loops == "native")
            for loops in ("pynacl", "native")}
    rows = [
        ("decode SubmitRequest", n, lambda: pb.SubmitRequest.FromString(raw), None),
        ("validate_batch (framing)", n, lambda: validate_batch(req.kind, req.records, req.signatures,
                                                                 req.signer_key_id, sign_group=req.sign_group), None),
        ("personal-data screen (fields zero)", n, lambda: screen_records(KIND, recs, ScreeningConfig()), None),
        ("SubmitResponse build + serialize", n, lambda: pb.SubmitResponse(
            batch_id=1, results=[0] * n, log_indexes=range(10**9, 10**9 + n), blocks=[7] * n,
            timestamp_ns=1).SerializeToString(), None),
    ]
    out = [{"step": name, "python_us": per_transfer(fn, count, repeat), "native_us": None}
           for name, count, fn, _ in rows]
    paired = [
        ("verify, signature per record (1 thread)", signed.count,
         lambda: asyncio.run(auth["pynacl"].verify_batch(signed)),
         lambda: asyncio.run(auth["native"].verify_batch(signed))),
        (f"verify, group of {GROUP} (1 thread)", n, lambda: asyncio.run(auth["pynacl"].verify_batch(grouped)),
         lambda: asyncio.run(auth["native"].verify_batch(grouped))),
        ("aux tag 1 per leaf (per-record signatures)", signed.count, _on("python", lambda: signature_auxes(signed)),
         _on("native", lambda: signature_auxes(signed))),
        (f"aux tag 5 per leaf (group of {GROUP})", n, _on("python", lambda: signature_auxes(grouped)),
         _on("native", lambda: signature_auxes(grouped))),
    ]
    for name, count, py, nat in paired:
        row = {"step": name, "python_us": per_transfer(py, count, repeat), "native_us": None}
        if native.available():
            row["native_us"] = per_transfer(nat, count, repeat)
        out.append(row)
    for a in auth.values():
        a.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=BATCH_ITEMS_MAX)
    ap.add_argument("--signatures", type=int, default=2048, help="records signed one by one (the slow step)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--results-dir", default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    n = args.batch
    rows = steps(workload(n, min(args.signatures, n)), n, args.repeat)
    out = {"bench": "intake", "machine": machine(), "batch": n, "group": GROUP, "rows": rows}
    path = write_results("intake", out, args.results_dir)
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return 0
    print(f"node intake, CPU µs per transfer (batch of {n}, best of {args.repeat}; one thread; "
          "python reference → native engine where both exist)")
    for r in rows:
        nat = r["native_us"]
        tail = "" if nat is None else f"  → native {nat:8.3f}  (native/python {nat / r['python_us']:.2f}×)"
        print(f"  {r['step']:<44} {r['python_us']:8.3f}{tail}")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
