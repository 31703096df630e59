"""gRPC side of the vault: the client service (Put/Get/Erase), the peer service, and replication.

A Put is acknowledged once a majority of the region's members (this one included) have fsynced the
sealed record and its data key, so losing one node loses nothing. The copy goes peer to peer to
the configured region members only — never through Raft, so no data key ever sits in the Raft log
or in a snapshot. A member that missed copies (down, partitioned) pulls them on start and every
``SYNC_EVERY_S`` (inventory + fetch), except for subjects the log has erased.

Who may call what is decided by the one authorization table (node/authz.py ``MATRIX``: PSP puts,
PSP/auditor/operator gets, operator erases, current region members for the peer service). What needs
the request is checked here: a PSP puts and reads only its OWN subjects, and its psp_id is the one in
its certificate (``node.authz.caller``), never the request's. Without certificates (``--insecure``)
every caller is trusted and a PSP's id is the one in the request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, NoReturn

import grpc

from ledger.pii import ErasureReason, PiiError
from node.authz import PSP, caller
from node.errors import BadRequest, DataLoss, NodeError, NotFound, Unauthorised, abort
from node.loops import BackgroundLoop
from node.tls import TlsFiles, peer_channel
from node.vault import NotYourSubject, SubjectExists, Vault
from node.vault_store import SealedRecord, SubjectErased, SubjectUnknown, VaultCorrupt, VaultError
from sovledger_pb import ledger_pb2 as pb
from sovledger_pb import vault_pb2 as vpb
from sovledger_pb import vault_pb2_grpc as vpb_grpc

log = logging.getLogger("sovledger.vault")

SYNC_EVERY_S: Final = 5.0
PEER_TIMEOUT_S: Final = 5.0
INVENTORY_PAGE: Final = 4096  # subject ids per Inventory answer (64 KiB)


def owner_for(context: Any, requested: int) -> int | None:
    """The PSP a put or get is restricted to. A PSP certificate: its own psp_id (a request naming
    another PSP is refused). An auditor or operator certificate, or an --insecure node: the
    request's psp_id (0: any PSP)."""
    who = caller(context)
    if who is None or who.role != PSP:
        return requested or None
    if requested and requested != who.psp_id:
        raise Unauthorised(f"psp_id {requested} in the request is not yours; your certificate is {who} "
                           "(leave psp_id 0: the vault takes it from the certificate)")
    return who.psp_id
#: (commitment, reason) -> (result code, leaf index, block) once the erasure event is committed
ProposeErasure = Callable[[bytes, int], Awaitable[tuple[int, int, int]]]

class SubjectErasedRefused(NodeError, code=grpc.StatusCode.FAILED_PRECONDITION,
                           reason=pb.REASON_SUBJECT_ERASED):
    """The subject was erased: its key and records are destroyed in the whole region."""


class SubjectConflict(NodeError, code=grpc.StatusCode.ALREADY_EXISTS, reason=pb.REASON_REFUSED):
    """The subject id already holds different data."""


class TooFewCopies(NodeError, code=grpc.StatusCode.UNAVAILABLE, reason=pb.REASON_OVERLOADED):
    """Fewer than a majority of the region's members stored a put: not acknowledged, retry."""


_EDGE: Final[tuple[tuple[type[Exception], type[NodeError]], ...]] = (
    (SubjectErased, SubjectErasedRefused), (SubjectUnknown, NotFound), (NotYourSubject, NotFound),
    (SubjectExists, SubjectConflict), (PiiError, BadRequest), (VaultCorrupt, DataLoss),
)


async def _abort(context: Any, exc: Exception) -> NoReturn:
    """The vault's errors as node errors: one status code and reason each (node/errors.py)."""
    for kind, edge in _EDGE:
        if isinstance(exc, kind):
            await abort(context, edge(str(exc)))
    await abort(context, exc)


def subject_from(raw: bytes) -> int:
    if len(raw) != 16:
        raise PiiError(f"subject_id is {len(raw)} bytes; it is a 16-byte little-endian u128")
    return int.from_bytes(raw, "little")


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.debug("vault copy to a peer failed late: %s", fut.exception())


class PeerCopies(BackgroundLoop):
    """Pushes copies to the region's other members and pulls what this one missed (the catch-up loop:
    ``start()``/``stop()`` of node/loops.py ``BackgroundLoop``)."""

    def __init__(self, vault: Vault, peers: Callable[[], list[str]], tls: TlsFiles | None = None) -> None:
        super().__init__("vault-catch-up", log)
        self._vault = vault
        self._tls = tls
        self._members = peers  # the other members' addresses now (membership changes follow Raft)
        self._closing: set[asyncio.Future[None]] = set()
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _stub(self, address: str) -> Any:  # an aio stub: the generated stubs are typed for sync calls
        ch = self._channels.get(address)
        if ch is None:  # region members only: addresses come from the node's peer config; mTLS as for Raft
            ch = self._channels[address] = peer_channel(address, self._tls, [])
        return vpb_grpc.VaultPeerStub(ch)

    @property
    def _peers(self) -> list[str]:
        current = self._members()
        for gone in [a for a in self._channels if a not in current]:  # a removed member is not dialled again
            closing = asyncio.ensure_future(self._channels.pop(gone).close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        return current

    def prune(self) -> None:
        """Close the channels of members no longer in the region now (the Raft driver calls this when
        a membership change is applied), so a removed member's address is not re-dialled by a channel
        in its reconnect back-off until the next copy or catch-up round."""
        self._peers  # noqa: B018 (the property closes the channels of gone members)

    @property
    def quorum(self) -> int:
        return (len(self._peers) + 1) // 2 + 1

    async def push(self, sealed: SealedRecord, key: bytes) -> int:
        """Copies stored, this replica included; returns as soon as a majority has one."""
        copy = vpb.SealedCopy(sealed=sealed.encode(), key=key)
        peers = self._peers
        quorum = (len(peers) + 1) // 2 + 1
        # wait_for_ready: a peer channel still in its reconnect back-off (a region just started, a peer just
        # restarted) is waited for within the deadline instead of failing the copy at once
        calls = [asyncio.ensure_future(self._stub(a).Replicate(copy, timeout=PEER_TIMEOUT_S, wait_for_ready=True))
                 for a in peers]
        for call in calls:  # copies still in flight after the majority answered finish on their own
            call.add_done_callback(_consume)
        stored = 1
        for done in asyncio.as_completed(calls):
            try:
                if (await done).stored:
                    stored += 1
            except grpc.RpcError as e:
                log.warning("vault copy to a peer failed: %s", e.code())
            if stored >= quorum:
                break
        return stored

    async def pull(self) -> int:
        """Fetch every subject a peer has and this replica lacks, page by page; returns how many were taken."""
        taken = 0
        for address in self._peers:
            try:
                taken += await self._pull_from(address)
            except grpc.RpcError as e:
                log.debug("vault catch-up from %s: %s", address, e.code())
        return taken

    async def _pull_from(self, address: str) -> int:
        taken = 0
        after = b""
        while True:
            inv = await self._stub(address).Inventory(vpb.InventoryRequest(after=after, limit=INVENTORY_PAGE),
                                                      timeout=PEER_TIMEOUT_S)
            for raw in inv.subject_ids:
                if self._vault.holds(subject_from(raw)):
                    continue
                copy = await self._stub(address).Fetch(vpb.FetchRequest(subject_id=raw), timeout=PEER_TIMEOUT_S)
                if copy.sealed and self._vault.accept(SealedRecord.decode(copy.sealed), copy.key):
                    taken += 1
            if not inv.next or inv.next <= after:  # the last page (a cursor never moves back)
                return taken
            after = inv.next

    async def _run(self) -> None:
        while True:
            try:
                await self.pull()
            except Exception:  # keep catching up; a bad copy is logged, never stored
                log.exception("vault catch-up failed")
            await asyncio.sleep(SYNC_EVERY_S)

    async def stop(self) -> None:
        await super().stop()  # the catch-up loop has ended before its channels close
        for ch in self._channels.values():
            await ch.close()


class VaultService(vpb_grpc.VaultServicer):
    def __init__(self, vault: Vault, copies: PeerCopies | None, propose_erasure: ProposeErasure) -> None:
        self._vault = vault
        self._copies = copies
        self._propose = propose_erasure

    async def Put(self, request: vpb.PutRequest, context: Any) -> vpb.PutResponse:
        try:
            psp = owner_for(context, request.psp_id) or 0
            sealed, key, created = self._vault.put(subject_from(request.subject_id), dict(request.fields), psp,
                                                   request.salt or None)
            copies = await self._copies.push(sealed, key) if self._copies else 1
        except (VaultError, PiiError, NodeError) as e:
            await _abort(context, e)
        if self._copies and copies < self._copies.quorum:
            await abort(context, TooFewCopies(
                f"only {copies} of the region's members stored the record; a majority ({self._copies.quorum}) "
                "is needed — retry (the put is idempotent)"))
        disclosure = self._vault.disclose(sealed.subject_id)
        return vpb.PutResponse(commitment=sealed.commitment, salt=disclosure.salt, created=created, copies=copies)

    async def Get(self, request: vpb.GetRequest, context: Any) -> vpb.GetResponse:
        try:
            d = self._vault.disclose(subject_from(request.subject_id), owner_for(context, request.psp_id))
        except (VaultError, PiiError, NodeError) as e:
            await _abort(context, e)
        return vpb.GetResponse(canonical=d.record.canonical(), salt=d.salt, commitment=d.commitment,
                               psp_id=d.psp_id)

    async def Erase(self, request: vpb.EraseRequest, context: Any) -> vpb.EraseResponse:
        try:
            reason = _reason(request.reason)
            subject = subject_from(request.subject_id)
            try:
                commitment = self._vault.commitment_of(subject)
            except SubjectUnknown:
                if self._copies is None or not await self._copies.pull():
                    raise
                commitment = self._vault.commitment_of(subject)
        except (VaultError, PiiError) as e:
            await _abort(context, e)
        # the log entry is the erasure: every replica shreds when it applies it (node/vault_node.py)
        try:
            result, index, block = await self._propose(commitment, reason)
        except NodeError as e:  # not leader (with its address), overloaded, store full …
            await abort(context, e)
        return vpb.EraseResponse(commitment=commitment, log_index=index, block=block, result=result)


def _reason(value: int) -> ErasureReason:
    try:
        return ErasureReason(value)
    except ValueError:
        raise PiiError(f"erasure reason {value} is unknown; use one of "
                       + ", ".join(f"{r.value} ({r.name})" for r in ErasureReason)) from None


class VaultPeerService(vpb_grpc.VaultPeerServicer):
    def __init__(self, vault: Vault) -> None:
        self._vault = vault

    async def Replicate(self, request: vpb.SealedCopy, context: Any) -> vpb.CopyAck:
        try:
            stored = self._vault.accept(SealedRecord.decode(request.sealed), request.key)
        except VaultCorrupt as e:
            await _abort(context, e)
        return vpb.CopyAck(stored=stored)

    async def Inventory(self, request: vpb.InventoryRequest, context: Any) -> vpb.InventoryResponse:
        if request.after and len(request.after) != 8:
            await abort(context, BadRequest("after: the `next` of the previous Inventory page (8 bytes) or empty"))
        limit = min(request.limit or INVENTORY_PAGE, INVENTORY_PAGE)
        subjects, nxt = self._vault.inventory_page(int.from_bytes(request.after, "big"), limit)
        return vpb.InventoryResponse(subject_ids=[s.to_bytes(16, "little") for s in subjects],
                                     next=nxt.to_bytes(8, "big") if nxt is not None else b"")

    async def Fetch(self, request: vpb.FetchRequest, context: Any) -> vpb.SealedCopy:
        found = self._vault.export(subject_from(request.subject_id))
        if found is None:
            return vpb.SealedCopy()
        return vpb.SealedCopy(sealed=found[0].encode(), key=found[1])
