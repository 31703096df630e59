"""The start that checks itself: nothing is served before these checks pass (docs/reliability.md).

In order, before the node opens its gRPC port:
  1. an exclusive lock on the data directory (``DATA/LOCK``, flock) — a second process exits,
     naming the pid that holds it;
  2. membership: an empty store that the region still lists as a voter (its peers hold entries)
     refuses to start unless told ``--rejoin``; a rejoining node asks the leader to remove it and
     add it back as a learner, catches up, and the operator promotes it again;
  3. the node key: ``node.key`` is created only on first-time init of an empty directory; a
     directory that already holds a ledger or a signer guard but no key is an error, never a new
     identity;
  4. the store's tail: chain head, the last block's header hash, Merkle root, chain and state hash
     against the head record, the last block's leaves against their committed hashes, and the
     tree against the last checkpoint this key signed (the guard); ``verify_full`` scans every
     block the same way. A mismatch refuses the start with a message naming the block;
  5. the newest checkpoint of this origin that the peers hold: the signer refuses to sign a tree
     below it (an old copy of the data directory must not get this key to sign old state again).
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ledger.codec import BlockHeader, EncodingError
from ledger.hashing import GENESIS_LINK, block_hash, chain_link, leaf_hash
from ledger.note import Checkpoint, NoteError, Signer, Verifier, open_note, split_note
from ledger.reader import DamagedEntry, LedgerReader, RangeError
from ledger.state import Head
from node.config import NodeConfig
from node.guard_file import GUARD_FILE, GuardUnreadable, guard_exists, read_guard
from node.keys import KeyFileError, load_key_file, write_key_file
from node.tls import TlsFiles, blocking_channel, client_files
from sovledger_pb import ledger_pb2 as pb

log = logging.getLogger("sovledger.startup")

LOCK_FILE = "LOCK"
PEER_TIMEOUT_S = 1.0


class StartupRefused(SystemExit):
    """The node must not start; the message says why and what to do. Exits with status 1."""

    def __init__(self, message: str) -> None:
        super().__init__(f"sovledger node: refusing to start: {message}")


@dataclass
class Startup:
    """What the checks leave behind: the held lock (kept open for the process's life) and the key."""

    lock: IO[str]
    key: Signer


def check_store(config: NodeConfig, reader: LedgerReader,
                full_check: Callable[[LedgerReader], None] | None = None) -> Signer:
    """Checks 2–4 over an opened store; returns the node key. Raises ``StartupRefused``."""
    data = Path(config.data_dir)
    head = reader.head()
    holds_ledger = head.height > 0 or head.tree_size > 0
    check_membership(config, holds_ledger)
    key = node_key(data, config.key_name, holds_ledger)
    try:
        verify_tail(reader, _load_guard(data / GUARD_FILE))
        if config.verify_full:
            log.info("verifying every block of the store (--verify-full) …")
            verify_full(reader)
            if full_check is not None:
                full_check(reader)  # the balance replay (sovledger/selfcheck.py)
            log.info("store verified: %d blocks, %d entries", head.height, head.tree_size)
    except StartupRefused:
        raise
    except Exception as e:  # the store itself is unreadable (e.g. a damaged LMDB page)
        raise StartupRefused(f"the store in {data} is unreadable near block {head.height}: "
                             f"{type(e).__name__}: {e}; restore this data directory") from e
    return key


def _load_guard(path: Path) -> tuple[int, bytes] | None:
    """The last signed (size, root): ``signer-guard.bin``, or a not yet migrated ``signer-guard.json``."""
    try:
        rec = read_guard(path)
    except GuardUnreadable as e:
        raise StartupRefused(f"the signer guard is unreadable ({e}); restore the data directory, or move the "
                             "file aside only if this key may sign any tree again") from e
    return None if rec is None else (rec.size, rec.root)


# -- 1. one process per data directory ---------------------------------------------------------


def lock_data_dir(data: Path) -> IO[str]:
    path = data / LOCK_FILE
    f = open(path, "a+")  # noqa: SIM115 - held until the process exits
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise StartupRefused(f"data directory {data} is in use by another node process (pid {holder}); "
                             "stop it first — two processes on one store would fork the log") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


# -- 2. the node key ---------------------------------------------------------------------------


def node_key(data: Path, name: str, holds_ledger: bool) -> Signer:
    path = data / "node.key"
    restored = data / RESTORED_MARKER
    if not path.exists():
        if (holds_ledger or guard_exists(data / GUARD_FILE)) and not restored.exists():
            raise StartupRefused(
                f"{path} is missing but {data} already holds a ledger signed by this node: restore the key "
                "file from your backup (a new key would be a new identity the region does not know)")
        signer = Signer.generate(name)  # first-time init of an empty or freshly restored data directory
        write_key_file(path, signer)
        restored.unlink(missing_ok=True)
        log.warning("first start: created node key %s (%s)%s", path, signer.verifier.to_string(),
                    " for a restored ledger: give auditors this verifier key" if holds_ledger else "")
        return signer
    try:
        signer = load_key_file(path)
    except (KeyFileError, NoteError) as e:
        raise StartupRefused(f"cannot use node key {path}: {e}") from e
    if signer.name != name:
        raise StartupRefused(f"{path} holds key {signer.name!r} but this node is {name!r}; "
                             "fix --region/--node-id or move the key")
    return signer


# -- 3. the store checks itself ----------------------------------------------------------------


def verify_tail(reader: LedgerReader, guard: tuple[int, bytes] | None) -> Head:
    """The last block against the head record, its leaves, the tree and the signer guard."""
    head = reader.head()
    if head.height == 0:
        if head.tree_size:
            raise StartupRefused(f"the head record says {head.tree_size} entries but no block")
        return head
    try:
        _verify_block(reader, head.height, head)
        _verify_guard(reader, head, guard)
    except DamagedEntry as e:
        raise StartupRefused(f"block {head.height}: {e}") from e
    return head


def verify_full(reader: LedgerReader, progress: Callable[[int], None] | None = None) -> None:
    """Every block, in order: header chain, leaves, chain head, Merkle root; then every stored tree node
    (``--verify-full``)."""
    head = reader.head()
    for height in range(1, head.height + 1):
        try:
            _verify_block(reader, height, head if height == head.height else None)
        except DamagedEntry as e:
            raise StartupRefused(f"block {height}: {e}") from e
        if progress is not None and height % 1000 == 0:
            progress(height)
    try:  # every stored tree node too: a block's root reads only the nodes of its own size's path
        reader.check_tree_nodes(head.tree_size)
    except DamagedEntry as e:
        raise StartupRefused(f"tree nodes: {e}") from e


def _header(reader: LedgerReader, height: int) -> tuple[bytes, BlockHeader]:
    raw = reader.blocks(height, height + 1)
    if not raw:
        raise StartupRefused(f"block {height}: header missing from the store")
    try:
        return raw[0], BlockHeader.decode(raw[0])
    except EncodingError as e:
        raise StartupRefused(f"block {height}: header unreadable: {e}") from e


def _verify_block(reader: LedgerReader, height: int, head: Head | None) -> None:
    raw, hdr = _header(reader, height)
    where = f"block {height}"
    if hdr.height != height:
        raise StartupRefused(f"{where}: header says height {hdr.height}")
    if head is not None:
        for what, want, got in (("block hash", head.block_hash, block_hash(raw)),
                                ("tree size", head.tree_size, hdr.tree_size),
                                ("chain head", head.chain_head, hdr.chain_head),
                                ("state hash", head.state_hash, hdr.state_hash)):
            if want != got:
                raise StartupRefused(f"{where}: the stored header's {what} does not match the head record "
                                     "(header or head altered on disk); restore this data directory")
    link, first = GENESIS_LINK, 0
    if height > 1:
        prev_raw, prev = _header(reader, height - 1)
        if block_hash(prev_raw) != hdr.prev_block_hash:
            raise StartupRefused(f"block {height - 1}: its header does not hash to block {height}'s link")
        link, first = prev.chain_head, prev.tree_size
    if hdr.first_index != first or hdr.tree_size != first + hdr.leaf_count:
        raise StartupRefused(f"{where}: leaf range [{hdr.first_index}, {hdr.tree_size}) is not continuous")
    try:
        for chunk in reader.leaves(first, hdr.tree_size):
            for leaf in chunk:
                link = chain_link(link, leaf_hash(leaf))
        root = reader.root_at(hdr.tree_size) if hdr.tree_size else None
    except RangeError as e:
        raise StartupRefused(f"{where}: {e}") from e
    if link != hdr.chain_head:
        raise StartupRefused(f"{where}: the chain recomputed over entries [{first}, {hdr.tree_size}) differs "
                             "from the header's chain head")
    if root is not None and root != hdr.merkle_root:
        raise StartupRefused(f"{where}: the stored Merkle tree's root differs from the header's")


def _verify_guard(reader: LedgerReader, head: Head, guard: tuple[int, bytes] | None) -> None:
    if guard is None or guard[0] == 0 or guard[0] > head.tree_size:
        return  # the signer itself refuses a store that went backwards (node/signing.py)
    if reader.root_at(guard[0]) != guard[1]:
        raise StartupRefused(f"the stored tree at size {guard[0]} differs from the checkpoint this key signed "
                             f"({GUARD_FILE}): history was rewritten on disk")


#: Left by `sovledger restore` (sovledger/backup.py) in a keyless directory it restored into: the
#: node's first start makes a new key — a new identity auditors are told about — instead of refusing.
RESTORED_MARKER = "RESTORED"


# -- 4. a wiped voter does not vote again with no memory ---------------------------------------


BOOTSTRAP_MARKER = "BOOTSTRAP"  # written by the launcher into a new region's fresh directories


def check_membership(config: NodeConfig, holds_ledger: bool) -> None:
    marker = Path(config.data_dir) / BOOTSTRAP_MARKER
    if holds_ledger:
        marker.unlink(missing_ok=True)  # this node holds entries now: it is no longer new
        return
    if not config.peers or marker.exists():
        return  # a single node, or a member of a region being created (peers may already commit)
    busy = [(p.node_id, st) for p in config.peers if (st := _peer_status(p.address, config.tls_files)) is not None
            and st.tree_size > 0]
    if not busy:
        return  # a new region (every store empty), or no peer reachable to tell
    peer, st = busy[0]
    if not (config.join or config.rejoin):
        raise StartupRefused(
            f"this node's store is empty but its region already holds {st.tree_size} entries ({peer} says so) "
            f"and lists {config.node_id} as a voter: a voter that lost its state could vote twice in one term. "
            "Start it with --rejoin: it is demoted to a learner, catches up, and you promote it with "
            f"`sovledger cluster member promote {config.node_id}`")
    if config.rejoin:
        _demote_self(config, st.leader)


def _peer_status(address: str, files: TlsFiles | None) -> pb.StatusResponse | None:
    import grpc

    from sovledger_pb import ledger_pb2_grpc as pb_grpc

    try:
        with blocking_channel(address, files) as ch:
            st: pb.StatusResponse = pb_grpc.AdminStub(ch).Status(pb.StatusRequest(), timeout=PEER_TIMEOUT_S)
            return st
    except grpc.RpcError:
        return None


def _demote_self(config: NodeConfig, leader: str) -> None:
    """Remove this node from the region, then add it back as a learner with fresh progress.

    A plain demotion would keep the leader's memory of what this node had matched before it lost
    its state, and the leader would never send it what it no longer has."""
    import time

    import grpc

    from sovledger_pb import peer_pb2, peer_pb2_grpc

    ops = peer_pb2.MembershipRequest
    deadline = time.monotonic() + 30
    with blocking_channel(leader, _operator_files(config)) as ch:
        admin = peer_pb2_grpc.RegionAdminStub(ch)
        for op in (ops.REMOVE_VOTER, ops.ADD_LEARNER):
            while True:  # one membership change at a time: retry while the previous one applies
                try:
                    reply = admin.ChangeMembership(ops(op=op, node_id=config.node_id, address=config.listen),
                                                   timeout=10)
                    break
                except grpc.RpcError as e:
                    if time.monotonic() > deadline:
                        raise StartupRefused(f"--rejoin: the leader at {leader or '(unknown)'} did not re-add "
                                             f"{config.node_id} as a learner: {e.details()}") from e
                    time.sleep(0.3)
            log.warning("rejoining: %s", reply.message)
    log.warning("rejoining as a learner; promote once caught up: sovledger cluster member promote %s",
                config.node_id)


def _operator_files(config: NodeConfig) -> TlsFiles | None:
    """Membership is an operator's RPC: on a TLS node --rejoin needs an operator's client config
    (never the node's own certificate, which would let a removed member re-admit itself)."""
    if config.tls_files is None:
        return None
    if not config.rejoin_tls_config:
        raise StartupRefused("--rejoin on a TLS node needs an operator's client config to change the membership: "
                             "add --rejoin-tls-config FILE (operator-NAME.toml from `sovledger ca issue --role "
                             "operator`), or have the operator remove this node and add it back as a learner")
    try:
        return client_files(config.rejoin_tls_config)
    except (OSError, ValueError) as e:
        raise StartupRefused(f"--rejoin-tls-config: {e}") from e


# -- 5. the newest checkpoint the peers hold ---------------------------------------------------


def peer_checkpoint_floor(config: NodeConfig) -> tuple[int, str]:
    """The largest tree size of this origin that a reachable peer has signed (0 if none answer)."""
    import grpc

    from sovledger_pb import ledger_pb2_grpc as pb_grpc

    best, who = 0, ""
    trusted = [Verifier.parse(k) for k in config.peer_keys]
    for p in config.peers:
        try:
            with blocking_channel(p.address, config.tls_files) as ch:
                cp = pb_grpc.AuditStub(ch).GetCheckpoint(pb.CheckpointRequest(), timeout=PEER_TIMEOUT_S)
            size = _checked_size(cp.note, config.origin, trusted or [Verifier.parse(cp.verifier_key)])
        except (grpc.RpcError, NoteError, ValueError) as e:
            why = e.details() if isinstance(e, grpc.RpcError) else str(e)
            log.info("peer %s: no checkpoint learned (%s)", p.node_id, why)
            continue
        if size > best:
            best, who = size, p.node_id
    return best, who


def _checked_size(note: str, origin: str, verifiers: list[Verifier]) -> int:
    open_note(note, verifiers)
    body, _ = split_note(note)
    cp = Checkpoint.parse(body)
    if cp.origin != origin:
        raise ValueError(f"origin {cp.origin!r} is not ours")
    return int(cp.size)
