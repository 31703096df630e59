"""Prometheus metrics. Exported on ``--metrics HOST:PORT`` (``/metrics``); off unless set.

Two kinds: histograms and counters that the hot path updates as things happen (module-level
objects below; recording costs a few hundred nanoseconds per block or batch, never per payment
except the per-result counter, which is tallied once per batch), and gauges read from the node at
scrape time (``_NodeCollector``). docs/operations.md lists every exported name; a test scrapes a
real node and checks that each documented name exists.
"""

from __future__ import annotations

import struct
from collections import Counter as Tally
from collections.abc import Iterable
from itertools import repeat
from typing import Any, Final

from prometheus_client import Counter, Histogram, start_http_server
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily

from ledger.codec import TRANSFER_SIZE, Batch
from ledger.types import EventKind, Result

_LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
_PSP_OFFSET: Final = 164  # psp_id u32 inside the 176-byte transfer record (docs/formats.md)
_U32: Final = struct.Struct("<I")

BATCH_ACK = Histogram("sovledger_batch_ack_seconds",
                      "From a batch entering the ingest queue to its durable result (or error)",
                      buckets=_LATENCY_BUCKETS)
BLOCK_APPLY = Histogram("sovledger_block_apply_seconds",
                        "Applying one block to the ledger state, its store commit included",
                        buckets=_LATENCY_BUCKETS)
FSYNC = Histogram("sovledger_fsync_seconds",
                  "One durable LMDB commit (write + fsync): ledger blocks and Raft state",
                  buckets=_LATENCY_BUCKETS)
RAFT_COMMIT = Histogram("sovledger_raft_commit_seconds",
                        "From proposing a block to Raft until a quorum stored it and it was applied here",
                        buckets=_LATENCY_BUCKETS)
RESULTS = Counter("sovledger_results", "Events applied, by kind, result code name and PSP id (transfers)",
                  ["kind", "result", "psp"])
EXPIRY_BLOCKS = Counter("sovledger_expiry_blocks", "Empty blocks proposed by the pending-expiry timer")

_RESULT_NAMES: Final = {r.value: r.name.lower() for r in Result}
# Distinct psp label values kept. psp_id is a u32 the client writes into each record (checked
# against the certificate with TLS, not at all with --insecure), so the label set would otherwise
# grow with whatever ids clients send; each label set costs ~1-2 KiB in the registry. Beyond
# this many, further PSPs are counted under psp="other". 512 is far above a region's PSPs.
PSP_LABELS_MAX: Final = 512
_psp_labels: set[int] = set()


def psp_label(psp: int) -> str:
    if psp in _psp_labels:
        return str(psp)
    if len(_psp_labels) >= PSP_LABELS_MAX:
        return "other"
    _psp_labels.add(psp)
    return str(psp)


def count_results(batch: Batch, results: Any) -> None:
    """Tally one committed batch's result codes (see ``count_block``)."""
    count_block([(batch, results)])


_PSP_OF_RECORD: Final = struct.Struct(f"<{_PSP_OFFSET}xI{TRANSFER_SIZE - _PSP_OFFSET - 4}x")
_KIND_NAMES: Final = {k.value: k.name.lower() for k in EventKind}


def count_block(committed: Iterable[tuple[Batch, Any]]) -> None:
    """Tally a committed block's result codes (per PSP for transfers): one counter update per
    distinct (kind, result, psp) in the whole block, not per batch or item — a block of many
    one-payment batches costs a few dictionary updates per batch here."""
    tally: Tally[tuple[int, int, int]] = Tally()
    for batch, results in committed:
        kind = int(batch.kind)
        if kind == EventKind.CREATE_TRANSFER:
            if len(results) == 1:
                tally[(kind, results[0], _U32.unpack_from(batch.records, _PSP_OFFSET)[0])] += 1
            else:
                psps = (p for (p,) in _PSP_OF_RECORD.iter_unpack(batch.records))
                tally.update(zip(repeat(kind), results, psps, strict=False))
        else:
            tally.update((kind, r, 0) for r in results)
    for (kind, code, psp), n in tally.items():
        RESULTS.labels(_KIND_NAMES.get(kind, str(kind)), _RESULT_NAMES.get(code, str(code)), psp_label(psp)).inc(n)


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    except (OSError, IndexError, ValueError):
        return 0


class _NodeCollector:
    def __init__(self, node: Any) -> None:
        self._node = node

    def collect(self) -> Any:
        node = self._node
        head = node.state.head
        ingest = node.ingest
        yield GaugeMetricFamily("sovledger_tree_size", "Entries in the log", value=head.tree_size)
        yield GaugeMetricFamily("sovledger_block_height", "Last applied block", value=head.height)
        yield GaugeMetricFamily("sovledger_ingest_queue_items", "Items waiting for a block",
                                value=ingest.queued_items if ingest else 0)
        yield CounterMetricFamily("sovledger_items_committed", "Items committed by this process",
                                  value=ingest.items_committed if ingest else 0)
        yield CounterMetricFamily("sovledger_blocks_committed", "Blocks committed by this process",
                                  value=ingest.blocks_committed if ingest else 0)
        yield GaugeMetricFamily("sovledger_store_bytes", "LMDB bytes in use", value=node.store.size_bytes())
        yield GaugeMetricFamily("sovledger_rss_bytes", "Resident memory of the node process", value=rss_bytes())
        yield from self._raft(node)

    @staticmethod
    def _raft(node: Any) -> Any:
        rep = node.replicator
        st = node.status()
        role = GaugeMetricFamily("sovledger_raft_role", "1 for this node's current role", labels=["role"])
        for name in ("leader", "follower", "candidate", "pre-candidate"):
            role.add_metric([name], 1 if st.role == name else 0)
        yield role
        yield GaugeMetricFamily("sovledger_raft_term", "Current Raft term (0 for a single node)", value=st.term)
        yield GaugeMetricFamily("sovledger_applied_index", "Raft index applied to the ledger (single node: block)",
                                value=st.applied_index)
        lag = GaugeMetricFamily("sovledger_follower_lag_entries",
                                "Leader only: Raft entries each follower is behind the leader's last index",
                                labels=["peer"])
        queue = GaugeMetricFamily("sovledger_peer_send_queue_messages",
                                  "Raft messages waiting to be sent to each peer", labels=["peer"])
        queue_bytes = GaugeMetricFamily("sovledger_peer_send_queue_bytes",
                                        "Bytes of Raft messages waiting to be sent to each peer", labels=["peer"])
        if rep is not None:
            status = rep.raw.status()
            last = rep.raw.last_index()
            for peer, pr in status.progress:
                if peer != rep.self_id:
                    lag.add_metric([f"node-{peer}"], max(0, last - pr.match))
            for peer, link in getattr(rep.transport, "_links", {}).items():
                queue.add_metric([f"node-{peer}"], link.queue.qsize())
                queue_bytes.add_metric([f"node-{peer}"], getattr(link, "queued_bytes", 0))
        yield lag
        yield queue
        yield queue_bytes


def start_metrics(listen: str, node: Any) -> None:
    host, _, port = listen.rpartition(":")
    REGISTRY.register(_NodeCollector(node))
    start_http_server(int(port), addr=host)
