"""``audit compare``: do the replicas serve one append-only log? If not, print the fork evidence
(both signed notes, the first diverging leaf of each node, which one the signed root vouches for)."""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

from clients.auditor import trust as trustmod
from clients.auditor.checks import describe_leaf, verify_note
from clients.auditor.failures import EXIT_OK, ForkDetected, UsageError, ab
from clients.auditor.output import Out
from clients.auditor.remote import Node, client_tls, first_divergence, genuine_leaf, leaf_at, scan_divergence
from ledger.merkle import ProofError, verify_consistency
from ledger.note import Checkpoint, Verifier


def raise_fork(big: Node, n: Node, big_note: str, note: str, big_cp: Checkpoint, cp: Checkpoint, problem: str,
                idx: int | None) -> None:
    data: dict[str, Any] = {"node_a": big.target, "node_b": n.target, "note_a": big_note, "note_b": note,
                            "index": idx}
    where = "no differing leaf found (the nodes' stored trees differ)"
    if idx is not None:
        data["leaf_a"] = describe_leaf(leaf_at(big, idx))
        data["leaf_b"] = describe_leaf(leaf_at(n, idx))
        where = f"first diverging leaf index {idx}"
    raise ForkDetected(f"nodes disagree: {big.target} (size {big_cp.size}, root {ab(big_cp.root)}) and "
                       f"{n.target} (size {cp.size}, root {ab(cp.root)}): {problem}; {where}", **data)


def cmd_compare(args: argparse.Namespace, out: Out) -> int:
    targets = [t.strip() for t in args.nodes.split(",") if t.strip()]
    if len(targets) < 2:
        raise UsageError("--nodes needs at least two HOST:PORT entries")
    store = trustmod.load_or_usage(args.trust) if args.trust else None
    tls = client_tls(args)
    nodes = [Node(t, args.timeout, tls) for t in targets]
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
                               f"{genuine_leaf(big, n, idx, big_cp)}")
                    raise_fork(big, n, big_note, note, big_cp, cp, problem, idx)
            if problem is None:
                rows.append((f"{n.target} vs {big.target}",
                             "✓ consistent" + ("" if args.quick else f", {cp.size} leaves identical")))
                continue
            raise_fork(big, n, big_note, note, big_cp, cp, problem, first_divergence(big, n, cp.size))
        rows.append(("result", f"✓ all {len(nodes)} nodes agree (append-only prefixes)"))
        out.result("audit compare", rows,
                   {"nodes": [{"node": n.target, "size": cp.size, "root": cp.root.hex()} for n, _, cp in seen]})
        return EXIT_OK
    finally:
        for n in nodes:
            n.close()

