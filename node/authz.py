"""Who may call what: THE table of RPC → roles, and the server interceptor that enforces it.

Every RPC the node serves is a key of ``MATRIX``; a method missing from it is refused for everyone
(a new RPC stays closed until someone decides who may call it). The interceptor runs before any
servicer: it takes the caller's identity from the client certificate the TLS handshake verified
(node.tls), refuses revoked serials, checks the role against the table and, for the peer service,
that the calling node is a current member of the region. Finer checks that need the request
(a PSP's own psp_id and accounts) live in node/psp_guard.py and ask ``caller()``.

``docs/security.md`` prints this table; tests/security/test_docs.py keeps the two equal.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import grpc

from node.errors import NodeError, Unauthenticated, Unauthorised, abort
from node.tls import FEDERATION_ROLE, Identity, IdentityCache, RevocationList, TlsFiles

log = logging.getLogger("sovledger.authz")

NODE: Final = "node"
OPERATOR: Final = "operator"
PSP: Final = "psp"
AUDITOR: Final = "auditor"
FEDERATION: Final = FEDERATION_ROLE  # a certificate of another region's CA (docs/federation.md)
EVERYONE: Final = frozenset({NODE, OPERATOR, PSP, AUDITOR})

_L, _A, _R, _P, _RA = ("/sovledger.v1.Ledger/", "/sovledger.v1.Audit/", "/sovledger.v1.Rules/",
                       "/sovledger.peer.v1.Peer/", "/sovledger.peer.v1.RegionAdmin/")
_V, _VP = "/sovledger.vault.v1.Vault/", "/sovledger.vault.v1.VaultPeer/"
_W = "/sovledger.witness.v1.Witness/"
_N = "/sovledger.netting.v1.Netting/"

#: RPC (full gRPC method path) → roles allowed to call it.
MATRIX: Final[dict[str, frozenset[str]]] = {
    # PSPs submit payments under their own psp_id; operators submit rule deploys (operator-signed too).
    _L + "Submit": frozenset({PSP, OPERATOR}),
    # PSPs read their own transfers and accounts (node/psp_guard.py); operators and auditors read
    # everything (the auditor checks replayed balances against the node's)
    _L + "LookupTransfers": frozenset({PSP, OPERATOR, AUDITOR}),
    _L + "LookupAccounts": frozenset({PSP, OPERATOR, AUDITOR}),
    _L + "AccountHistory": frozenset({PSP, OPERATOR, AUDITOR}),
    # the audit service: read only, the whole log. Members also read each other's newest checkpoint
    # at start, so that a node restored from an old copy never signs below it (node/startup.py).
    _A + "GetCheckpoint": frozenset({AUDITOR, OPERATOR, NODE}),
    _A + "GetInclusionProof": frozenset({AUDITOR, OPERATOR}),
    _A + "GetConsistencyProof": frozenset({AUDITOR, OPERATOR}),
    _A + "StreamEntries": frozenset({AUDITOR, OPERATOR}),
    _A + "StreamBlocks": frozenset({AUDITOR, OPERATOR}),
    # role, term, leader: every certificate holder (SDKs use it to find the leader)
    "/sovledger.v1.Admin/Status": EVERYONE,
    # checkpoint signing-key rotation: a KEY_ROTATION entry signed by the node's current key
    "/sovledger.v1.Admin/RotateKey": frozenset({OPERATOR}),
    "/grpc.health.v1.Health/Check": EVERYONE,
    "/grpc.health.v1.Health/Watch": EVERYONE,
    # rules: operators manage them; auditors may read what is deployed and the report
    _R + "ListRuleSets": frozenset({OPERATOR, AUDITOR}),
    _R + "ShowRuleSet": frozenset({OPERATOR, AUDITOR}),
    _R + "ValidateRuleSet": frozenset({OPERATOR}),
    _R + "DryRun": frozenset({OPERATOR}),
    _R + "Report": frozenset({OPERATOR, AUDITOR}),
    # Raft and snapshots: current members of the region only (membership checked per call)
    _P + "Send": frozenset({NODE}),
    _P + "FetchSnapshot": frozenset({NODE}),
    # membership and leader transfer
    _RA + "TransferLeader": frozenset({OPERATOR}),
    _RA + "ChangeMembership": frozenset({OPERATOR}),
    # a hot backup of the whole store (docs/operations.md): operators only
    "/sovledger.v1.Operations/Backup": frozenset({OPERATOR}),
    # the PII vault (docs/privacy.md): a PSP puts and reads its OWN subjects only — the owner is the
    # psp_id of its certificate, never a request field (node/vault_service.py); auditors and operators
    # read any subject (disclosure under a legal basis); only the operator erases
    _V + "Put": frozenset({PSP}),
    _V + "Get": frozenset({PSP, AUDITOR, OPERATOR}),
    _V + "Erase": frozenset({OPERATOR}),
    # sealed records and their data keys travel between current members of the region only
    _VP + "Replicate": frozenset({NODE}),
    _VP + "Inventory": frozenset({NODE}),
    _VP + "Fetch": frozenset({NODE}),
    # regions together (docs/federation.md): only nodes of other regions hand in checkpoints to
    # cosign; what a witness cosigned, its split-view evidence, the region's cosigned checkpoint and
    # its aggregates (no account ids, no personal data) are readable by other regions and auditors
    _W + "AddCheckpoint": frozenset({FEDERATION}),
    _W + "GetCosigned": frozenset({FEDERATION, AUDITOR, OPERATOR}),
    _W + "GetEvidence": frozenset({FEDERATION, AUDITOR, OPERATOR}),
    _W + "GetRegionCheckpoint": frozenset({FEDERATION, AUDITOR, OPERATOR}),
    _W + "GetAggregates": frozenset({FEDERATION, AUDITOR, OPERATOR}),
    # cross-region payments and settlement (docs/federation.md): another region's leader hands in
    # obligations owed to this region; decisions and open obligations (no payer, no personal data)
    # are readable by other regions and auditors; a settlement batch is appended when an operator
    # (of any region of the federation) runs a settlement cycle
    _N + "Offer": frozenset({FEDERATION}),
    _N + "Lookup": frozenset({FEDERATION, AUDITOR, OPERATOR}),
    _N + "Open": frozenset({FEDERATION, AUDITOR, OPERATOR}),
    _N + "Join": frozenset({FEDERATION, OPERATOR}),
    _N + "Prove": frozenset({FEDERATION, AUDITOR, OPERATOR}),
}

PEER_METHODS: Final = frozenset({_P + "Send", _P + "FetchSnapshot", _VP + "Replicate", _VP + "Inventory",
                                 _VP + "Fetch"})
#: Open to every certificate holder, members or not (finding the leader, health).
OPEN_METHODS: Final = frozenset(m for m, roles in MATRIX.items() if roles == EVERYONE)


def decide(method: str, who: Identity | None, revoked: Callable[[int], bool],
           is_member: Callable[[str], bool]) -> NodeError | None:
    """None when ``who`` may call ``method``; otherwise the error to answer with."""
    if who is None:
        return Unauthenticated("no valid client certificate: this node accepts certificates issued by "
                               "its region CA whose subject names a role (OU) and a name (CN)")
    if revoked(who.serial):
        return Unauthenticated(f"certificate of {who} is revoked; ask the region operator for a new one")
    allowed = MATRIX.get(method)
    if allowed is None:
        return Unauthorised(f"{method} is not in this node's authorization table")
    if who.role not in allowed:
        roles = ", ".join(sorted(allowed))
        return Unauthorised(f"{method} is for {roles}; your certificate is {who}")
    member_only = method in PEER_METHODS or (who.role == NODE and method not in OPEN_METHODS)
    if member_only and not is_member(who.name):
        return Unauthorised(f"{who.name} is not a member of this region; peers must be current members")
    return None


def caller(context: Any) -> Identity | None:
    """The verified identity of the caller of the current RPC (None on an --insecure node)."""
    return _IDENTITIES.identity(context.auth_context())


_IDENTITIES = IdentityCache()


def trust_federation(files: TlsFiles) -> None:
    """Certificates of the other regions' CAs (``files.federation_cas``) become the federation role."""
    _IDENTITIES.trust_federation(files)


class AuthzInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, revocations: RevocationList, is_member: Callable[[str], bool]) -> None:
        self._revocations = revocations
        self._is_member = is_member

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method

        def check(context: Any) -> NodeError | None:
            who = _IDENTITIES.identity(context.auth_context())
            err = decide(method, who, self._revocations.revoked, self._is_member)
            if err is not None:
                log.info("authz: refused %s for %s: %s", method, who, err)
            return err

        return _wrap(handler, check)


def _wrap(handler: Any, check: Callable[[Any], NodeError | None]) -> Any:
    """The same handler, with ``check`` run first (one wrapper per call shape)."""
    if handler.unary_unary:
        inner = handler.unary_unary

        async def unary_unary(request: Any, context: Any) -> Any:
            err = check(context)
            if err is not None:
                await abort(context, err)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, handler.request_deserializer,
                                                   handler.response_serializer)
    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(request_iterator: Any, context: Any) -> Any:
            err = check(context)
            if err is not None:
                await abort(context, err)
            return await inner_su(request_iterator, context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, handler.request_deserializer,
                                                    handler.response_serializer)
    streaming = handler.unary_stream or handler.stream_stream
    make = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
    if not inspect.isasyncgenfunction(streaming):  # a coroutine that writes with context.write

        async def written(request: Any, context: Any) -> Any:
            err = check(context)
            if err is not None:
                await abort(context, err)
            return await streaming(request, context)

        return make(written, handler.request_deserializer, handler.response_serializer)

    async def streamed(request: Any, context: Any) -> AsyncIterator[Any]:
        err = check(context)
        if err is not None:
            await abort(context, err)
        async for item in streaming(request, context):
            yield item

    return make(streamed, handler.request_deserializer, handler.response_serializer)


def render_matrix() -> str:
    """The table as Markdown (docs/security.md prints exactly this; a test keeps them equal)."""
    roles = (OPERATOR, PSP, AUDITOR, NODE, FEDERATION)
    lines = ["| RPC | " + " | ".join(roles) + " |", "|---|" + "---|" * len(roles)]
    for method, allowed in MATRIX.items():
        marks = " | ".join("yes" if r in allowed else "—" for r in roles)
        lines.append(f"| `{method}` | {marks} |")
    return "\n".join(lines) + "\n"
