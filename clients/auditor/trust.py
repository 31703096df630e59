"""The auditor's local trust store: which keys it trusts and the last checkpoint it verified.

A small JSON file (docs/auditor.md, "Trust store")::

    {"version": 1, "origin": "sovledger/local",
     "node_keys": ["local/node-1+1a2b3c4d+AQ…"],       # C2SP verifier keys of the region's nodes
     "psp_keys": ["psp-a+…"],                          # PSP record-signing keys (verify --full)
     "checkpoint": {"size": 1234, "root": "<base64>", "note": "<signed note>"} | null}

It is only ever replaced atomically (write a temp file, fsync, rename, fsync the directory) and
only after a verification succeeded, so a failed or interrupted run never moves trust.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clients.auditor.failures import UsageError
from ledger.note import Checkpoint, KeyFormatError, Verifier

TRUST_VERSION = 1


class TrustStoreError(Exception):
    """The trust file is missing, unreadable or malformed (the message says which and where)."""


@dataclass
class TrustedCheckpoint:
    size: int
    root: bytes
    note: str

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "root": base64.b64encode(self.root).decode(), "note": self.note}


@dataclass
class TrustStore:
    origin: str
    node_keys: list[str] = field(default_factory=list)
    psp_keys: list[str] = field(default_factory=list)
    checkpoint: TrustedCheckpoint | None = None

    @property
    def node_verifiers(self) -> list[Verifier]:
        return [Verifier.parse(k) for k in self.node_keys]

    @property
    def psp_verifiers(self) -> list[Verifier]:
        return [Verifier.parse(k) for k in self.psp_keys]

    def to_json(self) -> dict[str, Any]:
        return {"version": TRUST_VERSION, "origin": self.origin, "node_keys": self.node_keys,
                "psp_keys": self.psp_keys, "checkpoint": self.checkpoint.to_json() if self.checkpoint else None}

    @staticmethod
    def from_json(data: dict[str, Any], where: str = "trust file") -> TrustStore:
        try:
            if data.get("version") != TRUST_VERSION:
                raise TrustStoreError(f"{where}: version {data.get('version')!r}, expected {TRUST_VERSION}")
            cp = data.get("checkpoint")
            store = TrustStore(
                origin=str(data["origin"]), node_keys=[str(k) for k in data.get("node_keys", [])],
                psp_keys=[str(k) for k in data.get("psp_keys", [])],
                checkpoint=TrustedCheckpoint(int(cp["size"]), base64.b64decode(cp["root"], validate=True),
                                             str(cp["note"])) if cp else None,
            )
            store.node_verifiers  # noqa: B018 - validates the key strings
            store.psp_verifiers  # noqa: B018
        except (KeyError, TypeError, ValueError, KeyFormatError) as e:
            raise TrustStoreError(f"{where}: malformed ({type(e).__name__}: {e})") from None
        if not store.node_keys:
            raise TrustStoreError(f"{where}: no trusted node keys")
        return store


def load(path: str | Path) -> TrustStore:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise TrustStoreError(f"trust file {p} does not exist; create it with `sovledger audit trust init`") from None
    except (OSError, ValueError) as e:
        raise TrustStoreError(f"trust file {p}: cannot read ({e})") from None
    return TrustStore.from_json(data, str(p))


def save(path: str | Path, store: TrustStore) -> None:
    """Atomic replace: temp file in the same directory, fsync, rename, fsync the directory."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(store.to_json(), f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)
    dfd = os.open(p.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def load_or_usage(path: str) -> TrustStore:
    """``load`` for the CLI: a missing or malformed trust file is a usage error (exit 2)."""
    try:
        return load(path)
    except TrustStoreError as e:
        raise UsageError(str(e)) from None


def advance(path: str, store: TrustStore, cp: Checkpoint, note: str, update: bool) -> str:
    """After a successful verification: move the trusted checkpoint forward (never back); say what happened."""
    old = store.checkpoint
    if not update:
        return "trust store not updated (--no-update)"
    if old is not None and cp.size <= old.size:
        return "trust store unchanged"
    store.checkpoint = TrustedCheckpoint(cp.size, cp.root, note)
    save(path, store)
    return f"trust store advanced to size {cp.size}"
