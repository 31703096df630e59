"""A PSP's local payment journal (sqlite3, stdlib): written BEFORE a payment is sent, settled after.

Why: a PSP process can crash between choosing a transfer id and learning the outcome. With the
journal, ``sdk.recover()`` after a restart re-sends every unresolved payment with the SAME id and
the SAME canonical bytes (and signature), so the ledger's idempotency (``transfer_exists``) turns
every possible duplicate into the original entry: the payment is in the ledger exactly once.

Durability: WAL mode with ``synchronous=FULL`` — each commit is fsynced before the SDK sends the
batch. The SDK journals a whole batch as ONE row (``batches``: the records' bytes exactly as sent,
the signatures, and — once every payment of it is final — its outcomes as one packed column), so
a batch costs one insert and one update, whatever its size. ``payments`` holds single payments
journaled one row each (``record_pending``); ids there are big-endian bytes (time order).
Reads (``unresolved``, ``entries``, ``counts``, ``get``) see both tables as one list of payments.

States: PENDING (journaled; the outcome is not known yet), DONE (a final result code, success or
failure, with log index and block), REFUSED (the node refused the batch with a non-retryable status
before any send could have been applied; nothing of it is in the ledger).
"""

from __future__ import annotations

import enum
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from clients.sdk_types import PreparedTransfer, TransferOutcome
from ledger.codec import SIGNATURE_SIZE, TRANSFER_SIZE
from ledger.types import Result

_SCHEMA = """
CREATE TABLE IF NOT EXISTS payments (
    id          BLOB PRIMARY KEY,        -- 16-byte big-endian u128 transfer id
    record      BLOB NOT NULL,           -- canonical 176-byte transfer record, exactly as sent
    signature   BLOB NOT NULL,           -- 64-byte Ed25519 signature over record, or empty
    key_id      BLOB NOT NULL,           -- 4-byte PSP key id, or empty
    state       INTEGER NOT NULL,        -- 0 pending, 1 done, 2 refused
    result      INTEGER,
    log_index   INTEGER,
    block       INTEGER,
    detail      TEXT,
    created_ns  INTEGER NOT NULL,
    resolved_ns INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS payments_pending ON payments(state) WHERE state = 0;
CREATE TABLE IF NOT EXISTS batches (
    key         INTEGER PRIMARY KEY,
    records     BLOB NOT NULL,           -- n canonical 176-byte transfer records, exactly as sent
    signatures  BLOB NOT NULL,           -- n x 64-byte Ed25519 signatures over the records, or one per
                                         -- signing group (sign_group > 0), or empty
    key_id      BLOB NOT NULL,           -- 4-byte PSP key id, or empty
    state       INTEGER NOT NULL,        -- 0 pending (some outcome unknown), 1 every payment final
    outcomes    BLOB,                    -- state 1: n x (u32 result, u64 log index, u64 block), little-endian;
                                         -- result 0xFFFFFFFF: refused before anything of it could apply
    created_ns  INTEGER NOT NULL,
    resolved_ns INTEGER,
    sign_group  INTEGER NOT NULL DEFAULT 0 -- 0: a signature per record; G: per group of G records
);
CREATE INDEX IF NOT EXISTS batches_pending ON batches(state) WHERE state = 0;
"""
#: one outcome in ``batches.outcomes``
OUTCOME_DTYPE = np.dtype([("result", "<u4"), ("log_index", "<u8"), ("block", "<u8")])
REFUSED_RESULT = 0xFFFF_FFFF


class EntryState(enum.IntEnum):
    PENDING = 0
    DONE = 1
    REFUSED = 2


@dataclass(frozen=True, slots=True)
class JournalEntry:
    transfer_id: int
    record: bytes
    signature: bytes
    key_id: bytes
    state: EntryState
    result: Result | None
    log_index: int | None
    block: int | None
    detail: str | None

    def prepared(self) -> PreparedTransfer:
        return PreparedTransfer(self.transfer_id, self.record, self.signature, self.key_id)


@dataclass(frozen=True, slots=True)
class PendingBatch:
    """A journaled batch some payment of which has no known outcome: re-send it whole."""

    key: int
    records: bytes
    signatures: bytes
    key_id: bytes
    sign_group: int = 0

    def __len__(self) -> int:
        return len(self.records) // TRANSFER_SIZE


def _key(transfer_id: int) -> bytes:
    return transfer_id.to_bytes(16, "big")


class Journal:
    """Thread-safe; every write is one fsynced transaction."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(batches)")}
        if "sign_group" not in columns:  # a journal written before group signing existed
            self._db.execute("ALTER TABLE batches ADD COLUMN sign_group INTEGER NOT NULL DEFAULT 0")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes ---------------------------------------------------------------------------------

    def record_pending(self, items: Sequence[PreparedTransfer]) -> None:
        """Journal payments before they are sent (an id already journaled keeps its first record)."""
        now = time.time_ns()
        rows = [(_key(p.transfer_id), p.record, p.signature, p.key_id, now) for p in items]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT OR IGNORE INTO payments (id, record, signature, key_id, state, created_ns) "
                "VALUES (?, ?, ?, ?, 0, ?)", rows)
            self._db.execute("COMMIT")

    def record_outcomes(self, outcomes: Iterable[TransferOutcome]) -> None:
        now = time.time_ns()
        rows = [(int(o.result), o.log_index, o.block, o.resolution, now, _key(o.transfer_id)) for o in outcomes]
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "UPDATE payments SET state = 1, result = ?, log_index = ?, block = ?, detail = ?, resolved_ns = ? "
                "WHERE id = ?", rows)
            self._db.execute("COMMIT")

    def record_refused(self, transfer_ids: Iterable[int], detail: str) -> None:
        """The batch was refused before anything of it could apply (never for uncertain sends)."""
        now = time.time_ns()
        rows = [(detail, now, _key(t)) for t in transfer_ids]
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "UPDATE payments SET state = 2, detail = ?, resolved_ns = ? WHERE id = ? AND state = 0", rows)
            self._db.execute("COMMIT")

    def record_batch(self, records: bytes, signatures: bytes = b"", key_id: bytes = b"", sign_group: int = 0) -> int:
        """Journal a whole batch of transfer records before it is sent (one fsynced insert); its key."""
        n = len(records) // TRANSFER_SIZE
        sigs = -(-n // sign_group) if sign_group > 0 else n
        if not records or len(records) % TRANSFER_SIZE or sign_group < 0 or (
                signatures and len(signatures) != sigs * SIGNATURE_SIZE):
            raise ValueError("records must be n x 176 bytes, signatures empty or 64 bytes per record (per signing "
                             "group with sign_group)")
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO batches (records, signatures, key_id, state, created_ns, sign_group) "
                "VALUES (?, ?, ?, 0, ?, ?)", (records, signatures, key_id, time.time_ns(), sign_group))
            return int(cur.lastrowid or 0)

    def settle_batch(self, key: int, results: npt.NDArray[np.uint32], log_indexes: npt.NDArray[np.uint64],
                     blocks: npt.NDArray[np.uint64]) -> None:
        """Every payment of the batch is final (``REFUSED_RESULT`` for refused ones): one update."""
        out = np.empty(len(results), dtype=OUTCOME_DTYPE)
        out["result"], out["log_index"], out["block"] = results, log_indexes, blocks
        with self._lock:
            self._db.execute("UPDATE batches SET state = 1, outcomes = ?, resolved_ns = ? WHERE key = ?",
                             (out.tobytes(), time.time_ns(), key))

    def pending_batches(self) -> list[PendingBatch]:
        with self._lock:
            rows = self._db.execute(
                "SELECT key, records, signatures, key_id, sign_group FROM batches WHERE state = 0 ORDER BY key"
            ).fetchall()
        return [PendingBatch(k, r, s, kid, g) for k, r, s, kid, g in rows]

    # -- reads ----------------------------------------------------------------------------------

    def unresolved_payments(self) -> list[JournalEntry]:
        """Pending single payments (not those of batches), in id order."""
        return self._select("SELECT * FROM payments WHERE state = 0 ORDER BY id")

    def unresolved(self, limit: int | None = None) -> list[JournalEntry]:
        """Pending payments: single ones in id order (time order), then those of pending batches."""
        out = self.unresolved_payments()
        for b in self.pending_batches():
            grouped = b.sign_group > 0
            out += _batch_entries(b.records, b"" if grouped else b.signatures, b"" if grouped else b.key_id, None)
        return out if limit is None else out[: int(limit)]

    def entries(self) -> list[JournalEntry]:
        out = self._select("SELECT * FROM payments ORDER BY id")
        with self._lock:
            rows = self._db.execute(
                "SELECT records, signatures, key_id, outcomes, sign_group FROM batches ORDER BY key").fetchall()
        for records, sigs, key_id, outcomes, group in rows:
            # a group signature is no one payment's signature: those entries show none
            out += _batch_entries(records, b"" if group else sigs, b"" if group else key_id, outcomes)
        return out

    def get(self, transfer_id: int) -> JournalEntry | None:
        rows = self._select("SELECT * FROM payments WHERE id = ?", (_key(transfer_id),))
        if rows:
            return rows[0]
        want = transfer_id.to_bytes(16, "little")
        return next((e for e in self.entries() if e.record[:16] == want), None)

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, count(*) FROM payments GROUP BY state").fetchall()
            batches = self._db.execute("SELECT length(records), outcomes FROM batches").fetchall()
        out = {s.name.lower(): 0 for s in EntryState}
        for state, n in rows:
            out[EntryState(state).name.lower()] = n
        for size, outcomes in batches:
            if outcomes is None:
                out["pending"] += size // TRANSFER_SIZE
                continue
            refused = int((np.frombuffer(outcomes, dtype=OUTCOME_DTYPE)["result"] == REFUSED_RESULT).sum())
            out["refused"] += refused
            out["done"] += size // TRANSFER_SIZE - refused
        return out

    def _select(self, sql: str, args: tuple[object, ...] = ()) -> list[JournalEntry]:
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [
            JournalEntry(int.from_bytes(r[0], "big"), r[1], r[2], r[3], EntryState(r[4]),
                         None if r[5] is None else Result(r[5]), r[6], r[7], r[8])
            for r in rows
        ]


def _batch_entries(records: bytes, sigs: bytes, key_id: bytes, outcomes: bytes | None) -> list[JournalEntry]:
    n = len(records) // TRANSFER_SIZE
    outs = np.frombuffer(outcomes, dtype=OUTCOME_DTYPE).tolist() if outcomes is not None else [None] * n
    entries = []
    for k, o in enumerate(outs):
        rec = records[k * TRANSFER_SIZE : (k + 1) * TRANSFER_SIZE]
        sig = sigs[k * SIGNATURE_SIZE : (k + 1) * SIGNATURE_SIZE] if sigs else b""
        tid = int.from_bytes(rec[:16], "little")
        if o is None:
            entries.append(JournalEntry(tid, rec, sig, key_id, EntryState.PENDING, None, None, None, None))
        elif o[0] == REFUSED_RESULT:
            entries.append(JournalEntry(tid, rec, sig, key_id, EntryState.REFUSED, None, None, None, "refused"))
        else:
            entries.append(JournalEntry(tid, rec, sig, key_id, EntryState.DONE, Result(o[0]), o[1], o[2], None))
    return entries


__all__ = ["OUTCOME_DTYPE", "REFUSED_RESULT", "EntryState", "Journal", "JournalEntry", "PendingBatch"]
