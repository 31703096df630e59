"""Checkpoint signing with a consistency guard.

The node signs a C2SP checkpoint (origin, tree size, root, plus extension lines for the block
height, block hash and chain head) after every N blocks. Before signing, the guard proves — with
a consistency proof from the node's own tree, verified like an auditor would — that the new tree
extends the last tree this key ever signed. The last signed (size, root) lives in a small file
next to the store (node/guard_file.py), made durable before the signature is published: a store that was
rolled back, truncated or forked can never get this key to sign an inconsistent checkpoint.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ledger.merkle import ProofError, verify_consistency
from ledger.note import Checkpoint, Signer, sign_note
from ledger.reader import LedgerReader
from ledger.state import Head
from node.guard_file import GuardFile

log = logging.getLogger("sovledger.signing")


class InconsistentCheckpoint(Exception):
    """Refused: the tree to sign does not extend the last signed one."""


class BelowPeerCheckpoint(InconsistentCheckpoint):
    """Refused: a peer already holds a newer checkpoint of this origin (an old data directory?)."""


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    note: str
    size: int
    root: bytes
    block: int
    verifier_key: str = ""  # the key that signed ``note`` (it changes when the key is rotated)


class CheckpointService:
    def __init__(self, reader: LedgerReader, signer: Signer, origin: str, guard_path: Path,
                 every_blocks: int = 1, choose_signer: Callable[[int], Signer] | None = None) -> None:
        """``choose_signer(tree_size)``: the key for a checkpoint of that size (key rotation, node/key_rotation.py)."""
        self._reader = reader
        self._signer = signer
        self._choose = choose_signer
        self._origin = origin
        self._guard_path = guard_path
        self._every = every_blocks
        self._lock = threading.Lock()
        self._latest: SignedCheckpoint | None = None
        self._guard_file = GuardFile(guard_path)
        self._guard = self._load_guard()
        # the newest tree size of this origin a peer holds (learned at start, node/startup.py): the
        # key never signs below it, so an old copy of the data directory cannot sign old state again
        self.floor = 0
        self.floor_source = ""
        self.verifier_key = signer.verifier.to_string()
        self.failure: Exception | None = None  # the last signing error, until a signature succeeds

    def _load_guard(self) -> tuple[int, bytes] | None:
        self._guard_file.migrate()  # a data directory from before the binary format (node/guard_file.py)
        rec = self._guard_file.record
        return None if rec is None else (rec.size, rec.root)

    def _store_guard(self, size: int, root: bytes) -> None:
        _injected_fault()
        self._guard_file.store(size, root)

    def close(self) -> None:
        """Close the guard file's descriptor (the service signs nothing afterwards)."""
        self._guard_file.close()

    def on_start(self, head: Head) -> None:
        """Sign the current head at start (refusing loudly if the store went backwards).

        Below the peers' floor the node signs nothing yet: it catches up through Raft first."""
        if head.tree_size < self.floor:
            log.warning("not signing tree size %d at start: %s holds a checkpoint of size %d; catching up first",
                        head.tree_size, self.floor_source, self.floor)
            return
        self._sign(head)

    def on_block(self, head: Head) -> None:
        """After a committed block (store thread). Never raises: the block is committed whatever
        happens here, and its outcome goes to the client as committed. A failed signature (disk
        full writing the guard, an inconsistency refusal) is logged, shown by ``failure`` (health),
        and retried with the next block or by ``retry``. Below the peers' floor nothing is signed:
        the node is still catching up to what the region already signed."""
        if head.tree_size < self.floor:
            return
        if head.height % self._every == 0 or self.failure is not None or self._latest is None:
            self._try_sign(head)

    def retry(self, head: Head) -> None:
        """Store thread: sign ``head`` again if the last attempt failed (a no-op otherwise)."""
        if self.failure is not None and head.tree_size >= self.floor:
            self._try_sign(head)

    def _try_sign(self, head: Head) -> None:
        try:
            self._sign(head)
        except Exception as e:
            if self.failure is None or str(self.failure) != str(e):
                log.error("checkpoint signing failed at block %d (the block is committed; retrying): %s",
                          head.height, e)
            self.failure = e
            return
        if self.failure is not None:
            log.info("checkpoint signing works again (signed block %d)", head.height)
        self.failure = None

    def latest(self) -> SignedCheckpoint:
        cp = self._latest
        if cp is None:
            raise InconsistentCheckpoint("no checkpoint has been signed yet")
        return cp

    def _check_consistent(self, size: int, root: bytes) -> None:
        if size < self.floor:
            raise BelowPeerCheckpoint(
                f"refusing to sign tree size {size}: {self.floor_source or 'a peer'} holds a checkpoint of this "
                f"origin at size {self.floor} (was an old copy of the data directory restored?)")
        if self._guard is None:
            return
        old_size, old_root = self._guard
        if size < old_size:
            raise InconsistentCheckpoint(
                f"refusing to sign tree size {size}: this key already signed size {old_size} "
                "(was the data directory rolled back or truncated?)")
        try:
            proof = self._reader.consistency_proof(old_size, size)
            verify_consistency(old_size, size, old_root, root, proof)
        except ProofError as e:
            raise InconsistentCheckpoint(
                f"refusing to sign tree size {size}: not consistent with the signed size {old_size}: {e}"
            ) from e

    def _sign(self, head: Head) -> SignedCheckpoint:
        with self._lock:
            root = self._reader.root_at(head.tree_size) if head.tree_size else _empty_root()
            self._check_consistent(head.tree_size, root)
            if self._choose is not None:
                signer = self._choose(head.tree_size)
                if signer is not self._signer:
                    self._signer = signer
                    self.verifier_key = signer.verifier.to_string()
            body = Checkpoint(self._origin, head.tree_size, root, (
                f"block {head.height} {head.block_hash.hex()}",
                f"chain {head.chain_head.hex()}",
                f"time {head.last_timestamp_ns}",
            )).to_body()
            note = sign_note(body, self._signer)
            if self._guard is None or self._guard != (head.tree_size, root):
                self._store_guard(head.tree_size, root)
                self._guard = (head.tree_size, root)
            cp = SignedCheckpoint(note, head.tree_size, root, head.height, self.verifier_key)
            self._latest = cp
            return cp


#: Fault injection for tests: while the file this variable names exists, writing the guard fails
#: like a full disk would (ENOSPC). Unset in production.
FAULT_ENV = "SOVLEDGER_FAULT_SIGNER_GUARD"


def _injected_fault() -> None:
    path = os.environ.get(FAULT_ENV)
    if path and os.path.exists(path):
        raise OSError(errno.ENOSPC, f"No space left on device (injected by {FAULT_ENV})")


def _empty_root() -> bytes:
    from ledger.hashing import EMPTY_ROOT

    return EMPTY_ROOT
