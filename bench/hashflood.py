"""Hash flooding: apply cost of blocks whose ids were crafted to collide in the C engine's hash tables,
against the same blocks with random ids, in the same run.

The crafted ids collide under the native engine's former unkeyed hashes (apply.c id_hash, risk_table.h
rt_hash; tests/engine/test_hash_flood.py checks that they do). Three workloads, each on a fresh LMDB
ledger, crafted and random alternating per round:

    ids          accounts and transfer ids crafted against id_hash (no rules): the batch's account and
                 transfer tables
    risk-states  payers crafted against rt_hash ('o' + account id), under risk rules: the state map
    risk-pairs   one payer, payees crafted against rt_hash of the pair key, under a new-payee rule:
                 the pair map

Prints CPU µs per transfer (process time of apply_block, transfer blocks only) and the crafted/random
ratio per workload (median of the rounds); about 1 means the crafted ids cost what random ids cost.
BENCH_TREE=<checkout> imports the ledger from another tree (its own build): the same bench against
main's code, for a before/after. JSON goes to bench/results/.

    .venv/bin/python -m bench.hashflood [--accounts 4000] [--blocks 3] [--rounds 3] [--results-dir D]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TREE = Path(os.environ.get("BENCH_TREE", ROOT))
sys.path[:0] = [str(TREE), str(TREE / "proto")]

from bench.report import machine  # noqa: E402
from ledger import native  # noqa: E402
from ledger.codec import Batch, Proposal, encode_account, encode_deploy, encode_transfer  # noqa: E402
from ledger.lmdb_store import LmdbStore  # noqa: E402
from ledger.note import Signer  # noqa: E402
from ledger.rules import parse_ruleset, signing_message  # noqa: E402
from ledger.state import LedgerState  # noqa: E402
from ledger.types import Account, EventKind, Transfer  # noqa: E402

NS = 1_000_000_000
T0 = 1_700_000_000 * NS
M64 = (1 << 64) - 1
C_MIX, P_TAIL, D_FIN, SEED = 0xFF51AFD7ED558CCD, 0x100000001B3, 0xC4CEB9FE1A85EC53, 0x9E3779B97F4A7C15


# ---- ids crafted against the former hashes ---------------------------------------------------------
def crafted_ids(n: int, base: int = 0x5A5A5) -> list[int]:
    """Ids whose low words differ only in bits 46..63: id_hash's low 16 bits were the same for all."""
    return [(base + (j << 46)) | (7 << 64) for j in range(1, n + 1)]


def _xs32(h: int) -> int:
    return h ^ (h >> 32)


def _before_final(out: int) -> int:
    """rt_hash's state before its last three (invertible) steps, for a wanted output."""
    x = (_xs32(out) * pow(D_FIN, -1, 1 << 64)) & M64
    return x ^ (x >> 29) ^ (x >> 58)


def _last_word(state: int, prev: int) -> int:
    """The 8-byte word w with xs32((prev ^ w) * C_MIX) == state."""
    return ((_xs32(state) * pow(C_MIX, -1, 1 << 64)) & M64) ^ prev


def _mix(h: int, word: bytes) -> int:
    return _xs32(((h ^ int.from_bytes(word, "little")) * C_MIX) & M64)


def crafted_state_keys(n: int, kind: bytes = b"o") -> list[bytes]:
    """State keys (kind + account id) whose former hashes share the high 32 bits (the slot tag: one first
    slot at every table size): rt_hash run backwards; the id's bytes 7..14 are solved for."""
    head = kind + bytes(range(1, 8))
    h1 = _mix(SEED ^ 17, head)
    keys = []
    for j in range(1, n + 1):
        h2 = ((_before_final((0xC0FFEE42 << 32) | j) * pow(P_TAIL, -1, 1 << 64)) & M64) ^ 0x42
        keys.append(head + _last_word(h2, h1).to_bytes(8, "little") + b"\x42")
    return keys


def crafted_pair_keys(n: int, payer: int = 5) -> list[bytes]:
    """Pair keys (payer || payee) of one payer whose former hashes share the high 32 bits, likewise."""
    head = payer.to_bytes(16, "little") + (77).to_bytes(8, "little")
    h = SEED ^ 32
    for i in range(0, 24, 8):
        h = _mix(h, head[i:i + 8])
    return [head + _last_word(_before_final((0xBADC0DE5 << 32) | j), h).to_bytes(8, "little")
            for j in range(1, n + 1)]


# ---- the workloads ------------------------------------------------------------------------------------
RULES = {
    "ids": [],
    "risk-states": [{"id": "velocity", "expr": "risk.debit.count_1m >= 100000000", "action": "reject", "code": 12},
                    {"id": "hot", "expr": "risk.credit.sum_24h > 100000000000", "action": "flag"}],
    "risk-pairs": [{"id": "payee-new", "expr": "risk.new_payee && transfer.amount > 100000000", "action": "flag"}],
}


def workload(kind: str, crafted: bool, n: int, blocks: int) -> tuple[list[int], list[list[Transfer]]]:
    """(account ids, blocks of transfers) of one workload."""
    rnd = random.Random(7)
    rand_ids = [rnd.getrandbits(120) + 2 for _ in range(2 * n + blocks * n)]
    if kind == "ids":
        accounts = crafted_ids(n) if crafted else rand_ids[:n]
        tids = iter(crafted_ids(blocks * n, base=0x3C3C3) if crafted else rand_ids[n:])
        pairs = [(rnd.choice(accounts), rnd.choice(accounts)) for _ in range(blocks * n)]
    elif kind == "risk-states":
        payers = ([int.from_bytes(k[1:], "little") for k in crafted_state_keys(n)] if crafted else rand_ids[:n])
        payees = rand_ids[n:n + 50]
        accounts, tids = payers + payees, iter(rand_ids[2 * n:])
        pairs = [(payers[i % n], rnd.choice(payees)) for i in range(blocks * n)]
    else:
        payees = ([int.from_bytes(k[16:], "little") for k in crafted_pair_keys(n)] if crafted else rand_ids[:n])
        accounts, tids = [5, *payees], iter(rand_ids[2 * n:])
        pairs = [(5, payees[i % n]) for i in range(blocks * n)]
    out = [[Transfer(next(tids), d, c, 1 + k % 90, ledger=1, code=1, psp_id=1)
            for k, (d, c) in enumerate(pairs[b * n:(b + 1) * n]) if d != c] for b in range(blocks)]
    return accounts, out


def run_one(kind: str, crafted: bool, n: int, blocks: int, operator: Signer) -> float:
    """CPU µs per transfer of the transfer blocks (native engine, a fresh ledger)."""
    accounts, transfer_blocks = workload(kind, crafted, n, blocks)
    with tempfile.TemporaryDirectory(prefix="sovledger-hashflood-") as d:
        store = LmdbStore(d, 1 << 30)
        st = LedgerState(store, [operator.verifier])
        first = [Batch(EventKind.CREATE_ACCOUNT, b"".join(encode_account(Account(a, 1, 1)) for a in accounts))]
        if RULES[kind]:
            canonical = parse_ruleset({"name": "flood", "version": 1, "rules": RULES[kind]}).canonical()
            first.append(Batch(EventKind.DEPLOY_RULESET, encode_deploy(
                operator.key_id, operator.sign(signing_message(canonical)), canonical)))
        out = st.apply_block(Proposal(T0, tuple(first)))
        assert all(r == 0 for b in out.batches for r in b.results), "the bench's accounts or rules failed"
        cpu, done = 0.0, 0
        for i, ts in enumerate(transfer_blocks):
            recs = b"".join(encode_transfer(t) for t in ts)
            c0 = time.process_time()
            out = st.apply_block(Proposal(T0 + (i + 1) * NS, (Batch(EventKind.CREATE_TRANSFER, recs),)))
            cpu += time.process_time() - c0
            assert not any(out.batches[0].results), "a bench transfer failed"
            done += len(ts)
        store.close()
    return 1e6 * cpu / done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accounts", type=int, default=4000, help="crafted ids per table (and transfers per block)")
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--time-limit", type=float, default=600.0)
    ap.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)
    if native.select("native") != "native":
        print("native engine not built: nothing to measure")
        return 1
    operator, deadline = Signer.generate("bench-operator"), time.monotonic() + args.time_limit
    per: dict[str, dict[str, list[float]]] = {k: {"crafted": [], "random": []} for k in RULES}
    for r in range(args.rounds):
        for kind in RULES:
            for crafted in ((True, False) if r % 2 == 0 else (False, True)):
                if time.monotonic() > deadline:
                    break
                us = run_one(kind, crafted, args.accounts, args.blocks, operator)
                per[kind]["crafted" if crafted else "random"].append(us)
                print(f"round {r + 1} {kind:12s} {'crafted' if crafted else 'random ':8s} {us:9.2f} µs/transfer",
                      flush=True)
    row: dict[str, Any] = {"tree": str(TREE), "accounts": args.accounts, "blocks": args.blocks,
                           "machine": machine(), "runs_us_per_transfer": per, "ratio_crafted_vs_random": {}}
    print(f"tree {TREE}: median CPU µs per transfer, crafted / random")
    for kind, runs in per.items():
        if runs["crafted"] and runs["random"]:
            c, rnd = statistics.median(runs["crafted"]), statistics.median(runs["random"])
            row["ratio_crafted_vs_random"][kind] = c / rnd
            print(f"{kind:12s} {c:9.2f} {rnd:9.2f}   ratio {c / rnd:6.2f}")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"hashflood-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(row, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
