"""``audit verify``: the latest signed checkpoint against the trust store, and with ``--full`` (or
``--file``) the whole log replayed locally (``clients.auditor.replay``)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from clients.auditor import trust as trustmod
from clients.auditor.checks import (
    check_against_trusted,
    check_cosigned_against_trusted,
    checkpoint_block_height,
    checkpoint_unverified,
    compare_accounts,
    verify_chained,
    verify_note,
)
from clients.auditor.export import read_export
from clients.auditor.failures import EXIT_OK, CheckpointSignatureError, LogTruncated, Unreachable, UsageError, ab
from clients.auditor.output import Out
from clients.auditor.remote import LOOKUP_MAX, Node, client_tls, locator
from clients.auditor.replay import LogVerifier, iter_blocks
from clients.auditor.trust import TrustStore
from clients.auditor.witnessed import witnessed_note
from ledger.note import Checkpoint, open_note
from sovledger_pb import ledger_pb2 as pb

STALE_READ = (("sovledger-read", "stale"),)  # node/service.py: any replica answers from its state


def _replay(out: Out, verifier: LogVerifier, headers: Iterator[bytes], leaves: Iterator[bytes], total: int,
            label: str) -> None:
    with out.progress(total, label) as bar:
        task = bar.add_task("verify", total=total)
        for h, ls in iter_blocks(headers, leaves):
            verifier.feed_block(h, ls)
            bar.update(task, advance=len(ls))


def cmd_verify(args: argparse.Namespace, out: Out) -> int:
    store = trustmod.load_or_usage(args.trust)
    if args.file:
        return _verify_file(args, out, store)
    if not args.node:
        raise UsageError("give --node HOST:PORT or --file EXPORT")
    node = Node(args.node, args.timeout, client_tls(args))
    try:
        resp = None if args.witnesses else node.checkpoint()
        # with a witness policy: the region's cosigned checkpoint, refused unless the policy holds
        note, source = (resp.note, node.target) if resp is not None else witnessed_note(args, store.origin)
        # --full replays the log first: a rotated key is trusted only through the log's KEY_ROTATION entries
        cp = (checkpoint_unverified(note, store.origin, node.target) if args.full
              else verify_note(note, store.node_verifiers, store.origin, node.target))
        if resp is not None and (resp.tree_size != cp.size or bytes(resp.root) != cp.root):
            raise CheckpointSignatureError(
                f"{node.target}: response fields (size {resp.tree_size}, root {ab(bytes(resp.root))}) differ from "
                f"the signed note (size {cp.size}, root {ab(cp.root)})", node=node.target)

        def consistency(first: int, second: int) -> list[bytes]:
            resp = node.call("GetConsistencyProof", lambda: node.client.consistency_proof(first, second))
            return [bytes(h) for h in resp.proof]

        trusted = store.checkpoint
        # witnesses cosign with a lag: a cosigned checkpoint older than the trusted one is no rollback by itself
        behind = bool(args.witnesses and trusted is not None and cp.size < trusted.size)
        own: Any = resp  # the node's own (plain) signed checkpoint: asked for only when it is needed
        if own is None and (source != node.target or behind):
            own = node.checkpoint()
        if source != node.target and own.tree_size < cp.size:  # the cosigned note came from another member
            raise Unreachable(f"{node.target} holds {own.tree_size} entries, behind the region's cosigned checkpoint "
                              f"(size {cp.size}); wait for it to catch up, or audit the leader", node=node.target)
        rows = [("node", node.target), ("origin", cp.origin),
                ("checkpoint", f"size {cp.size}, root {ab(cp.root, 32)}"
                 + ("" if source == node.target else f", from {source}"))]
        data: dict[str, Any] = {"node": node.target, "origin": cp.origin, "size": cp.size, "root": cp.root.hex(),
                                "full": bool(args.full), "checkpoint_from": source}
        if args.full:
            full_rows, rotations = _verify_full_online(args, out, node, store, cp, data)
            rows.append(("signature", _chained_signature(args, store, note, cp, rotations, node.target, data)))
            rows += full_rows
        else:
            signed_by = ", ".join(s.name for s in open_note(note, store.node_verifiers).verified)
            rows.append(("signature", f"✓ signed by {signed_by}"))
        if behind:
            assert trusted is not None
            own_cp = (checkpoint_unverified(own.note, store.origin, node.target) if args.full
                      else verify_note(own.note, store.node_verifiers, store.origin, node.target))
            text = check_cosigned_against_trusted(cp, note, own_cp, own.note, trusted, node.target, consistency)
            out.warn(text)
            data.update(cosigned_behind_trusted=True, trusted_size=trusted.size, node_size=own_cp.size)
            rows.insert(4, ("append-only", "~ " + text))
        else:
            rows.insert(4, ("append-only", "✓ " + check_against_trusted(cp, note, trusted, node.target, consistency)))
        rows.append(("trust store", trustmod.advance(args.trust, store, cp, note, not args.no_update)))
        out.result("audit verify" + (" --full" if args.full else ""), rows, data)
        return EXIT_OK
    finally:
        node.close()


def _chained_signature(args: argparse.Namespace, store: TrustStore, note: str, cp: Checkpoint,
                       rotations: list[tuple[int, bytes]], source: str, data: dict[str, Any]) -> str:
    """Check the checkpoint's signer through the chain of keys; the trust store learns the chained keys."""
    chain = verify_chained(note, cp, store.node_verifiers, rotations, source)
    signed_by = ", ".join(chain.check_checkpoint(note, cp.size, source))
    learned = [w.verifier.to_string() for w in chain.learned()]
    new = [k for k in learned if k not in store.node_keys]
    if new and not args.no_update:
        store.node_keys.extend(new)
        trustmod.save(args.trust, store)
    data.update(key_rotations=len(rotations), keys_learned=new, keys_unchained=[k for _, k in chain.unchained])
    text = f"✓ signed by {signed_by}"
    if rotations:
        text += (f"; {len(rotations)} key rotation(s) in the log, {len(learned)} key(s) chained to the trust store"
                 + (f", {len(new)} added to it" if new and not args.no_update else ""))
    if chain.unchained:
        text += f"; {len(chain.unchained)} rotation(s) announced by keys outside the trust store (not trusted)"
    return text


def _verify_full_online(args: argparse.Namespace, out: Out, node: Node, store: TrustStore, cp: Checkpoint,
                        data: dict[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[int, bytes]]]:
    """Replay the whole log; the rows to print and the log's KEY_ROTATION entries (leaf index, body)."""
    height = checkpoint_block_height(cp)
    trusted = store.checkpoint
    verifier = LogVerifier(psp_keys=store.psp_verifiers, verify_psp=not args.no_psp,
                           checkpoints=[(trusted.size, trusted.root)] if trusted and trusted.size <= cp.size else [],
                           locator=locator(node, cp))
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
        # this node's own applied state (``stale``: a follower answers too, no leader round trip); the
        # size check below makes sure it is the state at the checkpoint just verified
        resp = node.call("LookupAccounts", partial(node.client.ledger.LookupAccounts, req,
                                                   timeout=node.client.timeout_s, metadata=STALE_READ))
        for aid, info in zip(chunk, resp.accounts, strict=True):
            node_states[aid] = bytes(info.state) if info.found else None
    after = node.checkpoint()
    if after.tree_size != cp.size:
        out.warn(f"{node.target} advanced from size {cp.size} to {after.tree_size} during the audit: balances "
                 "were not compared (the per-block state hashes were); re-run on a quiet node to compare them")
        rows.append(("balances", f"~ {len(states)} accounts replayed; node advanced, lookup comparison skipped"))
    else:
        compare_accounts(states, node_states, node.target)
        rows.append(("balances", f"✓ {len(states)} accounts replayed from recorded effects = LookupAccounts "
                                 "(this node's own state at the verified size)"))
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
    return rows, verifier.rotations


def _verify_file(args: argparse.Namespace, out: Out, store: TrustStore) -> int:
    try:
        raw = Path(args.file).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {args.file}: {e}") from None
    exp = read_export(raw)
    note = str(exp.meta.get("checkpoint_note", ""))
    cp = checkpoint_unverified(note, store.origin, args.file)  # signer checked after the replay (key chain)
    rows = [("file", args.file), ("origin", cp.origin), ("checkpoint", f"size {cp.size}, root {ab(cp.root, 32)}")]
    data: dict[str, Any] = {"file": args.file, "size": cp.size, "root": cp.root.hex()}
    trusted = store.checkpoint
    verifier = LogVerifier(psp_keys=store.psp_verifiers, verify_psp=not args.no_psp,
                           checkpoints=[(trusted.size, trusted.root)] if trusted and trusted.size <= cp.size else [])
    height = checkpoint_block_height(cp)
    t0 = time.perf_counter()
    _replay(out, verifier, iter(exp.headers[:height]), iter(exp.leaves[: cp.size]), cp.size, args.file)
    if not exp.complete and verifier.size < cp.size:
        raise LogTruncated(f"{args.file}: the export ends after {len(exp.leaves)} leaves and {len(exp.headers)} "
                           f"headers (no valid END frame); the signed checkpoint covers {cp.size} leaves",
                           index=len(exp.leaves), expected=cp.size, got=len(exp.leaves))
    verifier.finish(cp)
    elapsed = time.perf_counter() - t0
    rows += [("signature", _chained_signature(args, store, note, cp, verifier.rotations, args.file, data)),
             ("append-only", "✓ " + check_against_trusted(cp, note, store.checkpoint, args.file, None))]
    rows += [("entries", f"✓ {verifier.size} leaves re-hashed; chain head and Merkle root = signed checkpoint"),
             ("blocks", f"✓ {verifier.height} headers, state hashes from replayed balances"),
             ("PSP signatures", f"✓ {verifier.stats.psp_verified} verified" + (
                 "; unknown key ids: " + ", ".join(sorted(verifier.stats.psp_unknown)) if verifier.stats.psp_unknown
                 else "")),
             ("speed", f"{verifier.size / elapsed:,.0f} entries/s" if elapsed > 0 else "-"),
             ("trust store", trustmod.advance(args.trust, store, cp, note, not args.no_update))]
    data.update(leaves=verifier.size, blocks=verifier.height, psp_verified=verifier.stats.psp_verified)
    out.result("audit verify --file", rows, data)
    return EXIT_OK

