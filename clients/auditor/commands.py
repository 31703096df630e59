"""``audit trust …``, ``audit prove`` and ``audit export``: the commands that talk to one node and
check what it signed before using it."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from clients.auditor import trust as trustmod
from clients.auditor.checks import checkpoint_block_height, describe_leaf, parse_u128, verify_note
from clients.auditor.export import write_export
from clients.auditor.failures import EXIT_OK, AuditFailure, CheckpointSignatureError, InconsistentLog, UsageError, ab
from clients.auditor.output import Out
from clients.auditor.remote import Node, client_tls
from clients.auditor.trust import TrustedCheckpoint, TrustStore
from ledger.codec import BLOCK_HEADER, LEAF_HEADER_SIZE, decode_leaf
from ledger.hashing import leaf_hash
from ledger.merkle import ProofError, verify_inclusion
from ledger.note import NoteError, Verifier, open_note


def cmd_trust_init(args: argparse.Namespace, out: Out) -> int:
    if Path(args.trust).exists() and not args.force:
        raise UsageError(f"{args.trust} exists; refusing to replace a trust store (use --force)")
    node = Node(args.node, args.timeout, client_tls(args))
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
    store = trustmod.load_or_usage(args.trust)
    cp = store.checkpoint
    out.result("trust store", [("origin", store.origin), ("node keys", "\n".join(store.node_keys)),
                               ("psp keys", "\n".join(store.psp_keys) or "-"),
                               ("checkpoint", f"size {cp.size}, root {ab(cp.root, 32)}" if cp else "-")],
               store.to_json())
    return EXIT_OK


def cmd_trust_add_key(args: argparse.Namespace, out: Out) -> int:
    store = trustmod.load_or_usage(args.trust)
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


def cmd_prove(args: argparse.Namespace, out: Out) -> int:
    tid = parse_u128(args.transfer_id)
    store = trustmod.load_or_usage(args.trust) if args.trust else None
    node = Node(args.node, args.timeout, client_tls(args))
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


def cmd_export(args: argparse.Namespace, out: Out) -> int:
    node = Node(args.node, args.timeout, client_tls(args))
    try:
        resp = node.checkpoint()
        store = trustmod.load_or_usage(args.trust) if args.trust else None
        verifiers = store.node_verifiers if store else [Verifier.parse(resp.verifier_key)]
        cp = verify_note(resp.note, verifiers, store.origin if store else None, node.target)
        height = checkpoint_block_height(cp)
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
