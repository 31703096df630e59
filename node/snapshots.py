"""Snapshot transfer between replicas: a consistent LMDB copy, checked against a signed checkpoint.

Leader side (``serve``): on the store thread, take ``env.copy(compact=True)`` of the whole ledger
store together with the latest signed checkpoint (both describe the same committed block, since
the store thread is also the one that applies and signs), then stream the file in 1 MiB chunks.

Follower side (``fetch`` then ``install``): download into ``DATA/snapshot.incoming``, open it
read-only and check that the checkpoint's signature verifies, its origin is this region's, and the
copy's Merkle root at the checkpoint's size equals the signed root; then drop the leader's Raft
tables from the copy and swap it in for the local store. Anything wrong → ``SnapshotRejected``
and the local store is untouched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from ledger.lmdb_store import LmdbStore
from ledger.note import Checkpoint, NoteError, Verifier, open_note
from ledger.reader import LedgerReader
from ledger.state import META_APPLIED
from node.tls import TlsFiles, peer_channel
from sovledger_pb import peer_pb2 as ppb
from sovledger_pb import peer_pb2_grpc as ppb_grpc

CHUNK = 1 << 20


class SnapshotRejected(Exception):
    """A snapshot did not verify; the message says what did not match."""


def make_copy(store: LmdbStore, checkpoint_note: str, verifier_key: str) -> tuple[str, str, str]:
    """Store thread: a consistent copy of the ledger store plus the checkpoint that describes it."""
    tmp = tempfile.mkdtemp(prefix="sovledger-snap-", dir=os.path.dirname(store.path))
    store.copy_to(tmp)
    return tmp, checkpoint_note, verifier_key


async def stream_copy(directory: str, note: str, verifier_key: str) -> AsyncIterator[ppb.SnapshotChunk]:
    path = Path(directory) / "data.mdb"
    total = path.stat().st_size
    try:
        with open(path, "rb") as f:
            first = True
            while True:
                data = f.read(CHUNK)
                if not data:
                    break
                yield ppb.SnapshotChunk(data=data, total_bytes=total if first else 0)
                first = False
        yield ppb.SnapshotChunk(checkpoint=note, verifier_key=verifier_key)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def fetch(leader_address: str, index: int, into: Path, tls: TlsFiles | None = None) -> tuple[str, str]:
    """Download a leader's snapshot into ``into``; returns (checkpoint note, verifier key)."""
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    note = vkey = ""
    async with peer_channel(leader_address, tls, [("grpc.max_receive_message_length", 8 << 20)]) as ch:
        with open(into / "data.mdb", "wb") as f:
            async for chunk in ppb_grpc.PeerStub(ch).FetchSnapshot(ppb.SnapshotRequest(index=index)):
                if chunk.data:
                    f.write(chunk.data)
                if chunk.checkpoint:
                    note, vkey = chunk.checkpoint, chunk.verifier_key
            f.flush()
            os.fsync(f.fileno())
    if not note:
        raise SnapshotRejected("the leader's snapshot stream ended without its signed checkpoint")
    return note, vkey


def verify_and_prepare(directory: Path, note: str, verifier_key: str, origin: str, map_size: int,
                       min_applied: int, trusted_keys: Sequence[str] = (), local_size: int = 0,
                       local_root: bytes = b"") -> int:
    """Check a downloaded copy against its signed checkpoint; strip Raft tables; return its applied index.

    ``trusted_keys`` (the node's ``peer_keys``): when given, the checkpoint must be signed by one of
    them and the key shipped with the snapshot is ignored; otherwise the shipped key is trusted on
    first use. ``local_size``/``local_root``: this replica's own log, which the copy must extend (a
    snapshot that is behind it or forks from it is refused before anything local is touched)."""
    try:
        keys = [Verifier.parse(k) for k in trusted_keys] if trusted_keys else [Verifier.parse(verifier_key)]
        signed = open_note(note, keys)
        cp = Checkpoint.parse(signed.body)
    except NoteError as e:
        which = "any of this node's peer_keys" if trusted_keys else "the key it came with"
        raise SnapshotRejected(f"snapshot checkpoint does not verify under {which}: {e}") from e
    if cp.origin != origin:
        raise SnapshotRejected(f"snapshot is of log {cp.origin!r}, this region's is {origin!r}")
    copy = LmdbStore(str(directory), map_size)
    try:
        reader = LedgerReader(copy)
        head = reader.head()
        if head.tree_size < cp.size:
            raise SnapshotRejected(f"copy holds {head.tree_size} entries, the checkpoint signs {cp.size}")
        root = reader.root_at(cp.size)
        if root != cp.root:
            raise SnapshotRejected(f"copy's Merkle root at size {cp.size} is {root.hex()[:16]}…, the signed "
                                   f"checkpoint says {cp.root.hex()[:16]}…")
        if local_size:
            if head.tree_size < local_size:
                raise SnapshotRejected(f"copy holds {head.tree_size} entries, fewer than this replica's "
                                       f"{local_size}: it would roll the log back")
            mine = reader.root_at(local_size)
            if mine != local_root:
                raise SnapshotRejected(f"copy forks from this replica's own log: its root at size {local_size} "
                                       f"is {mine.hex()[:16]}…, ours is {local_root.hex()[:16]}…")
        with copy.read() as txn:
            raw = txn.get("meta", META_APPLIED)
        applied = int.from_bytes(raw, "big") if raw else 0
        if applied < min_applied:
            raise SnapshotRejected(f"copy is at Raft index {applied}, the snapshot promised {min_applied}")
        with copy.write() as w:  # the leader's Raft state is not ours
            for table in ("raft", "raftlog"):
                for k, _ in list(w.range(table)):
                    w.delete(table, k)
        return applied
    finally:
        copy.close()


def install(store: Any, directory: Path) -> None:
    """Store thread: swap the verified copy in for the local store."""
    lock = directory / "lock.mdb"
    if lock.exists():
        lock.unlink()
    store.replace_with(str(directory))
