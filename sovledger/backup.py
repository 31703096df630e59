"""``sovledger backup`` and ``sovledger restore``: store copies an operator can trust.

    sovledger backup --node HOST:PORT --out DIR     hot, from a running node (Operations.Backup)
    sovledger backup --data NODE_DIR --out DIR      from a stopped node's data directory
    sovledger restore DIR --data NODE_DIR [--trust-key KEY]… [--force]

A backup directory holds ``data.mdb`` (a consistent LMDB copy of the ledger store),
``checkpoint.note`` (the signed checkpoint the copy matches) and ``manifest.json`` (format, origin,
tree size, root, block, verifier key, and the size and BLAKE3 hash of each file). ``restore``
checks the manifest hashes, the checkpoint's signature (under ``--trust-key`` keys, else the key
recorded in the backup) and the copy's Merkle root at the signed size before it moves the copy
into ``NODE_DIR/ledger``; anything wrong leaves ``NODE_DIR`` untouched. The node's own key
(``node.key``) is never part of a backup.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Final

import blake3
import grpc

from clients.channels import open_sync_channel
from clients.connect import ClientTls, TlsConfigError, add_tls_flags, tls_from_args
from ledger.hashing import leaf_hash
from ledger.invariant import InvariantViolation
from ledger.lmdb_store import DEFAULT_MAP_SIZE_BYTES, LmdbStore
from ledger.merkle import CompactRange
from ledger.note import Checkpoint, Verifier, open_note
from ledger.reader import DamagedEntry, LedgerReader
from node.guard_file import GUARD_FILE, LEGACY_GUARD_FILE, GuardUnreadable, read_guard
from node.keys import load_key_file
from node.signing import CheckpointService
from node.snapshots import SnapshotRejected, verify_and_prepare
from sovledger_pb import ledger_pb2 as pb
from sovledger_pb import ledger_pb2_grpc as pb_grpc

FORMAT: Final = "sovledger-backup/1"
DATA_FILE, NOTE_FILE, MANIFEST_FILE = "data.mdb", "checkpoint.note", "manifest.json"


class BackupError(Exception):
    """A backup could not be made or does not verify; the message says what and where."""


def file_digest(path: Path) -> dict[str, Any]:
    h = blake3.blake3()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return {"bytes": size, "blake3": h.hexdigest()}


def write_manifest(out: Path, note: str, verifier_key: str, source: str) -> dict[str, Any]:
    (out / NOTE_FILE).write_text(note)
    cp = Checkpoint.parse(open_note(note, [Verifier.parse(verifier_key)]).body)
    manifest = {"format": FORMAT, "origin": cp.origin, "tree_size": cp.size, "root": cp.root.hex(),
                "block": int((cp.extension("block") or "0").split()[0]), "verifier_key": verifier_key, "source": source,
                "created_unix_s": int(time.time()),
                "files": {name: file_digest(out / name) for name in (DATA_FILE, NOTE_FILE)}}
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _fresh_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise BackupError(f"{out} exists and is not empty; choose a new directory for each backup")
    out.mkdir(parents=True, exist_ok=True)


def backup_from_node(target: str, out: Path, tls: ClientTls | None = None,
                     timeout_s: float = 600.0) -> dict[str, Any]:
    """Hot backup over gRPC: the node copies its store in one read transaction and streams it."""
    _fresh_out(out)
    note = vkey = ""
    with (open_sync_channel(target, tls) as ch,
          open(out / DATA_FILE, "wb") as f):
        for chunk in pb_grpc.OperationsStub(ch).Backup(pb.BackupRequest(), timeout=timeout_s):
            f.write(chunk.data)
            if chunk.checkpoint:
                note, vkey = chunk.checkpoint, chunk.verifier_key
        f.flush()
        os.fsync(f.fileno())
    if not note:
        raise BackupError(f"{target} ended the backup stream without its signed checkpoint; retry")
    return write_manifest(out, note, vkey, f"node {target}")


def backup_from_data(data: Path, out: Path, region: str | None) -> dict[str, Any]:
    """Cold backup of a stopped node's data directory, with a checkpoint signed by its own key."""
    if not (data / "ledger" / "data.mdb").exists():
        raise BackupError(f"{data} holds no ledger store (expected {data / 'ledger' / 'data.mdb'})")
    signer = load_key_file(data / "node.key")
    origin = f"sovledger/{region or signer.name.split('/', 1)[0]}"
    _fresh_out(out)
    store = LmdbStore(str(data / "ledger"), DEFAULT_MAP_SIZE_BYTES)
    try:
        reader = LedgerReader(store)
        # the node's own guard applies: never sign anything inconsistent with what it signed before
        try:
            service = CheckpointService(reader, signer, origin, data / GUARD_FILE)
        except GuardUnreadable as e:
            raise BackupError(f"this node's signer guard is unreadable ({e}); the node would refuse to start "
                              "too: restore its data directory") from e
        try:
            service.on_start(reader.head())  # sign first: the copy taken next holds at least this much
            latest = service.latest()
        finally:
            service.close()
        tmp = out / "copy.tmp"
        store.copy_to(str(tmp))
    finally:
        store.close()
    (tmp / DATA_FILE).rename(out / DATA_FILE)
    shutil.rmtree(tmp)
    return write_manifest(out, latest.note, service.verifier_key, f"data directory {data}")


def check_manifest(backup: Path) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads((backup / MANIFEST_FILE).read_text())
    except (OSError, ValueError) as e:
        raise BackupError(f"cannot read {backup / MANIFEST_FILE}: {e}") from e
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{backup} is not a {FORMAT} backup (format {manifest.get('format')!r})")
    for name, want in manifest["files"].items():
        if not (backup / name).exists():
            raise BackupError(f"{backup / name} is missing")
        got = file_digest(backup / name)
        if got != want:
            raise BackupError(f"{backup / name} does not match the manifest: {got['bytes']} bytes, BLAKE3 "
                              f"{got['blake3'][:16]}…; the manifest says {want['bytes']} bytes, "
                              f"{want['blake3'][:16]}…")
    return manifest


def restore(backup: Path, data: Path, trusted_keys: list[str], force: bool = False) -> dict[str, Any]:
    """Verify a backup and install it as ``data/ledger``; raises BackupError with the reason."""
    manifest = check_manifest(backup)
    ledger_dir = data / "ledger"
    if (ledger_dir / "data.mdb").exists() and not force:
        raise BackupError(f"{ledger_dir} already holds a store; stop the node and pass --force to replace it "
                          "(the old store is kept as ledger.before-restore)")
    incoming = data / "restore.incoming"
    shutil.rmtree(incoming, ignore_errors=True)
    incoming.mkdir(parents=True)
    shutil.copyfile(backup / DATA_FILE, incoming / DATA_FILE)
    note = (backup / NOTE_FILE).read_text()
    try:
        try:
            verify_and_prepare(incoming, note, manifest["verifier_key"], manifest["origin"],
                               DEFAULT_MAP_SIZE_BYTES, 0, trusted_keys=trusted_keys)
        except SnapshotRejected as e:
            raise BackupError(f"backup {backup} does not verify: {e}") from e
        _check_every_leaf(incoming, manifest)
        _check_guard(data, manifest, force)
    except BaseException:
        shutil.rmtree(incoming, ignore_errors=True)  # nothing of an unverified copy stays behind
        raise
    (incoming / "lock.mdb").unlink(missing_ok=True)
    if ledger_dir.exists():
        old = data / "ledger.before-restore"
        shutil.rmtree(old, ignore_errors=True)
        ledger_dir.rename(old)
    incoming.rename(ledger_dir)
    if not (data / "node.key").exists():  # a verified restore is the one place a ledger may get a new key
        from node.startup import RESTORED_MARKER

        (data / RESTORED_MARKER).write_text(json.dumps({"tree_size": manifest["tree_size"]}) + "\n")
    return manifest


def _check_every_leaf(directory: Path, manifest: dict[str, Any]) -> None:
    """Re-hash every leaf up to the signed size: the stored tree nodes are not trusted either."""
    size = int(manifest["tree_size"])
    copy = LmdbStore(str(directory), DEFAULT_MAP_SIZE_BYTES)
    try:
        tree = CompactRange()
        for chunk in LedgerReader(copy).leaves(0, size, 4096):
            tree.append_many([leaf_hash(leaf) for leaf in chunk], min_level=64)
        root = tree.root()
    except DamagedEntry as e:
        raise BackupError(f"the copy's stored {e.which} does not match the tree it was committed under "
                          f"({e.detail}): a leaf was altered") from e
    except InvariantViolation as e:
        raise BackupError(f"backup copy is damaged: {e}") from e
    finally:
        copy.close()
    if root.hex() != manifest["root"]:
        raise BackupError(f"the Merkle root recomputed from the copy's {size:,} leaves is {root.hex()[:16]}…, "
                          f"the signed checkpoint says {manifest['root'][:16]}…: a leaf was altered")


def _check_guard(data: Path, manifest: dict[str, Any], force: bool) -> None:
    """A node key that already signed a larger tree would refuse to sign this older one at start."""
    guard = data / GUARD_FILE
    try:
        rec = read_guard(guard)
    except GuardUnreadable as e:
        raise BackupError(f"this node's signer guard is unreadable ({e}); fix or move it aside first") from e
    if rec is None or rec.size <= manifest["tree_size"]:
        return
    if not force:
        raise BackupError(f"this node's key already signed a tree of {rec.size} entries, the backup holds "
                          f"{manifest['tree_size']}: restoring it rolls the published log back. Re-seed the node "
                          "from a replica instead, or pass --force to move the guard aside (auditors will see "
                          "the rollback)")
    for name in (GUARD_FILE, LEGACY_GUARD_FILE):
        if (data / name).exists():
            (data / name).rename(data / f"{name}.before-restore")


def _cmd_backup(args: argparse.Namespace) -> int:
    try:
        if bool(args.node) == bool(args.data):
            raise BackupError("give exactly one of --node HOST:PORT (hot) or --data NODE_DIR (stopped node)")
        out = Path(args.out)
        if args.node:
            m = backup_from_node(args.node, out, tls_from_args(args, "operator-operator.toml"))
        else:
            m = backup_from_data(Path(args.data), out, args.region)
    except (BackupError, OSError, TlsConfigError) as e:
        print(f"sovledger backup: {e}", file=sys.stderr)
        return 1
    except grpc.RpcError as e:
        print(f"sovledger backup: {args.node}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    print(json.dumps(m, indent=2, sort_keys=True) if args.json else
          f"backup of {m['origin']} in {args.out}: {m['tree_size']:,} entries signed (block {m['block']}), "
          f"root {m['root'][:16]}…, {m['files'][DATA_FILE]['bytes']:,} bytes")
    return 0


def _cmd_restore(args: argparse.Namespace) -> int:
    try:
        m = restore(Path(args.backup), Path(args.data), list(args.trust_key or []), args.force)
    except (BackupError, OSError) as e:
        print(f"sovledger restore: {e}", file=sys.stderr)
        return 1
    region = m["origin"].split("/", 1)[-1]
    print(f"restored {m['tree_size']:,} signed entries (block {m['block']}) of {m['origin']} into {args.data}/ledger; "
          f"verified: manifest hashes, checkpoint signature, Merkle root at size {m['tree_size']:,}\n"
          f"start it with: sovledger node --data {args.data} --region {region}")
    return 0


def register(sub: Any) -> None:
    b = sub.add_parser("backup", help="back up a node's store with its signed checkpoint",
                       description="Hot from a running node (--node) or from a stopped data directory (--data).")
    b.add_argument("--node", default=None, help="running node HOST:PORT (hot backup)")
    b.add_argument("--data", default=None, help="a stopped node's data directory")
    b.add_argument("--out", required=True, help="new, empty backup directory")
    b.add_argument("--region", default=None, help="with --data: region name (default: from the node key's name)")
    b.add_argument("--json", action="store_true", help="print the manifest")
    add_tls_flags(b)
    b.set_defaults(func=_cmd_backup)
    r = sub.add_parser("restore", help="verify a backup and install it as a node's store",
                       description="Checks manifest hashes, the checkpoint signature and the Merkle root "
                                   "at the signed size, then installs the copy as NODE_DIR/ledger.")
    r.add_argument("backup", help="backup directory (made by `sovledger backup`)")
    r.add_argument("--data", required=True, help="the node's data directory to restore into")
    r.add_argument("--trust-key", action="append",
                   help="verifier key the checkpoint must be signed by (repeatable; default: the key in the backup)")
    r.add_argument("--force", action="store_true", help="replace an existing store (kept as ledger.before-restore)")
    r.set_defaults(func=_cmd_restore)
