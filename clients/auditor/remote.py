"""Remote access: the one place the auditor opens a connection, a node wrapper that turns gRPC errors
into typed failures naming the node, and the online helpers built on proofs a node serves (naming a
bad leaf, finding where two nodes' logs diverge).

Every result here is checked locally with ``ledger.merkle``; a node only supplies bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

from clients.auditor.failures import AuditFailure, LogTruncated, Unreachable
from clients.auditor.replay import Locator
from clients.client import LedgerClient
from clients.connect import ClientTls, tls_from_args
from ledger.hashing import leaf_hash
from ledger.merkle import ProofError, root_from_inclusion, verify_inclusion
from ledger.note import Checkpoint

LOOKUP_MAX = 8189
LOCATE_MAX = 4096  # inclusion proofs fetched to name the bad leaf of a block


def connect(target: str, timeout_s: float, tls: ClientTls | None = None) -> LedgerClient:
    """Open the auditor's connection to a node: the single place a channel is created. ``tls``: the
    auditor's client certificate (None only for a node started with --insecure)."""
    return LedgerClient(target, timeout_s=timeout_s, tls=tls)


def client_tls(args: Any) -> ClientTls | None:
    """The auditor's certificate from its flags (``--tls-config`` …), or the local cluster's auditor one."""
    return tls_from_args(args, "auditor-auditor.toml")


class Node:
    """One node, with gRPC errors turned into typed audit failures that name it."""

    def __init__(self, target: str, timeout_s: float = 30.0, tls: ClientTls | None = None) -> None:
        self.target = target
        self.client = connect(target, timeout_s, tls)

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


def locator(node: Node, cp: Checkpoint) -> Locator:
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


# -- where two nodes diverge ------------------------------------------------------------------------


def prefix_root(node: Node, m: int) -> bytes:
    resp = node.call("GetInclusionProof", lambda: node.client.inclusion_proof(index=m - 1, tree_size=m))
    return root_from_inclusion(leaf_hash(bytes(resp.leaf)), m - 1, m, list(resp.proof))


def leaf_at(node: Node, i: int) -> bytes:
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
    if prefix_root(a, n) != prefix_root(b, n):
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if prefix_root(a, mid) == prefix_root(b, mid):
                lo = mid
            else:
                hi = mid
        cand = hi - 1
        if leaf_at(a, cand) != leaf_at(b, cand):
            earlier = [i for i in range(max(0, cand - 64), cand) if leaf_at(a, i) != leaf_at(b, i)]
            if not earlier:
                return cand
    return scan_divergence(a, b, n)


def scan_divergence(a: Node, b: Node, n: int) -> int | None:
    """First index < n where the leaves two nodes serve differ (lockstep scan of both streams)."""
    for i, (x, y) in enumerate(zip(a.entries(0, n), b.entries(0, n), strict=True)):
        if x != y:
            return i
    return None


def genuine_leaf(a: Node, b: Node, idx: int, cp: Checkpoint) -> str:
    """Which of the two leaves at ``idx`` verifies against the signed root (with ``a``'s proof)."""
    resp = a.call("GetInclusionProof", lambda: a.client.inclusion_proof(index=idx, tree_size=cp.size))
    verdict = []
    for node in (a, b):
        try:
            verify_inclusion(leaf_hash(leaf_at(node, idx)), idx, cp.size, list(resp.proof), cp.root)
            verdict.append(f"{node.target}'s leaf verifies against the signed root")
        except ProofError:
            verdict.append(f"{node.target}'s leaf does NOT verify against the signed root")
    return "; ".join(verdict)


