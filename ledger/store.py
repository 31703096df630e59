"""The narrow store interface the ledger state machine writes through, and its in-memory twin.

A store is a set of named tables of byte keys → byte values with ordered range reads, read
transactions (consistent snapshots) and write transactions that commit atomically and durably
(or not at all). Exactly one write transaction per applied block: ledger changes, chain head,
Merkle state and the applied index land together, so recovery is exactly-once.

The same contract suite (tests/ledger/test_store_contract.py) runs against MemoryStore and
LmdbStore (ledger/lmdb_store.py).
"""

from __future__ import annotations

import bisect
import functools
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Final, Protocol

from ledger.invariant import invariant
from ledger.schema import TABLES as TABLES  # every table's name and layout: ledger/schema.py


class StoreError(Exception):
    """Base class for expected storage errors."""


class StoreFull(StoreError):
    """The store cannot take more data: the LMDB map is full or the disk is."""

    def __init__(self, detail: str, map_size_bytes: int | None = None) -> None:
        self.detail = detail
        self.map_size_bytes = map_size_bytes
        hint = (
            f"increase `map_size_bytes` (now {map_size_bytes}) in the node config and restart"
            if map_size_bytes
            else "free disk space or move the data directory, then restart"
        )
        super().__init__(f"store full ({detail}); the node refuses new work: {hint}")


class ReadTxn(Protocol):
    def get(self, table: str, key: bytes) -> bytes | None: ...

    def get_many(self, table: str, keys: list[bytes]) -> list[bytes | None]: ...

    def range(
        self, table: str, start: bytes = b"", end: bytes | None = None, limit: int | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        """Items with start <= key < end (end None = to the last key), in key order."""
        ...

    def last(self, table: str) -> tuple[bytes, bytes] | None: ...

    def seek(self, table: str, key: bytes) -> tuple[bytes, bytes] | None:
        """The first item with a key >= ``key``, or None (one cursor seek: ledger/pair_runs.py lookups)."""
        ...

    def seeker(self, table: str) -> Callable[[bytes], tuple[bytes, bytes] | None]:
        """``seek`` bound to one table over one cursor kept for the transaction (for hot loops)."""
        ...

    def getter(self, table: str) -> Callable[[bytes], bytes | None]:
        """A fast point-lookup function bound to one table (for hot loops)."""
        ...


class WriteTxn(ReadTxn, Protocol):
    def put(self, table: str, key: bytes, value: bytes) -> None: ...

    def put_many(
        self, table: str, items: Iterable[tuple[bytes, bytes]], append: bool = False, overwrite: bool = True
    ) -> int:
        """Put many items; the number of keys stored. ``append=True`` promises keys are ascending and above
        every stored key (all are stored); ``overwrite=False`` leaves a key already present untouched (not
        written, not counted) and inserts the missing ones."""
        ...

    def delete(self, table: str, key: bytes) -> None: ...


class Store(Protocol):
    def read(self) -> AbstractContextManager[ReadTxn]: ...

    def write(self) -> AbstractContextManager[WriteTxn]:
        """Commit durably when the block exits normally; discard everything on an exception."""
        ...

    def close(self) -> None: ...

    def size_bytes(self) -> int: ...


# -- in-memory implementation ------------------------------------------------------------------


class _Table:
    __slots__ = ("data", "keys")

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.keys: list[bytes] = []  # sorted

    def put(self, key: bytes, value: bytes) -> None:
        if key not in self.data:
            bisect.insort(self.keys, key)
        self.data[key] = value

    def delete(self, key: bytes) -> None:
        if self.data.pop(key, None) is not None:
            del self.keys[bisect.bisect_left(self.keys, key)]


_DELETED: Final = object()


class _MemoryRead:
    def __init__(self, tables: dict[str, _Table]) -> None:
        self._tables = tables

    def _table(self, table: str) -> _Table:
        try:
            return self._tables[table]
        except KeyError:
            raise KeyError(f"unknown table {table!r}") from None

    def get(self, table: str, key: bytes) -> bytes | None:
        return self._table(table).data.get(key)

    def get_many(self, table: str, keys: list[bytes]) -> list[bytes | None]:
        data = self._table(table).data
        return [data.get(k) for k in keys]

    def range(
        self, table: str, start: bytes = b"", end: bytes | None = None, limit: int | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        t = self._table(table)
        keys = t.keys
        i = bisect.bisect_left(keys, start)
        n = 0
        while i < len(keys) and (end is None or keys[i] < end) and (limit is None or n < limit):
            yield keys[i], t.data[keys[i]]
            i += 1
            n += 1

    def getter(self, table: str) -> Callable[[bytes], bytes | None]:
        return self._table(table).data.get

    def seek(self, table: str, key: bytes) -> tuple[bytes, bytes] | None:
        return next(iter(self.range(table, key, limit=1)), None)

    def seeker(self, table: str) -> Callable[[bytes], tuple[bytes, bytes] | None]:
        return functools.partial(self.seek, table)

    def last(self, table: str) -> tuple[bytes, bytes] | None:
        t = self._table(table)
        if not t.keys:
            return None
        return t.keys[-1], t.data[t.keys[-1]]


class _MemoryWrite(_MemoryRead):
    """Writes go to a private copy-on-write overlay, published only on commit."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__(store._tables)
        self._store = store
        self._pending: dict[str, dict[bytes, object]] = {}
        self._bytes = 0

    def _overlay(self, table: str) -> dict[bytes, object]:
        self._table(table)
        return self._pending.setdefault(table, {})

    def get(self, table: str, key: bytes) -> bytes | None:
        ov = self._pending.get(table)
        if ov is not None and key in ov:
            v = ov[key]
            return None if v is _DELETED else v  # type: ignore[return-value]
        return super().get(table, key)

    def get_many(self, table: str, keys: list[bytes]) -> list[bytes | None]:
        return [self.get(table, k) for k in keys]

    def getter(self, table: str) -> Callable[[bytes], bytes | None]:
        return lambda key: self.get(table, key)

    def range(
        self, table: str, start: bytes = b"", end: bytes | None = None, limit: int | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        merged = dict(super().range(table, start, end))
        for k, v in self._pending.get(table, {}).items():
            if k >= start and (end is None or k < end):
                if v is _DELETED:
                    merged.pop(k, None)
                else:
                    merged[k] = v  # type: ignore[assignment]
        for n, k in enumerate(sorted(merged)):
            if limit is not None and n >= limit:
                return
            yield k, merged[k]

    def last(self, table: str) -> tuple[bytes, bytes] | None:
        """The overlay's largest live key or the table's largest one not deleted here: no full merge
        (the seal asks once per block)."""
        ov = self._pending.get(table, {})
        keys = self._table(table).keys
        i = len(keys) - 1
        while i >= 0 and ov.get(keys[i]) is _DELETED:
            i -= 1
        live = [k for k, v in ov.items() if v is not _DELETED]
        if i >= 0:
            live.append(keys[i])
        if not live:
            return None
        key = max(live)
        value = self.get(table, key)
        assert value is not None
        return key, value

    def put(self, table: str, key: bytes, value: bytes) -> None:
        self._account(len(key) + len(value))
        self._overlay(table)[key] = bytes(value)

    def put_many(
        self, table: str, items: Iterable[tuple[bytes, bytes]], append: bool = False, overwrite: bool = True
    ) -> int:
        invariant(overwrite or not append, "put_many: append=True stores every row, overwrite=False may skip some")
        ov = self._overlay(table)
        if append:  # hold callers to LmdbStore's MDB_APPEND contract (it would drop an out-of-order row)
            items = list(items)
            self._check_append(table, ov, [k for k, _ in items])
        added = 0
        for k, v in items:
            if not overwrite and self.get(table, k) is not None:
                continue  # LMDB's MDB_NOOVERWRITE: the stored value stays, nothing is written
            self._account(len(k) + len(v))
            ov[k] = bytes(v)
            added += 1
        return added

    def delete(self, table: str, key: bytes) -> None:
        self._overlay(table)[key] = _DELETED

    def _check_append(self, table: str, ov: dict[bytes, object], keys: list[bytes]) -> None:
        t = self._table(table)
        above = max([k for k, v in ov.items() if v is not _DELETED] + t.keys[-1:], default=None)
        for k in keys:
            invariant(above is None or k > above, f"rows appended to {table!r} out of key order")
            above = k

    def _account(self, n: int) -> None:
        self._bytes += n
        cap = self._store.capacity_bytes
        if cap is not None and self._store.used_bytes + self._bytes > cap:
            raise StoreFull(f"memory store capacity {cap} bytes reached", cap)

    def commit(self) -> None:
        for table, ov in self._pending.items():
            t = self._tables[table]
            for k, v in ov.items():
                if v is _DELETED:
                    t.delete(k)
                else:
                    t.put(k, v)  # type: ignore[arg-type]
        self._store.used_bytes += self._bytes


class MemoryStore:
    """Same contract as LmdbStore, kept in dicts; for unit tests and the simulator."""

    def __init__(self, capacity_bytes: int | None = None) -> None:
        self._tables = {name: _Table() for name in TABLES}
        self._write_lock = threading.Lock()
        self.capacity_bytes = capacity_bytes
        self.used_bytes = 0

    @contextmanager
    def read(self) -> Iterator[ReadTxn]:
        yield _MemoryRead(self._tables)

    @contextmanager
    def write(self) -> Iterator[WriteTxn]:
        with self._write_lock:
            txn = _MemoryWrite(self)
            yield txn
            txn.commit()

    def close(self) -> None:
        pass

    def size_bytes(self) -> int:
        return self.used_bytes
