"""What this node remembers as a witness, durably (LMDB under ``DATA/witness``; docs/federation.md):

- ``cosigned``: origin → the newest checkpoint this node's witness key cosigned for it (size, root,
  the log's signed note). The witness never cosigns anything it cannot prove consistent with it, so
  it is written (and fsynced) before a cosignature leaves the node;
- ``evidence``: origin ‖ 0x00 ‖ u64 BE sequence → a split-view evidence document (JSON);
- ``region``: b"latest" → this region's own newest checkpoint with the cosignatures gathered for it.

A separate environment from the ledger's: a snapshot or restore of the ledger never rewinds what
this witness promised.
"""

from __future__ import annotations

import struct
import threading
from pathlib import Path
from typing import Final

import lmdb

from ledger.witness import Cosigned, SplitView

MAP_SIZE_BYTES: Final = 64 << 20
EVIDENCE_PER_ORIGIN_MAX: Final = 1000  # beyond this the oldest evidence is kept and new ones dropped
_HEAD: Final = struct.Struct(">Q32s")  # size, root; then the note (UTF-8)


class WitnessStore:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._env = lmdb.open(str(directory), map_size=MAP_SIZE_BYTES, max_dbs=4, subdir=True, sync=True)
        self._cosigned = self._env.open_db(b"cosigned")
        self._evidence = self._env.open_db(b"evidence")
        self._region = self._env.open_db(b"region")
        self._lock = threading.Lock()

    def close(self) -> None:
        self._env.close()

    def last(self, origin: str) -> Cosigned | None:
        with self._env.begin(db=self._cosigned) as txn:
            raw = txn.get(origin.encode())
        if raw is None:
            return None
        size, root = _HEAD.unpack_from(raw)
        return Cosigned(origin, size, root, bytes(raw[_HEAD.size:]).decode())

    def put_cosigned(self, c: Cosigned) -> None:
        with self._env.begin(write=True, db=self._cosigned) as txn:
            txn.put(c.origin.encode(), _HEAD.pack(c.size, c.root) + c.note.encode())

    def add_evidence(self, ev: SplitView) -> bool:
        """Keep one piece of evidence (once: the same document twice is stored once)."""
        doc = ev.to_json()
        prefix = ev.origin.encode() + b"\x00"
        with self._lock, self._env.begin(write=True, db=self._evidence) as txn:
            existing = self._range(txn, prefix)
            if doc in existing or len(existing) >= EVIDENCE_PER_ORIGIN_MAX:
                return False
            txn.put(prefix + struct.pack(">Q", len(existing)), doc)
        return True

    def evidence(self, origin: str) -> list[bytes]:
        with self._env.begin(db=self._evidence) as txn:
            return self._range(txn, origin.encode() + b"\x00")

    @staticmethod
    def _range(txn: lmdb.Transaction, prefix: bytes) -> list[bytes]:
        out = []
        cur = txn.cursor()
        if cur.set_range(prefix):
            for k, v in cur:
                if not bytes(k).startswith(prefix):
                    break
                out.append(bytes(v))
        return out

    def region_note(self) -> str:
        with self._env.begin(db=self._region) as txn:
            raw = txn.get(b"latest")
        return bytes(raw).decode() if raw else ""

    def put_region_note(self, note: str) -> None:
        with self._env.begin(write=True, db=self._region) as txn:
            txn.put(b"latest", note.encode())
