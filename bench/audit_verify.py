"""Speed of the auditor's pure verifier (`audit verify --full` without the network).

Builds a log in-process with the real state machine over a MemoryStore (accounts, then blocks of
single-phase micro-payments, optionally PSP-signed), then times ``LogVerifier`` over the canonical
leaves and block headers exactly as a node would serve them, including the final comparison with a
signed checkpoint and the replayed account states.

    .venv/bin/python bench/audit_verify.py [--transfers 300000] [--block 8189] [--signed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "proto")]

from clients.auditor.checks import compare_accounts  # noqa: E402
from clients.auditor.replay import LogVerifier, iter_blocks  # noqa: E402
from clients.workload import TransferGenerator, account_records  # noqa: E402
from ledger.codec import Batch, Proposal  # noqa: E402
from ledger.note import Checkpoint as Cp  # noqa: E402
from ledger.note import Signer, open_note, sign_note  # noqa: E402
from ledger.state import LedgerState  # noqa: E402
from ledger.store import MemoryStore  # noqa: E402
from ledger.types import EventKind  # noqa: E402


def build(transfers: int, block: int, accounts: int, signed: int) -> tuple[list[bytes], list[bytes], str, Signer,
                                                                             Signer, dict[bytes, bytes | None]]:
    store = MemoryStore()
    state = LedgerState(store)
    node = Signer.generate("bench/node-1")
    psp = Signer.generate("bench-psp")
    ts = 1_700_000_000 * 10**9
    state.apply_block(Proposal(ts, (Batch(EventKind.CREATE_ACCOUNT, account_records(accounts)),)))
    gen = TransferGenerator(accounts, seed=7)
    done = 0
    while done < transfers:
        n = min(block, transfers - done)
        recs, _ = gen.records(n)
        if done < signed:
            sigs = b"".join(psp.sign(recs[i : i + 176]) for i in range(0, len(recs), 176))
            batch = Batch(EventKind.CREATE_TRANSFER, recs, sigs, psp.key_id)
        else:
            batch = Batch(EventKind.CREATE_TRANSFER, recs)
        ts += 10**9
        state.apply_block(Proposal(ts, (batch,)))
        done += n
    with store.read() as txn:
        leaves = [v for _, v in txn.range("leaves", b"", b"\xff" * 8)]
        headers = [v for _, v in txn.range("blocks", b"", b"\xff" * 8)]
        accts = dict(txn.range("accounts", b"", b"\xff" * 16))
    h = state.head
    body = Cp("sovledger/bench", h.tree_size, state.range.root(), (
        f"block {h.height} {h.block_hash.hex()}", f"chain {h.chain_head.hex()}", f"time {h.last_timestamp_ns}",
    )).to_body()
    return leaves, headers, sign_note(body, node), node, psp, accts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--transfers", type=int, default=300_000)
    ap.add_argument("--block", type=int, default=8189, help="transfers per block")
    ap.add_argument("--accounts", type=int, default=10_000)
    ap.add_argument("--signed", type=int, default=0, help="how many of the transfers carry a PSP signature")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    leaves, headers, note, node, psp, accts = build(args.transfers, args.block, args.accounts, args.signed)
    build_s = time.perf_counter() - t0
    cp = Cp.parse(open_note(note, [node.verifier]).body)
    best = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        v = LogVerifier(psp_keys=[psp.verifier])
        for h, ls in iter_blocks(headers, iter(leaves)):
            v.feed_block(h, ls)
        v.finish(cp)
        compare_accounts(v.account_states(), accts, "bench")
        best = min(best, time.perf_counter() - t0)
    rate = len(leaves) / best
    out = {"entries": len(leaves), "blocks": len(headers), "signed": args.signed, "build_s": round(build_s, 2),
           "verify_s": round(best, 3), "entries_per_s": round(rate), "python": sys.version.split()[0]}
    print(json.dumps(out) if args.json else
          f"verified {len(leaves):,} entries in {len(headers):,} blocks ({args.signed:,} PSP-signed) in "
          f"{best:.3f} s (best of {args.repeat}) = {rate:,.0f} entries/s on one core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
