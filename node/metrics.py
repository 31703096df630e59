"""Prometheus metrics (off unless ``metrics_listen`` is set): counters read from the node on scrape."""

from __future__ import annotations

from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily


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


def start_metrics(listen: str, node: Any) -> None:
    host, _, port = listen.rpartition(":")
    REGISTRY.register(_NodeCollector(node))
    start_http_server(int(port), addr=host)
