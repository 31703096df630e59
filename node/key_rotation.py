"""Checkpoint signing-key rotation on the node (docs/security.md, "Checkpoint key rotation").

Files in the data directory:

- ``node.key``: the key that signs checkpoints now;
- ``node.key.next``: a generated key announced (or about to be) in a KEY_ROTATION entry;
- ``node.key.retired-KEYID``: a key that was replaced (kept so an operator can inspect it).

The switch follows the log, not the RPC: after every applied block the checkpoint service asks
``KeyRing.signer_for`` with this node's last announced key from the ledger state. Once that key
differs from ``node.key`` and the tree reached its takeover size, ``node.key.next`` (which must be
that key) is promoted. A crash anywhere in between is repaired on the next start the same way.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ledger.note import Signer
from node.keys import load_key_file, write_key_file

log = logging.getLogger("sovledger.keys")

# (key id, public key, takeover size, rotation leaf index): the node's last announced key in the log
Announced = tuple[bytes, bytes, int, int]


class KeyRing:
    def __init__(self, data_dir: Path, current: Signer) -> None:
        self._dir = data_dir
        self.current = current
        self._warned: bytes = b""

    @property
    def next_path(self) -> Path:
        return self._dir / "node.key.next"

    def prepare_next(self) -> Signer:
        """The key to announce: ``node.key.next`` if one is waiting (a retried rotation), else a new one."""
        path = self.next_path
        if path.exists():
            nxt = load_key_file(path)
            if nxt.name == self.current.name and nxt.key_id != self.current.key_id:
                return nxt
        nxt = Signer.generate(self.current.name)
        write_key_file(path, nxt, overwrite=True)
        return nxt

    def signer_for(self, size: int, announced: Announced | None) -> Signer:
        """The key that must sign a checkpoint of tree size ``size`` (promoting the next key when due)."""
        if announced is None:
            return self.current
        key_id, _public, takeover, index = announced
        if key_id == self.current.key_id or size < takeover:
            return self.current
        nxt = load_key_file(self.next_path) if self.next_path.exists() else None
        if nxt is None or nxt.key_id != key_id:
            if self._warned != key_id:
                log.error("the log announces key %s for this node (entry %d) but %s does not hold it; still "
                          "signing with %s, which auditors will refuse", key_id.hex(), index, self.next_path,
                          self.current.key_id.hex())
                self._warned = key_id
            return self.current
        self._promote(nxt)
        log.info("checkpoint key rotated: %s -> %s (announced at entry %d, from tree size %d)",
                 self.current.key_id.hex(), nxt.key_id.hex(), index, takeover)
        self.current = nxt
        return nxt

    def _promote(self, nxt: Signer) -> None:
        retired = self._dir / f"node.key.retired-{self.current.key_id.hex()}"
        write_key_file(retired, self.current, overwrite=True)
        write_key_file(self._dir / "node.key", nxt, overwrite=True)
        os.unlink(self.next_path)
