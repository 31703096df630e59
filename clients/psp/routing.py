"""Which node of the region to talk to (channels are opened by ``clients.channels``)."""

from __future__ import annotations

from collections.abc import Sequence


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


__all__ = ["Router"]
