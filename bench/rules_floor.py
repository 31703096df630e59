"""What the rules bench's risk tracking must cost in LMDB at the least: its storage floor.

    .venv/bin/python -m bench.rules_floor [--quick] [--rounds N]

Under the 20 rules of ``bench.rules`` a block must persist, besides the ledger's own rows, the risk
state of every payer it moved (``risk``: one 136-byte row per distinct payer, plus one per PSP) and
every payer–payee pair seen for the first time (``risk_pairs``), and it must look up whether each of
its pairs was seen before. This bench does exactly that and nothing else, for the same workload
(``bench.rules._workload``: 10k accounts, uniformly random pairs), through the store's own calls
(``LmdbStore.get_many`` / ``put_many``, one fsynced commit per block) into a fresh store, and reports
CPU per transfer next to the 0-rule apply of ``bench.rules`` measured in the same run.

The rows are prepared before the clock starts: what is measured is LMDB's work (B-tree lookups, page
copies, inserts, the commit's page writes and fsync), which no change to the apply path removes while
tracking stays exact and durable per block. ``bench.rules`` prints the target (at most 25% below the
0-rule baseline); if this floor alone is above that allowance, the target cannot be met with this
storage layout.

Two pair layouts are measured. *lookup*: every pair looked up (``get_many``), the new ones inserted
(the layout before the sixth pass). *touched*: no lookup; the block's distinct pairs put with
no-overwrite (``put_many(..., overwrite=False)``: a stored pair is left as it is, a missing one is
inserted), which is what ``ledger/_native/risk_table.c`` did for pairs no rule read (sixth pass).
*journal* (seventh pass, ``ledger/risk_log.py``): one ``risk_log`` row per block, the journal folded
into ``risk`` / ``risk_pairs`` every 16 blocks (or its state / pair bounds).
"""

from __future__ import annotations

import argparse
import tempfile
import time

from bench.rules import _workload, run_apply
from ledger import risk, risk_log
from ledger.lmdb_store import LmdbStore
from ledger.note import Signer
from ledger.schema import Table

REC = 176
ACCOUNTS = 10_000


def _block_rows(recs: bytes, seen: set[bytes]) -> tuple[list[bytes], list[tuple[bytes, bytes]], list[bytes]]:
    """(the block's distinct pairs sorted, its risk rows sorted, its new pairs sorted); ``seen`` grows."""
    payers: set[bytes] = set()
    psps: set[bytes] = set()
    pairs: set[bytes] = set()
    for off in range(0, len(recs), REC):
        dr, cr = recs[off + 16:off + 32], recs[off + 32:off + 48]
        payers.add(b"o" + dr)
        psps.add(b"p" + int.from_bytes(recs[off + 164:off + 168], "little").to_bytes(4, "big"))
        pairs.add(dr + cr)
    state = bytes(range(136))
    rows = sorted((k, state) for k in payers | psps)
    new = sorted(pairs - seen)
    seen |= pairs
    return sorted(pairs), rows, new


def journal_floor(batches: list[bytes]) -> tuple[float, dict[str, float]]:
    """CPU µs per transfer of the journal layout (ledger/risk_log.py): one ``risk_log`` row per block (its
    states and every pair it paid, prepared before the clock as the C table builds it), the journal folded
    into ``risk`` / ``risk_pairs`` by the block that reaches a bound (read, merged, put, rows deleted)."""
    seen: set[bytes] = set()
    values = []
    for b in batches:
        pairs, rows, _ = _block_rows(b, seen)
        value = risk_log.encode(rows, pairs)
        assert value is not None
        values.append(value)
    table = risk.new_table()
    folder = table.fold if table is not None else risk_log.fold
    parts = {"journal row": 0.0, "fold": 0.0, "commit": 0.0}
    counts = risk_log.Counts()
    with tempfile.TemporaryDirectory() as d:
        store = LmdbStore(d, 1 << 30)
        for height, value in enumerate(values, 1):
            c0 = time.process_time()
            with store.write() as txn:
                due = counts.due(value)
                risk_log.write(txn, height, value, due, folder)
                c1 = time.process_time()
            c2 = time.process_time()
            if due:
                counts = risk_log.Counts()
            else:
                counts.add(value)
            parts["fold" if due else "journal row"] += c1 - c0
            parts["commit"] += c2 - c1
        store.close()
    n = sum(len(b) // REC for b in batches)
    per = {k: v / n * 1e6 for k, v in parts.items()}
    return sum(per.values()), per


def floor_per_transfer(batches: list[bytes], touched: bool = False) -> tuple[float, dict[str, float]]:
    """CPU µs per transfer of the rules' LMDB work over ``batches`` (and its parts); ``touched``: the
    layout without pair lookups (the block's pairs put with no-overwrite)."""
    seen: set[bytes] = set()
    prepared = [_block_rows(b, seen) for b in batches]
    parts = {"pair lookups": 0.0, "risk rows": 0.0, "pair rows": 0.0, "commit": 0.0}
    with tempfile.TemporaryDirectory() as d:
        store = LmdbStore(d, 1 << 30)
        for lookups, rows, new in prepared:
            pair_rows = [(k, b"") for k in (lookups if touched else new)]
            c0 = time.process_time()
            with store.write() as txn:
                if not touched:
                    txn.get_many(Table.RISK_PAIRS, lookups)
                c1 = time.process_time()
                txn.put_many(Table.RISK, rows)
                c2 = time.process_time()
                txn.put_many(Table.RISK_PAIRS, pair_rows, overwrite=not touched)
                c3 = time.process_time()
            c4 = time.process_time()
            for k, v in zip(parts, (c1 - c0, c2 - c1, c3 - c2, c4 - c3), strict=True):
                parts[k] += v
        store.close()
    n = sum(len(b) // REC for b in batches)
    per = {k: v / n * 1e6 for k, v in parts.items()}
    return sum(per.values()), per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    blocks, per_block = (5, 4000) if args.quick else (20, 8000)
    batches = _workload(ACCOUNTS, blocks, per_block, 1)
    operator = Signer.generate("bench-operator")
    base: list[float] = []
    floors: dict[str, list[tuple[float, dict[str, float]]]] = {"lookup": [], "touched": [], "journal": []}
    for _ in range(args.rounds):  # interleaved: the machine's noise hits all alike
        base.append(1e6 / run_apply(0, batches, ACCOUNTS, operator)[1])
        for touched in (False, True):
            floors["touched" if touched else "lookup"].append(floor_per_transfer(batches, touched))
        floors["journal"].append(journal_floor(batches))
    b = min(base)
    allowance = b / 0.75 - b
    print(f"{blocks} blocks x {per_block} transfers, best of {args.rounds}, CPU µs per transfer")
    print(f"  0-rule apply (bench.rules baseline)          {b:6.2f}")
    print(f"  allowed extra at 20 rules (target <= 25% drop) {allowance:6.2f}")
    for label in floors:
        f, parts = min(floors[label], key=lambda x: x[0])
        share = 100 * f / allowance
        print(f"  storage floor, pairs {label:8}                {f:6.2f}  = {share:.0f}% of the allowance")
        for k, v in parts.items():
            print(f"    {k:14} {v:6.2f}")
        print(f"  best possible drop ({label}): {100 * (1 - b / (b + f)):.1f}% (apply work above the floor: 0)")


if __name__ == "__main__":
    main()
