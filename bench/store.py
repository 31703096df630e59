"""What storing a block costs a replica, per transfer and per table: rows, bytes, CPU of the puts, the
commit, bytes handed to the kernel, and how full each table's pages are.

One real LMDB store in a temp dir plays a replica of a region: per block it persists the Raft entry
(``node/raft_storage.py``, one fsynced transaction) and applies it (``LedgerState.apply_block``, one
fsynced transaction), exactly what leader and followers do for every committed entry. The puts are
timed by wrapping the store's ``put``/``put_many``; the commit by wrapping ``LmdbStore.write``;
"written" is the process's ``wchar`` (/proc/self/io) across each transaction. ``--root`` measures
another checkout's code with this same harness (an A/B against ``main`` in the same window):

    .venv/bin/python -m bench.store [--transfers 50000] [--block 8189] [--root /work/main] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ACCOUNTS = 10_000
T0 = 1_700_000_000 * 10**9
ENTRY_HEADER_BYTES = 56  # node/replication.py ENTRY_HEADER: proposer, request, check height, check hash


def _wchar() -> int:
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Tally:
    def __init__(self) -> None:
        self.rows: dict[str, int] = defaultdict(int)
        self.bytes: dict[str, int] = defaultdict(int)
        self.put_s: dict[str, float] = defaultdict(float)
        self.commit_cpu_s = 0.0
        self.commit_wall_s = 0.0
        self.commits = 0

    def put(self, table: str, items: list[tuple[bytes, bytes]], seconds: float) -> None:
        self.rows[table] += len(items)
        self.bytes[table] += sum(len(k) + len(v) for k, v in items)
        self.put_s[table] += seconds


def instrument(tally: Tally) -> Callable[[], None]:
    """Wrap the LMDB store's writes (whatever checkout is on sys.path); returns the undo."""
    from ledger import lmdb_store

    w = lmdb_store._LmdbWrite
    put_many, put = w.put_many, w.put

    def timed_put_many(self: Any, table: str, items: Iterable[tuple[bytes, bytes]], append: bool = False) -> None:
        rows = list(items)
        c0 = time.process_time()
        put_many(self, table, rows, append)
        tally.put(table, rows, time.process_time() - c0)

    def timed_put(self: Any, table: str, key: bytes, value: bytes) -> None:
        c0 = time.process_time()
        put(self, table, key, value)
        tally.put(table, [(key, value)], time.process_time() - c0)

    w.put_many, w.put = timed_put_many, timed_put  # type: ignore[method-assign]
    write = lmdb_store.LmdbStore.write

    @contextmanager
    def timed_write(self: Any) -> Iterator[Any]:
        cm = write(self)
        txn = cm.__enter__()
        try:
            yield txn
        except BaseException:
            cm.__exit__(*sys.exc_info())
            raise
        c0, w0 = time.process_time(), time.perf_counter()
        cm.__exit__(None, None, None)  # the commit: page writes and fdatasync
        tally.commit_cpu_s += time.process_time() - c0
        tally.commit_wall_s += time.perf_counter() - w0
        tally.commits += 1

    lmdb_store.LmdbStore.write = timed_write  # type: ignore[method-assign]

    def undo() -> None:
        w.put_many, w.put = put_many, put  # type: ignore[method-assign]
        lmdb_store.LmdbStore.write = write  # type: ignore[method-assign]

    return undo


def run(transfers: int, block: int) -> dict[str, Any]:
    from clients.workload import TransferGenerator, account_records
    from consensus.types import ConfState, NodeId
    from ledger.codec import Batch, Proposal, encode_proposal
    from ledger.lmdb_store import LmdbStore
    from ledger.state import LedgerState
    from ledger.types import EventKind
    from node.raft_storage import LmdbRaftStorage

    with tempfile.TemporaryDirectory(prefix="sovledger-bench-store-") as tmp:
        store = LmdbStore(str(Path(tmp) / "ledger"), map_size_bytes=8 << 30)
        state = LedgerState(store)
        raft = LmdbRaftStorage(store, ConfState(voters=(NodeId(1), NodeId(2), NodeId(3)), learners=()))
        state.apply_block(Proposal(T0, (Batch(EventKind.CREATE_ACCOUNT, account_records(ACCOUNTS)),)))
        gen = TransferGenerator(ACCOUNTS, seed=11)
        blocks = []
        for n in range(max(1, transfers // block)):
            recs, _ = gen.records(block)
            blocks.append(bytes(ENTRY_HEADER_BYTES) + encode_proposal(
                Proposal(T0 + (n + 1) * 10**9, (Batch(EventKind.CREATE_TRANSFER, recs),))))
        phases = {p: Tally() for p in ("raft", "apply")}
        cpu = dict.fromkeys(phases, 0.0)
        written = dict.fromkeys(phases, 0)
        current = Tally()
        undo = instrument(current)
        try:
            _replicate(blocks, raft, state, phases, current, cpu, written)
        finally:
            undo()
        pages = _pages(store)
        store.close()
    done = len(blocks) * block
    return _report(done, len(blocks), phases, cpu, written, pages)


def _replicate(blocks: list[bytes], raft: Any, state: Any, phases: dict[str, Tally], current: Tally,
               cpu: dict[str, float], written: dict[str, int]) -> None:
    """Per block what a replica does with a committed entry: persist it, then apply it."""
    from consensus.types import Entry, EntryType, HardState, Index, NodeId, Term
    from ledger.codec import decode_proposal

    for index, data in enumerate(blocks, start=1):
            entry = Entry(term=Term(1), index=Index(index), type=EntryType.NORMAL, data=data)
            for phase in phases:
                _reset(current)
                w0, c0 = _wchar(), time.process_time()
                if phase == "raft":
                    raft.persist(HardState(term=Term(1), vote=NodeId(1), commit=Index(index)), [entry], None)
                else:
                    state.apply_block(decode_proposal(data[ENTRY_HEADER_BYTES:]), applied_index=index)
                cpu[phase] += time.process_time() - c0
                written[phase] += _wchar() - w0
                _merge(phases[phase], current)


def _reset(t: Tally) -> None:
    t.rows.clear(), t.bytes.clear(), t.put_s.clear()
    t.commit_cpu_s = t.commit_wall_s = 0.0
    t.commits = 0


def _merge(into: Tally, t: Tally) -> None:
    for table in t.rows:
        into.rows[table] += t.rows[table]
        into.bytes[table] += t.bytes[table]
        into.put_s[table] += t.put_s[table]
    into.commit_cpu_s += t.commit_cpu_s
    into.commit_wall_s += t.commit_wall_s
    into.commits += t.commits


def _pages(store: Any) -> dict[str, dict[str, float]]:
    out = {}
    env = store._env
    with env.begin() as txn:
        for name, db in store._dbs.items():
            s = txn.stat(db)
            if s["entries"]:
                out[name] = {"leaf_pages": s["leaf_pages"], "overflow_pages": s["overflow_pages"],
                             "entries": s["entries"], "depth": s["depth"]}
    return out


def _report(done: int, nblocks: int, phases: dict[str, Tally], cpu: dict[str, float], written: dict[str, int],
            pages: dict[str, dict[str, float]]) -> dict[str, Any]:
    us = 1e6 / done
    out: dict[str, Any] = {"transfers": done, "blocks": nblocks, "phases": {}, "pages": pages}
    for phase, t in phases.items():
        out["phases"][phase] = {
            "cpu_us_per_transfer": round(cpu[phase] * us, 3),
            "written_bytes_per_transfer": round(written[phase] / done, 1),
            "commits_per_block": t.commits / nblocks,
            "commit_cpu_us_per_transfer": round(t.commit_cpu_s * us, 3),
            "commit_wall_us_per_transfer": round(t.commit_wall_s * us, 3),
            "tables": {tb: {"rows_per_transfer": round(t.rows[tb] / done, 3),
                            "bytes_per_transfer": round(t.bytes[tb] / done, 1),
                            "put_cpu_us_per_transfer": round(t.put_s[tb] * us, 3)}
                       for tb in sorted(t.rows, key=lambda x: -t.bytes[x])},
        }
    return out


def _print(res: dict[str, Any], root: Path) -> None:
    print(f"store cost per transfer — {res['transfers']:,} transfers in {res['blocks']} blocks, code of {root}")
    for phase, p in res["phases"].items():
        print(f"{phase}: CPU {p['cpu_us_per_transfer']:.2f} µs, written {p['written_bytes_per_transfer']:.0f} B, "
              f"{p['commits_per_block']:.0f} commit(s)/block (commit CPU {p['commit_cpu_us_per_transfer']:.2f} µs, "
              f"wall {p['commit_wall_us_per_transfer']:.2f} µs)")
        for tb, r in p["tables"].items():
            print(f"   {tb:13s} rows {r['rows_per_transfer']:6.3f}  bytes {r['bytes_per_transfer']:7.1f}  "
                  f"put CPU {r['put_cpu_us_per_transfer']:.3f} µs")
    for tb, s in res["pages"].items():
        per = s["entries"] / s["leaf_pages"] if s["leaf_pages"] else 0
        print(f"   pages {tb:13s} leaf {s['leaf_pages']:6d}  overflow {s['overflow_pages']:6d}  "
              f"rows/leaf page {per:5.1f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transfers", type=int, default=50_000)
    ap.add_argument("--block", type=int, default=8189)
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[1]), help="checkout whose code to measure")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    root = Path(args.root).resolve()
    sys.path[:0] = [str(root), str(root / "proto")]
    res = run(min(args.transfers, 2_000_000), args.block)
    res["root"] = str(root)
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        _print(res, root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
