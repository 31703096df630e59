"""The one place where clients open gRPC channels to a node (asyncio SDK and the synchronous client).

Channel credentials (TLS), when the region speaks it, are added here and nowhere else.
"""

from __future__ import annotations

import grpc
import grpc.aio

from clients.connect import ClientTls

MAX_MESSAGE_BYTES = 3 << 20
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # a restarted or failed-over node should be reachable again within ~100 ms, not gRPC's default 1 s+
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
]


def open_channel(target: str, tls: ClientTls | None = None) -> grpc.aio.Channel:
    """An asyncio channel to ``target`` (host:port) — the PSP SDK's. ``tls``: the client certificate
    (clients.connect); None means plaintext, only for a node started with --insecure."""
    if tls is None:
        return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
    return grpc.aio.secure_channel(target, tls.credentials(), options=CHANNEL_OPTIONS)


def open_sync_channel(target: str, tls: ClientTls | None = None) -> grpc.Channel:
    """A blocking channel to ``target`` (host:port) — ``clients.client.LedgerClient``'s, the CLIs'."""
    if tls is None:
        return grpc.insecure_channel(target, options=CHANNEL_OPTIONS[:2])
    return grpc.secure_channel(target, tls.credentials(), options=CHANNEL_OPTIONS[:2])


__all__ = ["CHANNEL_OPTIONS", "MAX_MESSAGE_BYTES", "open_channel", "open_sync_channel"]
