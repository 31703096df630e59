"""A minimal synchronous client for a sovledger node: submit batches, look things up, fetch proofs.

Used by tests, the demo and the benchmarks. The full PSP SDK (retries, failover, journal) builds
on it. Imports only the generated protobuf package and the pure parts of ``ledger``.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import grpc

from clients.channels import open_sync_channel
from clients.connect import ClientTls
from ledger.codec import (
    ACCOUNT_SIZE,
    TRANSFER_SIZE,
    decode_account_state,
    encode_account,
    encode_transfer,
    u128_bytes,
)
from ledger.types import BATCH_ITEMS_MAX, Account, AccountBalance, EventKind, Result, Transfer
from sovledger_pb import ANSWERS_BATCHED, ANSWERS_METADATA_KEY
from sovledger_pb import ledger_pb2 as pb
from sovledger_pb import ledger_pb2_grpc as pb_grpc


class BatchRefused(Exception):
    """The node refused a whole batch (nothing of it was applied)."""

    def __init__(self, code: grpc.StatusCode, message: str, leader_hint: str = "") -> None:
        self.code = code
        self.leader_hint = leader_hint
        super().__init__(f"{code.name}: {message}")


@dataclass(frozen=True, slots=True)
class ItemResult:
    result: Result
    log_index: int
    block: int


@dataclass(frozen=True, slots=True)
class BatchResult:
    batch_id: int
    results: list[int]
    log_indexes: list[int]
    blocks: list[int]
    timestamp_ns: int

    def items(self) -> list[ItemResult]:
        rows = zip(self.results, self.log_indexes, self.blocks, strict=True)
        return [ItemResult(Result(r), i, b) for r, i, b in rows]


# Submit call metadata: accept several answers per response message (docs/formats.md, "Submit answers").
BATCHED_ANSWERS = ((ANSWERS_METADATA_KEY, ANSWERS_BATCHED),)


def answers_in(message: pb.SubmitResponse) -> list[pb.SubmitResponse]:
    """The answers one Submit response message carries, in request order: its own, then ``more``."""
    return [message, *message.more] if message.more else [message]


def _code(value: int) -> grpc.StatusCode:
    for c in grpc.StatusCode:
        if c.value[0] == value:
            return c
    return grpc.StatusCode.UNKNOWN


def encode_accounts(accounts: Sequence[Account]) -> bytes:
    return b"".join(encode_account(a) for a in accounts)


def encode_transfers(transfers: Sequence[Transfer]) -> bytes:
    return b"".join(encode_transfer(t) for t in transfers)


class LedgerClient:
    def __init__(self, target: str, timeout_s: float = 30.0, stale_reads: bool = False,
                 tls: ClientTls | None = None) -> None:
        """``stale_reads``: let a follower answer lookups from its local (possibly lagging) state;
        by default lookups are linearizable and only the leader answers them. ``tls``: the client
        certificate (clients.connect); None only for a node started with --insecure."""
        self.target = target
        self.timeout_s = timeout_s
        self._read_md = (("sovledger-read", "stale"),) if stale_reads else ()
        self.channel = open_sync_channel(target, tls)
        self.ledger = pb_grpc.LedgerStub(self.channel)
        self.audit = pb_grpc.AuditStub(self.channel)
        self.admin = pb_grpc.AdminStub(self.channel)
        self._ids = itertools.count(1)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> LedgerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_ready(self, timeout_s: float = 15.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout_s)

    # -- submit ---------------------------------------------------------------------------------

    def create_accounts(self, accounts: Sequence[Account]) -> list[ItemResult]:
        return self.submit_one(EventKind.CREATE_ACCOUNT, encode_accounts(accounts)).items()

    def create_transfers(self, transfers: Sequence[Transfer]) -> list[ItemResult]:
        return self.submit_one(EventKind.CREATE_TRANSFER, encode_transfers(transfers)).items()

    def submit_one(self, kind: EventKind, records: bytes, signatures: bytes = b"",
                   signer_key_id: bytes = b"") -> BatchResult:
        (res,) = list(self.submit_stream([(kind, records, signatures, signer_key_id)], inflight=1,
                                         timeout_s=self.timeout_s))
        if isinstance(res, BatchRefused):
            raise res
        return res

    def submit_stream(self, batches: Iterable[tuple[EventKind, bytes, bytes, bytes]],
                      inflight: int = 8, timeout_s: float | None = None,
                      sign_group: int = 0) -> Iterator[BatchResult | BatchRefused]:
        """Stream batches on one Submit call with at most ``inflight`` unanswered; yields in order.
        ``sign_group``: the signatures are one per group of that many records (docs/formats.md).

        A refused batch is yielded as a ``BatchRefused`` (the stream continues); a broken stream
        raises ``grpc.RpcError`` — batches without a response then have an unknown outcome and
        must be re-sent with the same ids (idempotent) or looked up.
        """
        window = threading.Semaphore(inflight)
        done = threading.Event()

        def requests() -> Iterator[pb.SubmitRequest]:
            for kind, records, sigs, key_id in batches:
                while not window.acquire(timeout=0.5):
                    if done.is_set():
                        return
                yield pb.SubmitRequest(batch_id=next(self._ids), kind=pb.EventKind.ValueType(kind), records=records,
                                       signatures=sigs, signer_key_id=key_id, sign_group=sign_group if sigs else 0)

        call = self.ledger.Submit(requests(), timeout=timeout_s, metadata=BATCHED_ANSWERS)
        try:
            for message in call:
                for resp in answers_in(message):
                    window.release()
                    if resp.status.code:
                        yield BatchRefused(_code(resp.status.code), resp.status.message, resp.status.leader_hint)
                    else:
                        yield BatchResult(resp.batch_id, list(resp.results), list(resp.log_indexes),
                                          list(resp.blocks), resp.timestamp_ns)
        finally:
            done.set()
            call.cancel()

    # -- lookups --------------------------------------------------------------------------------

    def lookup_transfers(self, ids: Sequence[int]) -> list[pb.TransferInfo]:
        resp = self.ledger.LookupTransfers(pb.LookupRequest(ids=[u128_bytes(i) for i in ids]),
                                           timeout=self.timeout_s, metadata=self._read_md)
        return list(resp.transfers)

    def lookup_accounts(self, ids: Sequence[int]) -> list[AccountBalance | None]:
        resp = self.ledger.LookupAccounts(pb.LookupRequest(ids=[u128_bytes(i) for i in ids]),
                                          timeout=self.timeout_s, metadata=self._read_md)
        return [decode_account_state(a.state) if a.found else None for a in resp.accounts]

    def history(self, account_id: int, limit: int = 100) -> Iterator[pb.Entry]:
        after, first = 0, True
        while True:
            resp = self.ledger.AccountHistory(
                pb.HistoryRequest(account_id=u128_bytes(account_id), after_index=after, first_page=first,
                                  limit=limit), timeout=self.timeout_s, metadata=self._read_md)
            yield from resp.entries
            if not resp.more or not resp.entries:
                return
            after, first = resp.entries[-1].index, False

    # -- audit ----------------------------------------------------------------------------------

    def checkpoint(self) -> pb.CheckpointResponse:
        return self.audit.GetCheckpoint(pb.CheckpointRequest(), timeout=self.timeout_s)

    def inclusion_proof(self, index: int | None = None, transfer_id: int | None = None,
                        tree_size: int = 0) -> pb.InclusionResponse:
        if transfer_id is not None:
            req = pb.InclusionRequest(transfer_id=u128_bytes(transfer_id), tree_size=tree_size)
        else:
            req = pb.InclusionRequest(index=index or 0, tree_size=tree_size)
        return self.audit.GetInclusionProof(req, timeout=self.timeout_s)

    def consistency_proof(self, first: int, second: int = 0) -> pb.ConsistencyResponse:
        return self.audit.GetConsistencyProof(pb.ConsistencyRequest(first=first, second=second),
                                              timeout=self.timeout_s)

    def entries(self, start: int, end: int = 0) -> Iterator[bytes]:
        for chunk in self.audit.StreamEntries(pb.EntriesRequest(start=start, end=end)):
            yield from chunk.leaves

    def blocks(self, start: int = 1, end: int = 0) -> Iterator[bytes]:
        for chunk in self.audit.StreamBlocks(pb.BlocksRequest(start=start, end=end)):
            yield from chunk.headers

    def status(self) -> pb.StatusResponse:
        return self.admin.Status(pb.StatusRequest(), timeout=self.timeout_s)


def chunks(records: bytes, record_size: int, per_batch: int = BATCH_ITEMS_MAX) -> Iterator[bytes]:
    step = record_size * per_batch
    for i in range(0, len(records), step):
        yield records[i : i + step]


__all__ = [
    "ACCOUNT_SIZE",
    "TRANSFER_SIZE",
    "BatchRefused",
    "BatchResult",
    "ItemResult",
    "LedgerClient",
    "chunks",
    "encode_accounts",
    "encode_transfers",
]
