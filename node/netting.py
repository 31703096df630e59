"""Cross-region payments on the node: the Netting gRPC service and the leader's obligation relay.

The decisions are the ledger's (ledger/apply/obligations.py, ledger/netting.py); this module only
carries bytes between regions and proposes entries:

- ``NettingService.Offer`` (creditor side): obligations another region's leader hands in become
  ACCEPT entries here, unless already decided; the answer is every obligation's decision and the
  index of the leaf that proves it.
- ``ObligationRelay`` (debtor side, leader only): every ``interval_s`` it offers this region's
  pending obligations to their creditor regions and proposes a RESOLVE entry for each decision.
  A creditor that cannot be reached is simply tried again: the payer's leg waits, domestic
  payments never do (they do not pass through here).
- ``Lookup``/``Open``/``Join``: read decisions, list open obligations, append a settlement batch
  after checking it against this region's own table (``verify_settlement``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import grpc

from ledger.apply.obligations import DEBTOR, obligation_row, obligations_with, settlement_leaf
from ledger.codec import LEAF_HEADER_SIZE, Batch
from ledger.federation import Federation
from ledger.netting import (
    OBLIGATION_SIZE,
    NettingError,
    Obligation,
    ObligationStatus,
    Role,
    accept_record,
    build_settlement,
    decode_obligation,
    decode_settlement,
    net_positions,
    net_transfers,
    open_in_both,
    resolve_record,
    settlement_digest,
    verify_settlement,
)
from ledger.state import BatchOutcome
from ledger.store import Store
from ledger.types import EventKind, Result
from node.authz import caller
from node.config import NodeConfig
from node.errors import BadRequest, NodeError, Refused, Unauthorised, abort
from node.loops import LeaderRounds
from node.tls import Identity
from node.witness import foreign_channel
from sovledger_pb import netting_pb2 as npb
from sovledger_pb import netting_pb2_grpc as npb_grpc

log = logging.getLogger("sovledger.netting")

OFFER_MAX: Final = 1000  # obligations per Offer call / per relay round
CALL_TIMEOUT_S: Final = 10.0
Propose = Callable[[Batch], Awaitable[BatchOutcome]]
Prove = Callable[[int], Awaitable[tuple[int, str, bytes, list[bytes]]]]  # index -> size, note, leaf, proof
ChannelFor = Callable[[str, str], grpc.aio.Channel]  # (region, address) -> channel


def decision(store: Store, oid: bytes) -> npb.Decision:
    """This region's record of one obligation (status 0 when it holds none)."""
    with store.read() as txn:
        row = obligation_row(txn, oid)
        if row is None:
            return npb.Decision(id=oid)
        status, side, index, obligation, _payer = row
        raw = txn.get("leaves", index.to_bytes(8, "big"))
    result = int.from_bytes(raw[2:4], "little") if raw else 0
    return npb.Decision(id=oid, status=status, side=side, leaf_index=index, obligation=obligation, result=result)


class NettingService(npb_grpc.NettingServicer):
    def __init__(self, region: str, store: Store, propose: Propose, check_leader: Callable[[], None],
                 prove: Prove | None = None) -> None:
        self._prove = prove
        self.region = region
        self._region = region
        self._store = store
        self._propose = propose
        self._check_leader = check_leader

    async def Offer(self, request: npb.OfferRequest, context: Any) -> npb.Decisions:
        try:
            if len(request.obligations) > OFFER_MAX:
                raise BadRequest(f"an Offer carries up to {OFFER_MAX} obligations, got {len(request.obligations)};"
                                 " split it into several calls")
            self._check_leader()
            obs = [self._creditor_obligation(raw) for raw in request.obligations]
            check_debtor(caller(context), obs)
            new = [raw for raw, ob in zip(request.obligations, obs, strict=True)
                   if decision(self._store, ob.id).status == 0]
            if new:
                await self._propose(Batch(EventKind.OBLIGATION, b"".join(accept_record(r) for r in new)))
        except (NodeError, NettingError) as e:
            await abort(context, _bad(e))
        return npb.Decisions(decisions=[decision(self._store, ob.id) for ob in obs])

    def _creditor_obligation(self, raw: bytes) -> Obligation:
        if len(raw) != OBLIGATION_SIZE:
            raise BadRequest(f"an obligation is {OBLIGATION_SIZE} bytes (docs/formats.md §16.1), got {len(raw)}")
        ob = decode_obligation(raw)
        if ob.creditor != self._region:
            raise Refused(f"obligation {ob.id.hex()} is owed to region {ob.creditor}; this is {self._region}")
        return ob

    async def Lookup(self, request: npb.LookupRequest, context: Any) -> npb.Decisions:
        if len(request.ids) > OFFER_MAX or any(len(i) != 16 for i in request.ids):
            await abort(context, BadRequest(f"ids: up to {OFFER_MAX} obligation ids of 16 bytes each"))
        leaf = 0
        if request.batch_id:
            with self._store.read() as txn:
                found = settlement_leaf(txn, request.batch_id)
            leaf = 0 if found is None else found + 1
        return npb.Decisions(decisions=[decision(self._store, i) for i in request.ids], settlement_leaf=leaf)

    async def Open(self, request: npb.OpenRequest, context: Any) -> npb.OpenResponse:
        """The leader's open obligations: a follower may lag (a member restarted and still catching up
        would offer a settlement cycle a stale open set), so it answers NotLeader and the caller, which
        tries the region's addresses in turn, reaches the leader."""
        try:
            self._check_leader()
        except NodeError as e:
            await abort(context, e)
        as_debtor, as_creditor = await self.open_lists()
        return npb.OpenResponse(region=self._region, as_debtor=as_debtor, as_creditor=as_creditor)

    async def open_lists(self) -> tuple[list[bytes], list[bytes]]:
        """This region's open obligations: (owed by it, owed to it)."""
        with self._store.read() as txn:
            rows = obligations_with(txn, ObligationStatus.OPEN)
        return ([ob.encode() for side, _i, ob in rows if side == DEBTOR],
                [ob.encode() for side, _i, ob in rows if side != DEBTOR])

    async def join(self, raw: bytes) -> BatchOutcome:
        """Check a settlement batch against this region's obligations and append it (leader only)."""
        self._check_leader()
        self._check_batch(raw)
        return await self._propose(Batch(EventKind.SETTLEMENT, raw))

    async def Join(self, request: npb.JoinRequest, context: Any) -> npb.JoinResponse:
        try:
            outcome = await self.join(request.batch)
        except (NodeError, NettingError) as e:
            await abort(context, _bad(e))
        result = outcome.results[0]
        return npb.JoinResponse(result=result, result_name=Result(result).name.lower(),
                                leaf_index=outcome.log_indexes[0])

    async def Prove(self, request: npb.ProveRequest, context: Any) -> npb.ProveResponse:
        try:
            if self._prove is None:
                raise Refused("this node serves no proofs")
            size, note, leaf, proof = await self._prove(request.index)
            if not _provable_abroad(leaf):
                raise Refused(f"entry {request.index} is not an obligation decision or a settlement batch: only "
                              "those are proved to other regions (docs/federation.md)")
        except NodeError as e:
            await abort(context, e)
        return npb.ProveResponse(index=request.index, tree_size=size, leaf=leaf, proof=proof, note=note)

    def _check_batch(self, raw: bytes) -> None:
        """Refuse a batch that does not net, or that names an obligation of this region it does not hold open."""
        batch = decode_settlement(raw)
        mine = [ob for ob in batch.obligations if self._region in (ob.debtor, ob.creditor)]
        if not mine:
            raise Refused(f"no obligation of the batch involves region {self._region}")
        known = {}
        for ob in batch.obligations:
            d = decision(self._store, ob.id)
            if ob in mine and (d.status != ObligationStatus.OPEN or d.obligation != ob.encode()):
                raise Refused(f"obligation {ob.id.hex()} is not open in region {self._region} (status {d.status})")
            known[ob.id] = ob
        verdict = verify_settlement(raw, known)
        if not verdict.ok:
            raise BadRequest(f"settlement batch refused: {verdict.detail}")


def check_debtor(who: Identity | None, obs: Sequence[Obligation]) -> None:
    """A region hands in only obligations it owes: the debtor must be the region its certificate names
    (``federation REGION/…``). An --insecure node has no identities to check."""
    if who is None:
        return
    region = who.name.split("/", 1)[0]
    for ob in obs:
        if ob.debtor != region:
            raise Unauthorised(f"obligation {ob.id.hex()} is owed by region {ob.debtor}; your certificate is "
                               f"{who.role} {who.name}: a region offers only the obligations it owes")


def _provable_abroad(leaf: bytes) -> bool:
    """ACCEPT and RESOLVE entries and settlement batches: nothing in them names a payer or a person."""
    kind = leaf[1] if len(leaf) > 1 else 0
    if kind == EventKind.SETTLEMENT:
        return True
    role_at = LEAF_HEADER_SIZE + OBLIGATION_SIZE
    return kind == EventKind.OBLIGATION and len(leaf) > role_at and leaf[role_at] in (Role.ACCEPT, Role.RESOLVE)


def _bad(e: Exception) -> Exception:
    return BadRequest(f"bad obligation or batch: {e}") if isinstance(e, NettingError) else e


class ObligationRelay(LeaderRounds):
    """Leader-only loop on the node's event loop: offer pending obligations, resolve decided ones."""

    failure_message = "obligation relay round failed: %s"  # retried next period; the log is the state
    failure_level = logging.INFO

    def __init__(self, region: str, store: Store, federation: Federation, channel_for: ChannelFor,
                 propose: Propose, is_leader: Callable[[], bool], interval_s: float = 0.5) -> None:
        super().__init__("obligation-relay", interval_s, is_leader, log)
        self._region = region
        self._store = store
        self._federation = federation
        self._channel_for = channel_for
        self._propose = propose
        self._channels: dict[tuple[str, str], grpc.aio.Channel] = {}
        self.resolved = 0

    async def stop(self) -> None:
        await super().stop()
        for ch in self._channels.values():
            await ch.close()

    async def round(self) -> int:
        """One pass: returns how many obligations got a RESOLVE entry."""
        with self._store.read() as txn:
            pending = [(ob, obligation_row(txn, ob.id)) for _side, _i, ob in
                       obligations_with(txn, ObligationStatus.PENDING, DEBTOR, OFFER_MAX)]
        by_creditor: dict[str, list[bytes]] = {}
        for ob, row in pending:
            assert row is not None
            by_creditor.setdefault(ob.creditor, []).append(row[3])
        resolved = 0
        for creditor, items in sorted(by_creditor.items()):
            decisions = await self._offer(creditor, items)
            records = []
            for raw, d in zip(items, decisions, strict=True):
                if d.status in (ObligationStatus.OPEN, ObligationStatus.VOIDED, ObligationStatus.SETTLED) \
                        and d.obligation == raw:
                    records.append(resolve_record(raw, d.status != ObligationStatus.VOIDED, d.leaf_index))
            if records:
                await self._propose(Batch(EventKind.OBLIGATION, b"".join(records)))
                resolved += len(records)
        self.resolved += resolved
        return resolved

    async def _offer(self, creditor: str, obligations: Sequence[bytes]) -> Sequence[npb.Decision]:
        """The creditor region's decisions, from the first of its nodes that answers as leader."""
        try:
            region = self._federation.region(creditor)
        except ValueError:
            log.warning("obligations owed to %s, a region not in the federation: they wait", creditor)
            return [npb.Decision() for _ in obligations]
        for address in region.addresses:
            ch = self._channels.get((creditor, address))
            if ch is None:
                ch = self._channels[(creditor, address)] = self._channel_for(creditor, address)
            stub = npb_grpc.NettingStub(ch)
            try:
                resp = await stub.Offer(npb.OfferRequest(obligations=list(obligations)), timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as e:
                log.debug("offer to %s at %s: %s", creditor, address, e.code())
                continue
            return list(resp.decisions)
        return [npb.Decision() for _ in obligations]


def channel_factory(config: NodeConfig, federation: Federation) -> ChannelFor:
    """Channels to other regions, opened the one way the federation does it (node/witness.py)."""

    def make(region: str, address: str) -> grpc.aio.Channel:
        return foreign_channel(config, federation.region(region), address)

    return make


class SettlementTimer(LeaderRounds):
    """The periodic settlement cycle: run by the leader of the coordinating region (the federation
    config's first region), every ``every_s``. The same steps as ``sovledger settle``: ask every region
    for its open obligations, net those open in both their regions, have each involved region append it."""

    failure_message = "settlement cycle not completed: %s"  # a region unreachable: obligations stay open
    failure_level = logging.INFO

    def __init__(self, service: NettingService, federation: Federation, channel_for: ChannelFor,
                 is_leader: Callable[[], bool], every_s: float, clock_s: Callable[[], float]) -> None:
        super().__init__("settlement-timer", every_s, is_leader, log)
        self._service = service
        self._federation = federation
        self._channel_for = channel_for
        self._clock_s = clock_s
        self.cycles = 0

    async def round(self) -> int:
        return await self.cycle()

    async def cycle(self) -> int:
        """One cycle; returns how many obligations the batch settled (0: nothing open in both regions)."""
        own = self._service.region
        opens = [await self._service.open_lists()]
        for region in self._federation.others(own):
            resp = await self._call(region.name, region.addresses, "Open", npb.OpenRequest())
            opens.append((list(resp.as_debtor), list(resp.as_creditor)))
        obs = open_in_both([r for d, _c in opens for r in d], [r for _d, c in opens for r in c])
        if not obs:
            return 0
        raw = build_settlement(int(self._clock_s()), obs).encode()
        for name in sorted({o.debtor for o in obs} | {o.creditor for o in obs}):
            if name == own:
                result = (await self._service.join(raw)).results[0]
            else:
                region = self._federation.region(name)
                result = (await self._call(name, region.addresses, "Join", npb.JoinRequest(batch=raw))).result
            if result != Result.OK:
                log.warning("settlement batch appended by %s with result %s", name, Result(result).name.lower())
        self.cycles += 1
        log.info("settlement cycle: batch %s, %d gross obligations -> %d net transfers",
                 settlement_digest(raw)[:16].hex(), len(obs), len(net_transfers(net_positions(obs))))
        return len(obs)

    async def _call(self, region: str, addresses: Sequence[str], method: str, request: Any) -> Any:
        last: Exception | None = None
        for address in addresses:
            ch = self._channel_for(region, address)
            try:
                return await getattr(npb_grpc.NettingStub(ch), method)(request, timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as e:
                last = e
            finally:
                await ch.close()
        raise RuntimeError(f"region {region}: {method} failed: {last}")
