"""A small in-test network: RawNodes over MemoryStorage, a driver that keeps the persistence contract,
and knobs to drop, cut and inspect messages."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from consensus.raft import Config, RawNode
from consensus.storage import MemoryStorage
from consensus.types import ConfChange, ConfState, EntryType, Message, MessageType, NodeId, ReadState, Role

MT = MessageType


def nid(i: int) -> NodeId:
    return NodeId(i)


class Net:
    def __init__(self, n: int = 3, *, voters: Iterable[int] | None = None, learners: Iterable[int] = (),
                 seed: int = 1, check_quorum: bool = True, pre_vote: bool = True, election_tick: int = 10,
                 heartbeat_tick: int = 1, max_inflight_msgs: int = 256, max_size_per_msg: int = 1 << 20) -> None:
        self.ids = [nid(i) for i in range(1, n + 1)]
        v = tuple(nid(i) for i in (voters if voters is not None else self.ids))
        cs = ConfState(v, tuple(nid(i) for i in learners))
        self.seed = seed
        self.opts = {"check_quorum": check_quorum, "pre_vote": pre_vote, "election_tick": election_tick,
                     "heartbeat_tick": heartbeat_tick, "max_inflight_msgs": max_inflight_msgs,
                     "max_size_per_msg": max_size_per_msg}
        self.storage = {i: MemoryStorage(cs) for i in self.ids}
        self.applied: dict[NodeId, list[bytes]] = {i: [] for i in self.ids}
        self.applied_index: dict[NodeId, int] = {i: 0 for i in self.ids}
        self.nodes = {i: self._node(i) for i in self.ids}
        self.drop: Callable[[Message], bool] = lambda m: False
        self.cut: set[tuple[NodeId, NodeId]] = set()
        self.sent: list[Message] = []
        self.reads: dict[NodeId, list[ReadState]] = {i: [] for i in self.ids}
        self.down: set[NodeId] = set()

    def _node(self, i: NodeId) -> RawNode:
        rng = random.Random(self.seed * 1000 + i)
        cfg = Config(id=i, storage=self.storage[i], rng=rng, applied=self.applied_index[i],
                     **self.opts)  # type: ignore[arg-type]
        return RawNode(cfg)

    def restart(self, i: int) -> None:
        """Lose everything in memory; the storage is what was persisted (MemoryStorage = durable)."""
        self.nodes[nid(i)] = self._node(nid(i))

    # -- the driver ---------------------------------------------------------------------------------

    def drain(self, i: NodeId) -> list[Message]:
        n, st = self.nodes[i], self.storage[i]
        out: list[Message] = []
        while n.has_ready():
            rd = n.ready()
            st.persist(rd.hard_state, rd.entries, rd.snapshot)
            if rd.snapshot is not None:
                self.applied_index[i] = rd.snapshot.metadata.index
            out.extend(rd.messages)
            for e in rd.committed_entries:
                if e.index <= self.applied_index[i]:
                    continue
                self.applied_index[i] = e.index
                if e.type == EntryType.CONF_CHANGE:
                    st.set_conf_state(n.apply_conf_change(ConfChange.decode(e.data)))
                elif e.data:
                    self.applied[i].append(e.data)
            self.reads[i].extend(rd.read_states)
            n.advance(rd)
        return out

    def deliver(self, msgs: Iterable[Message]) -> None:
        for m in msgs:
            self.sent.append(m)
            if m.to not in self.nodes or m.to in self.down or (m.frm, m.to) in self.cut or self.drop(m):
                continue
            self.nodes[m.to].step(m)

    def settle(self, rounds: int = 200) -> None:
        for _ in range(rounds):
            msgs: list[Message] = []
            for i in self.ids:
                if i not in self.down:
                    msgs.extend(self.drain(i))
            if not msgs:
                return
            self.deliver(msgs)

    def tick(self, n: int = 1, only: Iterable[int] | None = None) -> None:
        who = [nid(i) for i in only] if only is not None else self.ids
        for _ in range(n):
            for i in who:
                if i not in self.down:
                    self.nodes[i].tick()
            self.settle()

    # -- helpers ------------------------------------------------------------------------------------

    def elect(self, i: int) -> RawNode:
        self.nodes[nid(i)].campaign()
        self.settle()
        assert self.nodes[nid(i)].role == Role.LEADER, f"node {i} was not elected"
        return self.nodes[nid(i)]

    def leaders(self) -> list[NodeId]:
        return [i for i, n in self.nodes.items() if n.role == Role.LEADER and i not in self.down]

    def isolate(self, i: int) -> None:
        a = nid(i)
        self.cut |= {(a, b) for b in self.ids if b != a} | {(b, a) for b in self.ids if b != a}

    def heal(self) -> None:
        self.cut.clear()
        self.drop = lambda m: False

    def of_type(self, kind: MessageType, frm: int | None = None, to: int | None = None) -> list[Message]:
        return [m for m in self.sent if m.type == kind and (frm is None or m.frm == frm) and (to is None or m.to == to)]
