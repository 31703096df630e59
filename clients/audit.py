"""`sovledger audit`: the auditor's verification tool (docs/auditor.md).

    audit trust init   --node HOST:PORT --trust FILE [--key VKEY …] [--psp-key VKEY …]
    audit trust show   --trust FILE
    audit trust add-key --trust FILE (--node-key VKEY | --psp-key VKEY)
    audit verify       (--node HOST:PORT | --file EXPORT) --trust FILE [--full] [--json]
    audit prove        TRANSFER_ID --node HOST:PORT [--trust FILE] [--json]
    audit compare      --nodes A,B,C [--trust FILE] [--json]
    audit export       --node HOST:PORT --out FILE [--trust FILE]

Verification is local: the node only supplies bytes (signed notes, proofs, leaves, headers); every
hash, proof and balance is recomputed here with the pure ledger modules. Each failure class has
its own exit code (``clients.audit_core.EXIT_*``) and names the node, index or block and what
mismatched. Pure: imports only ``sovledger_pb``/``grpc`` (via clients.client) and pure ledger modules.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from clients import trust as trustmod
from clients.audit_core import (
    EXIT_OK,
    AuditFailure,
    CheckpointSignatureError,
    ForkDetected,
    InconsistentLog,
    LogTruncated,
    LogVerifier,
    RollbackDetected,
    Unreachable,
    UsageError,
    ab,
    compare_accounts,
    describe_leaf,
    iter_blocks,
    read_export,
    write_export,
)
from clients.client import LedgerClient
from clients.trust import TrustedCheckpoint, TrustStore, TrustStoreError
from ledger.codec import BLOCK_HEADER, LEAF_HEADER_SIZE, decode_leaf
from ledger.hashing import leaf_hash
from ledger.merkle import ProofError, root_from_inclusion, verify_consistency, verify_inclusion
from ledger.note import (
    BadSignature,
    Checkpoint,
    NoteError,
    NoTrustedSignature,
    Verifier,
    open_note,
    split_note,
)
from sovledger_pb import ledger_pb2 as pb

LOOKUP_MAX = 8189
LOCATE_MAX = 4096  # inclusion proofs fetched to name the bad leaf of a block


# -- node access ------------------------------------------------------------------------------------


class Node:
    """One node, with gRPC errors turned into typed audit failures that name it."""

    def __init__(self, target: str, timeout_s: float = 30.0) -> None:
        self.target = target
        self.client = LedgerClient(target, timeout_s=timeout_s)

    def close(self) -> None:
        self.client.close()

    def call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except grpc.RpcError as e:
            raise self.rpc_failure(what, e) from None

    def rpc_failure(self, what: str, e: grpc.RpcError) -> AuditFailure:
        code = e.code() if hasattr(e, "code") else None
        detail = e.details() if hasattr(e, "details") else str(e)
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, None):
            return Unreachable(f"node {self.target} is unreachable ({what}): {detail}", node=self.target)
        return AuditFailure(f"node {self.target}: {what} failed: {code.name}: {detail}", node=self.target)

    def checkpoint(self) -> Any:
        return self.call("GetCheckpoint", self.client.checkpoint)

    def entries(self, start: int, end: int) -> Iterator[bytes]:
        """Leaves [start, end); a stream that breaks early is reported as truncation at the index reached."""
        n = start
        try:
            for leaf in self.client.entries(start, end):
                yield leaf
                n += 1
        except grpc.RpcError as e:
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise Unreachable(f"node {self.target} became unreachable after leaf {n}", node=self.target,
                                  index=n) from None
            raise LogTruncated(f"node {self.target} served leaves [{start}, {n}) then failed "
                               f"({e.code().name}: {e.details()}); the signed checkpoint covers [0, {end})",
                               node=self.target, index=n, expected=end, got=n) from None
        if n < end:
            raise LogTruncated(f"node {self.target} served leaves [{start}, {n}), the signed checkpoint covers "
                               f"[0, {end})", node=self.target, index=n, expected=end, got=n)

    def blocks(self, start: int, end: int) -> Iterator[bytes]:
        try:
            yield from self.client.blocks(start, end)
        except grpc.RpcError as e:
            raise self.rpc_failure("StreamBlocks", e) from None


# -- checkpoints and trust --------------------------------------------------------------------------


def verify_note(note: str, verifiers: list[Verifier], origin: str | None, source: str) -> Checkpoint:
    """A checkpoint note signed by at least one of ``verifiers`` (any bad signature by one of them fails)."""
    try:
        signed = open_note(note, verifiers)
    except BadSignature as e:
        raise CheckpointSignatureError(
            f"{source}: checkpoint signature by {e.name} (key id {e.key_id.hex()}) does not verify over the note "
            "body", node=source, key=e.name, key_id=e.key_id, note=note) from None
    except NoTrustedSignature:
        try:
            names = [f"{s.name} ({s.key_id.hex()})" for s in split_note(note)[1]]
        except NoteError:
            names = []
        trusted = [f"{v.name} ({v.key_id.hex()})" for v in verifiers]
        raise CheckpointSignatureError(
            f"{source}: checkpoint is signed by {', '.join(names) or 'nobody'}, none of them trusted "
            f"(trusted: {', '.join(trusted)})", node=source, signers=names, trusted=trusted, note=note) from None
    except NoteError as e:
        raise CheckpointSignatureError(f"{source}: checkpoint note is malformed: {e}", node=source, note=note) from None
    try:
        cp = Checkpoint.parse(signed.body)
    except NoteError as e:
        raise CheckpointSignatureError(f"{source}: signed body is not a checkpoint: {e}", node=source) from None
    if origin is not None and cp.origin != origin:
        raise CheckpointSignatureError(f"{source}: checkpoint origin {cp.origin!r}, the trust store is for "
                                       f"{origin!r}", node=source, expected=origin, got=cp.origin)
    return cp


def check_against_trusted(cp: Checkpoint, note: str, trusted: TrustedCheckpoint | None, source: str,
                          consistency: Callable[[int, int], list[bytes]] | None) -> str:
    """Append-only check against the last trusted checkpoint; returns a one-line description."""
    if trusted is None:
        return "no earlier checkpoint trusted (first verification)"
    if cp.size < trusted.size:
        raise RollbackDetected(
            f"{source}: rollback: signed checkpoint has tree size {cp.size}, smaller than the trusted size "
            f"{trusted.size} (root {ab(cp.root)} vs trusted {ab(trusted.root)})", node=source,
            expected=trusted.size, got=cp.size, trusted_note=trusted.note, note=note)
    if cp.size == trusted.size:
        if cp.root != trusted.root:
            raise ForkDetected(
                f"{source}: fork: two signed checkpoints of size {cp.size} with different roots: trusted "
                f"{ab(trusted.root)}, now {ab(cp.root)}", node=source, size=cp.size, expected=trusted.root,
                got=cp.root, trusted_note=trusted.note, note=note)
        return f"same tree as trusted (size {cp.size})"
    if consistency is None:  # offline: the replay checks the root at the trusted size
        return f"extends trusted size {trusted.size} (root at that size checked during the replay)"
    proof = consistency(trusted.size, cp.size)
    try:
        verify_consistency(trusted.size, cp.size, trusted.root, cp.root, proof)
    except ProofError as e:
        raise InconsistentLog(
            f"{source}: signed checkpoint of size {cp.size} is not an extension of the trusted checkpoint of size "
            f"{trusted.size}: {e}", node=source, trusted_size=trusted.size, size=cp.size,
            trusted_note=trusted.note, note=note) from None
    return f"consistent with trusted size {trusted.size} ({len(proof)}-hash proof verified)"


def _load_trust(path: str) -> TrustStore:
    try:
        return trustmod.load(path)
    except TrustStoreError as e:
        raise UsageError(str(e)) from None


def _update_trust(path: str, store: TrustStore, cp: Checkpoint, note: str, update: bool) -> str:
    old = store.checkpoint
    if not update:
        return "trust store not updated (--no-update)"
    if old is not None and cp.size <= old.size:
        return "trust store unchanged"
    store.checkpoint = TrustedCheckpoint(cp.size, cp.root, note)
    trustmod.save(path, store)
    return f"trust store advanced to size {cp.size}"


# -- output -----------------------------------------------------------------------------------------


class Out:
    def __init__(self, as_json: bool) -> None:
        self.json = as_json
        self.console = Console(stderr=False, highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False)

    def warn(self, text: str) -> None:
        self.err.print(f"[bold yellow]WARNING[/]: {text}")

    def progress(self, total: int, label: str) -> Progress:
        return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("entries"),
                        TimeRemainingColumn(), console=self.err, transient=True,
                        disable=self.json or not self.err.is_terminal or total < 50_000)

    def result(self, title: str, rows: list[tuple[str, str]], data: dict[str, Any]) -> None:
        if self.json:
            print(json.dumps({"ok": True, **data}, indent=2, default=str))
            return
        t = Table(title=title, show_header=True, header_style="bold")
        t.add_column("check")
        t.add_column("result", overflow="fold")
        for k, v in rows:
            t.add_row(k, v)
        self.console.print(t)

    def failure(self, e: AuditFailure) -> int:
        if self.json:
            print(json.dumps({"ok": False, "error": e.to_json()}, indent=2, default=str))
            return e.exit_code
        t = Table(title=f"[bold red]AUDIT FAILED[/] ({e.kind}, exit {e.exit_code})", show_header=False)
        t.add_column("key", style="bold")
        t.add_column("value", overflow="fold")
        t.add_row("problem", e.message)
        for k, v in e.data.items():
            if k in ("note", "trusted_note", "note_a", "note_b", "leaf_a", "leaf_b"):
                continue
            t.add_row(k, v.hex() if isinstance(v, bytes) else str(v))
        self.console.print(t)
        for k in ("trusted_note", "note", "note_a", "note_b"):
            if isinstance(e.data.get(k), str):
                self.console.print(f"[bold]{k.replace('_', ' ')}[/]:")
                self.console.print(e.data[k], markup=False)
        for k in ("leaf_a", "leaf_b"):
            if isinstance(e.data.get(k), dict):
                self.console.print(f"[bold]{k.replace('_', ' ')}[/]: {json.dumps(e.data[k])}", markup=False)
        return e.exit_code


# -- verify -----------------------------------------------------------------------------------------


def _locator(node: Node, cp: Checkpoint) -> Callable[[int, list[bytes]], list[int]]:
    """Names the leaves of a block that do not verify against the signed root (inclusion proofs)."""

    def locate(first: int, hashes: list[bytes]) -> list[int]:
        bad = []
        for k, lh in enumerate(hashes[:LOCATE_MAX]):
            try:
                resp = node.client.inclusion_proof(index=first + k, tree_size=cp.size)
                verify_inclusion(lh, first + k, cp.size, list(resp.proof), cp.root)
            except ProofError:
                bad.append(first + k)
            except grpc.RpcError:
                break
        return bad

    return locate


def _replay(out: Out, verifier: LogVerifier, headers: Iterator[bytes], leaves: Iterator[bytes], total: int,
            label: str) -> None:
    with out.progress(total, label) as bar:
        task = bar.add_task("verify", total=total)
        for h, ls in iter_blocks(headers, leaves):
            verifier.feed_block(h, ls)
            bar.update(task, advance=len(ls))


def _block_height(cp: Checkpoint) -> int:
    ext = cp.extension("block")
    if ext is None:
        raise CheckpointSignatureError("signed checkpoint has no 'block' extension line; cannot align blocks")
    return int(ext.split(" ")[0])


def cmd_verify(args: argparse.Namespace, out: Out) -> int:
    store = _load_trust(args.trust)
    if args.file:
        return _verify_file(args, out, store)
    if not args.node:
        raise UsageError("give --node HOST:PORT or --file EXPORT")
    node = Node(args.node, args.timeout)
    try:
        resp = node.checkpoint()
        note = resp.note
        cp = verify_note(note, store.node_verifiers, store.origin, node.target)
        if resp.tree_size != cp.size or bytes(resp.root) != cp.root:
            raise CheckpointSignatureError(
                f"{node.target}: response fields (size {resp.tree_size}, root {ab(bytes(resp.root))}) differ from "
                f"the signed note (size {cp.size}, root {ab(cp.root)})", node=node.target)

        def consistency(first: int, second: int) -> list[bytes]:
            resp = node.call("GetConsistencyProof", lambda: node.client.consistency_proof(first, second))
            return [bytes(h) for h in resp.proof]

        signed_by = ", ".join(s.name for s in open_note(note, store.node_verifiers).verified)
        rows = [("node", node.target), ("origin", cp.origin),
                ("checkpoint", f"size {cp.size}, root {ab(cp.root, 32)}"),
                ("signature", f"✓ signed by {signed_by}"),
                ("append-only", "✓ " + check_against_trusted(cp, note, store.checkpoint, node.target, consistency))]
        data: dict[str, Any] = {"node": node.target, "origin": cp.origin, "size": cp.size, "root": cp.root.hex(),
                                "full": bool(args.full)}
        if args.full:
            rows += _verify_full_online(args, out, node, store, cp, data)
        rows.append(("trust store", _update_trust(args.trust, store, cp, note, not args.no_update)))
        out.result("audit verify" + (" --full" if args.full else ""), rows, data)
        return EXIT_OK
    finally:
        node.close()


def _verify_full_online(args: argparse.Namespace, out: Out, node: Node, store: TrustStore, cp: Checkpoint,
                        data: dict[str, Any]) -> list[tuple[str, str]]:
    height = _block_height(cp)
    trusted = store.checkpoint
    verifier = LogVerifier(psp_keys=store.psp_verifiers, verify_psp=not args.no_psp,
                           checkpoints=[(trusted.size, trusted.root)] if trusted and trusted.size <= cp.size else [],
                           locator=_locator(node, cp))
    t0 = time.perf_counter()
    _replay(out, verifier, node.blocks(1, height + 1), node.entries(0, cp.size), cp.size, f"{node.target}")
    verifier.finish(cp)
    elapsed = time.perf_counter() - t0
    rows = [("entries", f"✓ {verifier.size} leaves: framing, consecutive indexes, increasing timestamps, leaf "
                        f"hashes, chain head {ab(verifier.link)}, Merkle root = signed root"),
            ("blocks", f"✓ {verifier.height} headers: hash chain, continuity, roots, chain heads, state hashes; "
                       f"last block hash = signed 'block' line")]
    states = verifier.account_states()
    ids = sorted(states)
    node_states: dict[bytes, bytes | None] = {}
    for i in range(0, len(ids), LOOKUP_MAX):
        chunk = ids[i : i + LOOKUP_MAX]
        req = pb.LookupRequest(ids=chunk)
        resp = node.call("LookupAccounts", partial(node.client.ledger.LookupAccounts, req,
                                                   timeout=node.client.timeout_s))
        for aid, info in zip(chunk, resp.accounts, strict=True):
            node_states[aid] = bytes(info.state) if info.found else None
    after = node.checkpoint()
    if after.tree_size != cp.size:
        out.warn(f"{node.target} advanced from size {cp.size} to {after.tree_size} during the audit: balances "
                 "were not compared (the per-block state hashes were); re-run on a quiet node to compare them")
        rows.append(("balances", f"~ {len(states)} accounts replayed; node advanced, lookup comparison skipped"))
    else:
        compare_accounts(states, node_states, node.target)
        rows.append(("balances", f"✓ {len(states)} accounts replayed from recorded effects = LookupAccounts"))
    st = verifier.stats
    psp = f"✓ {st.psp_verified} PSP signatures verified" if not args.no_psp else "skipped (--no-psp)"
    if st.psp_unknown:
        psp += "; signatures by UNKNOWN key ids (not verified): " + ", ".join(
            f"{k} ×{n}" for k, n in sorted(st.psp_unknown.items()))
        out.warn("PSP signatures by key ids not in the trust store: " + ", ".join(sorted(st.psp_unknown)))
    rows.append(("PSP signatures", psp))
    rows.append(("speed", f"{verifier.size / elapsed:,.0f} entries/s (network included)" if elapsed > 0 else "-"))
    data.update(leaves=verifier.size, blocks=verifier.height, accounts=len(states), chain_head=verifier.link.hex(),
                psp_verified=st.psp_verified, psp_unknown=dict(st.psp_unknown), seconds=round(elapsed, 3))
    return rows


def _verify_file(args: argparse.Namespace, out: Out, store: TrustStore) -> int:
    try:
        raw = Path(args.file).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {args.file}: {e}") from None
    exp = read_export(raw)
    note = str(exp.meta.get("checkpoint_note", ""))
    cp = verify_note(note, store.node_verifiers, store.origin, args.file)
    rows = [("file", args.file), ("origin", cp.origin), ("checkpoint", f"size {cp.size}, root {ab(cp.root, 32)}"),
            ("signature", "✓ signed by " + ", ".join(s.name for s in open_note(note, store.node_verifiers).verified)),
            ("append-only", "✓ " + check_against_trusted(cp, note, store.checkpoint, args.file, None))]
    trusted = store.checkpoint
    verifier = LogVerifier(psp_keys=store.psp_verifiers, verify_psp=not args.no_psp,
                           checkpoints=[(trusted.size, trusted.root)] if trusted and trusted.size <= cp.size else [])
    height = _block_height(cp)
    t0 = time.perf_counter()
    _replay(out, verifier, iter(exp.headers[:height]), iter(exp.leaves[: cp.size]), cp.size, args.file)
    if not exp.complete and verifier.size < cp.size:
        raise LogTruncated(f"{args.file}: the export ends after {len(exp.leaves)} leaves and {len(exp.headers)} "
                           f"headers (no valid END frame); the signed checkpoint covers {cp.size} leaves",
                           index=len(exp.leaves), expected=cp.size, got=len(exp.leaves))
    verifier.finish(cp)
    elapsed = time.perf_counter() - t0
    rows += [("entries", f"✓ {verifier.size} leaves re-hashed; chain head and Merkle root = signed checkpoint"),
             ("blocks", f"✓ {verifier.height} headers, state hashes from replayed balances"),
             ("PSP signatures", f"✓ {verifier.stats.psp_verified} verified" + (
                 "; unknown key ids: " + ", ".join(sorted(verifier.stats.psp_unknown)) if verifier.stats.psp_unknown
                 else "")),
             ("speed", f"{verifier.size / elapsed:,.0f} entries/s" if elapsed > 0 else "-"),
             ("trust store", _update_trust(args.trust, store, cp, note, not args.no_update))]
    out.result("audit verify --file", rows, {"file": args.file, "size": cp.size, "root": cp.root.hex(),
                                             "leaves": verifier.size, "blocks": verifier.height,
                                             "psp_verified": verifier.stats.psp_verified})
    return EXIT_OK


# -- trust ------------------------------------------------------------------------------------------


def cmd_trust_init(args: argparse.Namespace, out: Out) -> int:
    if Path(args.trust).exists() and not args.force:
        raise UsageError(f"{args.trust} exists; refusing to replace a trust store (use --force)")
    node = Node(args.node, args.timeout)
    try:
        resp = node.checkpoint()
        if args.key:
            keys = list(args.key)
        else:
            keys = [resp.verifier_key]
            out.warn(f"TRUST ON FIRST USE: trusting the key that {node.target} itself advertises, "
                     f"{resp.verifier_key}. Anyone able to impersonate this node right now could make you trust "
                     "their key: compare it with the operator's published key, or pass --key.")
        try:
            verifiers = [Verifier.parse(k) for k in keys]
            psp = [Verifier.parse(k).to_string() for k in args.psp_key or []]
        except NoteError as e:
            raise UsageError(f"bad verifier key: {e}") from None
        cp = verify_note(resp.note, verifiers, None, node.target)
        store = TrustStore(origin=cp.origin, node_keys=[v.to_string() for v in verifiers], psp_keys=psp,
                           checkpoint=TrustedCheckpoint(cp.size, cp.root, resp.note))
        trustmod.save(args.trust, store)
        out.result("audit trust init", [("trust file", args.trust), ("origin", cp.origin),
                                         ("node keys", "\n".join(store.node_keys)),
                                         ("psp keys", "\n".join(store.psp_keys) or "-"),
                                         ("checkpoint", f"size {cp.size}, root {ab(cp.root, 32)}")],
                   {"trust": args.trust, **store.to_json()})
        return EXIT_OK
    finally:
        node.close()


def cmd_trust_show(args: argparse.Namespace, out: Out) -> int:
    store = _load_trust(args.trust)
    cp = store.checkpoint
    out.result("trust store", [("origin", store.origin), ("node keys", "\n".join(store.node_keys)),
                               ("psp keys", "\n".join(store.psp_keys) or "-"),
                               ("checkpoint", f"size {cp.size}, root {ab(cp.root, 32)}" if cp else "-")],
               store.to_json())
    return EXIT_OK


def cmd_trust_add_key(args: argparse.Namespace, out: Out) -> int:
    store = _load_trust(args.trust)
    try:
        for k in args.node_key or []:
            store.node_keys.append(Verifier.parse(k).to_string())
        for k in args.psp_key or []:
            store.psp_keys.append(Verifier.parse(k).to_string())
    except NoteError as e:
        raise UsageError(f"bad verifier key: {e}") from None
    store.node_keys = list(dict.fromkeys(store.node_keys))
    store.psp_keys = list(dict.fromkeys(store.psp_keys))
    trustmod.save(args.trust, store)
    return cmd_trust_show(args, out)


# -- prove ------------------------------------------------------------------------------------------


def parse_u128(text: str) -> int:
    try:
        value = int(text, 16) if text.lower().startswith("0x") else int(text, 10)
    except ValueError:
        raise UsageError(f"transfer id {text!r} is neither decimal nor 0x-hex") from None
    if not 0 < value < 1 << 128:
        raise UsageError(f"transfer id {text} is outside 1..2^128-1")
    return value


def cmd_prove(args: argparse.Namespace, out: Out) -> int:
    tid = parse_u128(args.transfer_id)
    store = _load_trust(args.trust) if args.trust else None
    node = Node(args.node, args.timeout)
    try:
        resp = node.call("GetInclusionProof", lambda: node.client.inclusion_proof(transfer_id=tid))
        if store is not None:
            verifiers, origin = store.node_verifiers, store.origin
        else:
            vkey = node.checkpoint().verifier_key
            out.warn(f"no --trust: checking the checkpoint against the key the node advertises ({vkey})")
            verifiers, origin = [Verifier.parse(vkey)], None
        cp = verify_note(resp.note, verifiers, origin, node.target)
        leaf = bytes(resp.leaf)
        if cp.size != resp.tree_size:
            raise CheckpointSignatureError(f"{node.target}: proof is for size {resp.tree_size}, the signed "
                                           f"checkpoint for {cp.size}", node=node.target)
        body_id = int.from_bytes(leaf[LEAF_HEADER_SIZE : LEAF_HEADER_SIZE + 16], "little")
        decoded = describe_leaf(leaf)
        if body_id != tid or decoded.get("kind") not in ("CREATE_TRANSFER", "LEDGER_TRANSFER"):
            raise InconsistentLog(f"{node.target}: asked for transfer {tid}, the proven leaf {resp.index} holds "
                                  f"{decoded.get('kind')} {body_id}", node=node.target, index=resp.index)
        if decode_leaf(leaf).index != resp.index:
            raise InconsistentLog(f"{node.target}: leaf says index {decode_leaf(leaf).index}, proof is for "
                                  f"{resp.index}", node=node.target, index=resp.index)
        try:
            verify_inclusion(leaf_hash(leaf), resp.index, cp.size, list(resp.proof), cp.root)
        except ProofError as e:
            raise InconsistentLog(f"{node.target}: inclusion proof of leaf {resp.index} does not verify against "
                                  f"the signed root {ab(cp.root)}: {e}", node=node.target, index=resp.index) from None
        rows = [("transfer", f"{tid} (0x{tid:032x})"), ("leaf index", str(resp.index)),
                ("leaf", ", ".join(f"{k}={v}" for k, v in decoded.items() if k not in ("leaf_hash",))),
                ("leaf hash", leaf_hash(leaf).hex()),
                ("checkpoint", f"{cp.origin}, size {cp.size}, root {cp.root.hex()}"),
                ("signed by", ", ".join(s.name for s in open_note(resp.note, verifiers).verified))]
        for i, h in enumerate(resp.proof):
            rows.append((f"proof[{i}]", bytes(h).hex()))
        rows.append(("result", f"✓ leaf {resp.index} is included in the signed tree of size {cp.size}"))
        out.result("audit prove", rows, {"transfer_id": str(tid), "index": resp.index, "tree_size": cp.size,
                                         "root": cp.root.hex(), "leaf": decoded, "leaf_hash": leaf_hash(leaf).hex(),
                                         "proof": [bytes(h).hex() for h in resp.proof], "note": resp.note})
        return EXIT_OK
    finally:
        node.close()


# -- compare ----------------------------------------------------------------------------------------


def _prefix_root(node: Node, m: int) -> bytes:
    resp = node.call("GetInclusionProof", lambda: node.client.inclusion_proof(index=m - 1, tree_size=m))
    return root_from_inclusion(leaf_hash(bytes(resp.leaf)), m - 1, m, list(resp.proof))


def _leaf_at(node: Node, i: int) -> bytes:
    return next(iter(node.entries(i, i + 1)))


def first_divergence(a: Node, b: Node, n: int) -> int | None:
    """First leaf index < n where the two nodes' leaves differ, or None.

    Binary search over prefix roots (each from an inclusion proof of the prefix's last leaf): O(log n)
    calls while both trees are self-consistent (a fork). A node whose stored tree no longer matches its
    leaves (tampering) can mislead it, so the candidate is confirmed by comparing the two leaves, and a
    lockstep scan of both logs is the fallback."""
    if n <= 0:
        return None
    lo, hi = 0, n  # prefix roots agree at lo (0 trivially); find the smallest m in (lo, hi] that differs
    if _prefix_root(a, n) != _prefix_root(b, n):
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _prefix_root(a, mid) == _prefix_root(b, mid):
                lo = mid
            else:
                hi = mid
        cand = hi - 1
        if _leaf_at(a, cand) != _leaf_at(b, cand):
            earlier = [i for i in range(max(0, cand - 64), cand) if _leaf_at(a, i) != _leaf_at(b, i)]
            if not earlier:
                return cand
    return scan_divergence(a, b, n)


def scan_divergence(a: Node, b: Node, n: int) -> int | None:
    """First index < n where the leaves two nodes serve differ (lockstep scan of both streams)."""
    for i, (x, y) in enumerate(zip(a.entries(0, n), b.entries(0, n), strict=True)):
        if x != y:
            return i
    return None


def _genuine(a: Node, b: Node, idx: int, cp: Checkpoint) -> str:
    """Which of the two leaves at ``idx`` verifies against the signed root (with ``a``'s proof)."""
    resp = a.call("GetInclusionProof", lambda: a.client.inclusion_proof(index=idx, tree_size=cp.size))
    verdict = []
    for node in (a, b):
        try:
            verify_inclusion(leaf_hash(_leaf_at(node, idx)), idx, cp.size, list(resp.proof), cp.root)
            verdict.append(f"{node.target}'s leaf verifies against the signed root")
        except ProofError:
            verdict.append(f"{node.target}'s leaf does NOT verify against the signed root")
    return "; ".join(verdict)


def _raise_fork(big: Node, n: Node, big_note: str, note: str, big_cp: Checkpoint, cp: Checkpoint, problem: str,
                idx: int | None) -> None:
    data: dict[str, Any] = {"node_a": big.target, "node_b": n.target, "note_a": big_note, "note_b": note,
                            "index": idx}
    where = "no differing leaf found (the nodes' stored trees differ)"
    if idx is not None:
        data["leaf_a"] = describe_leaf(_leaf_at(big, idx))
        data["leaf_b"] = describe_leaf(_leaf_at(n, idx))
        where = f"first diverging leaf index {idx}"
    raise ForkDetected(f"nodes disagree: {big.target} (size {big_cp.size}, root {ab(big_cp.root)}) and "
                       f"{n.target} (size {cp.size}, root {ab(cp.root)}): {problem}; {where}", **data)


def cmd_compare(args: argparse.Namespace, out: Out) -> int:
    targets = [t.strip() for t in args.nodes.split(",") if t.strip()]
    if len(targets) < 2:
        raise UsageError("--nodes needs at least two HOST:PORT entries")
    store = _load_trust(args.trust) if args.trust else None
    nodes = [Node(t, args.timeout) for t in targets]
    try:
        seen: list[tuple[Node, str, Checkpoint]] = []
        for n in nodes:
            resp = n.checkpoint()
            if store is not None:
                cp = verify_note(resp.note, store.node_verifiers, store.origin, n.target)
            else:
                cp = verify_note(resp.note, [Verifier.parse(resp.verifier_key)], None, n.target)
            seen.append((n, resp.note, cp))
        if store is None:
            out.warn("no --trust: each node's checkpoint was checked against the key it advertises itself")
        origins = {cp.origin for _, _, cp in seen}
        if len(origins) > 1:
            raise UsageError(f"the nodes serve different logs: origins {sorted(origins)}")
        seen.sort(key=lambda s: -s[2].size)
        big, big_note, big_cp = seen[0]
        rows = [(n.target, f"size {cp.size}, root {ab(cp.root, 32)}") for n, _, cp in seen]
        for n, note, cp in seen[1:]:
            problem = None
            if cp.size == big_cp.size:
                if cp.root != big_cp.root:
                    problem = f"equal size {cp.size}, different roots"
            else:
                proof = list(big.call("GetConsistencyProof",
                                      partial(big.client.consistency_proof, cp.size, big_cp.size)).proof)
                try:
                    verify_consistency(cp.size, big_cp.size, cp.root, big_cp.root, proof)
                except ProofError as e:
                    problem = f"size {cp.size} is not a prefix of {big.target}'s size {big_cp.size}: {e}"
            if problem is None and not args.quick:
                idx = scan_divergence(big, n, cp.size)
                if idx is not None:
                    problem = (f"both sign consistent checkpoints, but the leaves they serve differ; "
                               f"{_genuine(big, n, idx, big_cp)}")
                    _raise_fork(big, n, big_note, note, big_cp, cp, problem, idx)
            if problem is None:
                rows.append((f"{n.target} vs {big.target}",
                             "✓ consistent" + ("" if args.quick else f", {cp.size} leaves identical")))
                continue
            _raise_fork(big, n, big_note, note, big_cp, cp, problem, first_divergence(big, n, cp.size))
        rows.append(("result", f"✓ all {len(nodes)} nodes agree (append-only prefixes)"))
        out.result("audit compare", rows,
                   {"nodes": [{"node": n.target, "size": cp.size, "root": cp.root.hex()} for n, _, cp in seen]})
        return EXIT_OK
    finally:
        for n in nodes:
            n.close()


# -- export -----------------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace, out: Out) -> int:
    node = Node(args.node, args.timeout)
    try:
        resp = node.checkpoint()
        store = _load_trust(args.trust) if args.trust else None
        verifiers = store.node_verifiers if store else [Verifier.parse(resp.verifier_key)]
        cp = verify_note(resp.note, verifiers, store.origin if store else None, node.target)
        height = _block_height(cp)
        headers = list(node.blocks(1, height + 1))
        if headers and BLOCK_HEADER.unpack_from(headers[-1])[5] != cp.size:
            raise AuditFailure(f"{node.target}: block {height} does not end at the checkpoint size {cp.size}")
        meta = {"format": 1, "origin": cp.origin, "node": node.target, "tree_size": cp.size, "block": height,
                "checkpoint_note": resp.note, "verifier_keys": [resp.verifier_key], "created_unix": int(time.time())}
        tmp = Path(args.out).with_name(Path(args.out).name + ".tmp")
        with open(tmp, "wb") as f:
            nh, nl = write_export(f, meta, headers, node.entries(0, cp.size))
        tmp.replace(args.out)
        out.result("audit export", [("file", args.out), ("checkpoint", f"size {cp.size}, block {height}"),
                                    ("contents", f"{nh} block headers, {nl} leaves")],
                   {"file": args.out, "headers": nh, "leaves": nl, "size": cp.size})
        return EXIT_OK
    finally:
        node.close()


# -- argparse ---------------------------------------------------------------------------------------


def _run(fn: Callable[[argparse.Namespace, Out], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        out = Out(getattr(args, "json", False))
        try:
            return fn(args, out)
        except AuditFailure as e:
            return out.failure(e)

    return run


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``audit`` command tree to an argparse subparsers object."""
    a: argparse.ArgumentParser = subparsers.add_parser("audit", help="verify checkpoints, proofs and the whole log",
                              description="The auditor's tool: verifies signed checkpoints, consistency with a "
                              "local trust store, inclusion proofs, and the whole log offline or online. Exit "
                              "codes: 0 ok, 2 usage, 3 unreachable, 10 bad signature, 11 inconsistent/fork/"
                              "rollback, 12 leaf/chain/tree mismatch, 13 block header mismatch, 14 balance "
                              "mismatch, 15 PSP signature invalid (docs/auditor.md).")
    sub = a.add_subparsers(dest="audit_command", metavar="ACTION")

    def common(p: argparse.ArgumentParser, node: bool = True) -> None:
        if node:
            p.add_argument("--node", help="HOST:PORT of a node")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--timeout", type=float, default=30.0, help="per-call timeout, seconds")

    v = sub.add_parser("verify", help="verify the latest checkpoint (and with --full, the whole log)")
    common(v)
    v.add_argument("--trust", required=True, help="trust store file")
    v.add_argument("--file", help="verify an export file instead of a node (no network)")
    v.add_argument("--full", action="store_true", help="stream and re-verify every entry and block header")
    v.add_argument("--no-update", action="store_true", help="do not advance the trust store")
    v.add_argument("--no-psp", action="store_true", help="skip PSP signature verification")
    v.set_defaults(func=_run(cmd_verify))

    t = sub.add_parser("trust", help="manage the local trust store")
    tsub = t.add_subparsers(dest="trust_command", metavar="ACTION")
    ti = tsub.add_parser("init", help="create a trust store (TOFU from the node, or explicit --key)")
    common(ti)
    ti.add_argument("--trust", required=True)
    ti.add_argument("--key", action="append", help="trusted node verifier key (repeatable); default: TOFU")
    ti.add_argument("--psp-key", action="append", help="trusted PSP verifier key (repeatable)")
    ti.add_argument("--force", action="store_true", help="replace an existing trust file")
    ti.set_defaults(func=_run(cmd_trust_init))
    ts = tsub.add_parser("show", help="print the trust store")
    common(ts, node=False)
    ts.add_argument("--trust", required=True)
    ts.set_defaults(func=_run(cmd_trust_show))
    tk = tsub.add_parser("add-key", help="trust another node or PSP key")
    common(tk, node=False)
    tk.add_argument("--trust", required=True)
    tk.add_argument("--node-key", action="append")
    tk.add_argument("--psp-key", action="append")
    tk.set_defaults(func=_run(cmd_trust_add_key))

    p = sub.add_parser("prove", help="inclusion proof of a transfer against a signed checkpoint")
    common(p)
    p.add_argument("transfer_id", help="decimal or 0x-hex u128")
    p.add_argument("--trust", help="trust store (default: the node's advertised key, with a warning)")
    p.set_defaults(func=_run(cmd_prove))

    c = sub.add_parser("compare", help="check that replicas agree; print fork evidence if not")
    common(c, node=False)
    c.add_argument("--nodes", required=True, help="HOST:PORT,HOST:PORT,…")
    c.add_argument("--trust", help="trust store (default: each node's advertised key, with a warning)")
    c.add_argument("--quick", action="store_true",
                   help="compare signed checkpoints and consistency proofs only, not every leaf served")
    c.set_defaults(func=_run(cmd_compare))

    e = sub.add_parser("export", help="write a self-contained file for offline verification")
    common(e)
    e.add_argument("--out", required=True)
    e.add_argument("--trust", help="check the checkpoint against this trust store before exporting")
    e.set_defaults(func=_run(cmd_export))

    def no_action(args: argparse.Namespace) -> int:
        a.print_help()
        return 2

    a.set_defaults(func=no_action)
    def no_trust_action(args: argparse.Namespace) -> int:
        t.print_help()
        return 2

    t.set_defaults(func=no_trust_action)
    return a


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sovledger")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["audit", *(sys.argv[1:] if argv is None else argv)])
    if (args.audit_command in ("verify", "prove", "export") or getattr(args, "trust_command", None) == "init") \
            and not args.node and not getattr(args, "file", None):
        parser.error("--node HOST:PORT is required")
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
