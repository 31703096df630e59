"""A PSP's local payment journal (sqlite3, stdlib): written BEFORE a payment is sent, settled after.

Why: a PSP process can crash between choosing a transfer id and learning the outcome. With the
journal, ``sdk.recover()`` after a restart re-sends every unresolved payment with the SAME id and
the SAME canonical bytes (and signature), so the ledger's idempotency (``transfer_exists``) turns
every possible duplicate into the original entry: the payment is in the ledger exactly once.

Durability: WAL mode with ``synchronous=FULL`` — each commit is fsynced before the SDK sends the
batch. Ids are stored as big-endian bytes (time-ordered ids stay in insertion order).

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

from clients.sdk_types import PreparedTransfer, TransferOutcome
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
"""


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

    # -- reads ----------------------------------------------------------------------------------

    def unresolved(self, limit: int | None = None) -> list[JournalEntry]:
        """Pending entries in id order (time order)."""
        sql = "SELECT * FROM payments WHERE state = 0 ORDER BY id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self._select(sql)

    def entries(self) -> list[JournalEntry]:
        return self._select("SELECT * FROM payments ORDER BY id")

    def get(self, transfer_id: int) -> JournalEntry | None:
        rows = self._select("SELECT * FROM payments WHERE id = ?", (_key(transfer_id),))
        return rows[0] if rows else None

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, count(*) FROM payments GROUP BY state").fetchall()
        out = {s.name.lower(): 0 for s in EntryState}
        for state, n in rows:
            out[EntryState(state).name.lower()] = n
        return out

    def _select(self, sql: str, args: tuple[object, ...] = ()) -> list[JournalEntry]:
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [
            JournalEntry(int.from_bytes(r[0], "big"), r[1], r[2], r[3], EntryState(r[4]),
                         None if r[5] is None else Result(r[5]), r[6], r[7], r[8])
            for r in rows
        ]


__all__ = ["EntryState", "Journal", "JournalEntry"]
