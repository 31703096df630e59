"""Which node of the region to talk to, and the one place that opens a channel to it."""

from __future__ import annotations

from collections.abc import Sequence

import grpc.aio

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


def open_channel(target: str) -> grpc.aio.Channel:
    """The SDK's only way to open a channel (credentials, when the region speaks TLS, belong here)."""
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)


class Router:
    """Which node to talk to: the known leader, else the next target of the region (round robin)."""

    def __init__(self, targets: Sequence[str]) -> None:
        if not targets:
            raise ValueError("at least one target HOST:PORT is needed")
        self.targets = list(dict.fromkeys(targets))
        self._next = 0
        self.leader: str | None = None

    def current(self) -> str:
        return self.leader or self.targets[self._next % len(self.targets)]

    def succeeded(self, target: str) -> None:
        self.leader = target

    def failed(self, target: str, leader_hint: str = "") -> None:
        if leader_hint and leader_hint != target:
            if leader_hint not in self.targets:
                self.targets.append(leader_hint)  # a member we were not told about
            self.leader = leader_hint
            return
        self.leader = None
        if target in self.targets:
            self._next = self.targets.index(target) + 1
        else:
            self._next += 1


__all__ = ["CHANNEL_OPTIONS", "MAX_MESSAGE_BYTES", "Router", "open_channel"]
