"""A seeded, deterministic simulator for the consensus core: one process, one seed, no clock.

Everything random derives from ``random.Random(seed)``: ticks, message delivery order, drops,
duplicates, delays, partitions (symmetric and asymmetric), crashes and restarts, and the client
workload. A crash happens between two Ready steps, or after persisting but before sending — what a
node loses is exactly what it had not persisted (the driver persists before it sends).

Checkers run after every step (``Simulator.check``):
- at most one leader per term;
- state-machine safety: no two nodes apply different data at one index;
- identical application heads (running hash) at equal applied index;
- log matching: committed prefixes of any two nodes agree;
- leader completeness: a leader's log holds every entry acknowledged before its term;
- no acknowledged entry is ever lost.

A failing seed is reported in the exception and replays exactly: ``python -m tests.raft.sim --seed N``.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
from dataclasses import dataclass, field

from consensus.codec import decode_message, encode_message
from consensus.raft import Config, ProposalDropped, RawNode
from consensus.storage import MemoryStorage
from consensus.types import ConfState, Message, Role


class SafetyViolation(AssertionError):
    pass


@dataclass
class SimNode:
    id: int
    storage: MemoryStorage
    raw: RawNode
    up: bool = True
    applied: list[bytes] = field(default_factory=list)  # data of applied NORMAL entries, by index


class Simulator:
    def __init__(self, seed: int, nodes: int = 3, faults: bool = True) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.faults = faults
        self.ids = list(range(1, nodes + 1))
        self.nodes = {i: self._boot(i, MemoryStorage(ConfState(tuple(self.ids)))) for i in self.ids}
        self.net: list[tuple[int, Message]] = []  # (deliver at step, message)
        self.cut: set[tuple[int, int]] = set()  # (from, to) pairs that drop messages
        self.step_no = 0
        self.leaders: dict[int, int] = {}  # term -> leader id
        self.acked: dict[int, bytes] = {}  # index -> data the leader applied (acknowledged to a client)
        self.acked_term: dict[int, int] = {}  # index -> term of the leader that acknowledged it
        self.proposed = 0
        self.trace = hashlib.sha256()
        self.snapshots = 0

    def _boot(self, i: int, storage: MemoryStorage) -> SimNode:
        cfg = Config(id=i, storage=storage, rng=random.Random(self.rng.random()), election_tick=10,
                     heartbeat_tick=1, max_inflight_msgs=8, max_size_per_msg=512)
        node = SimNode(i, storage, RawNode(cfg))
        node.applied = [b""] * 0
        return node

    # -- one step ------------------------------------------------------------------------------

    def step(self) -> None:
        self.step_no += 1
        rng = self.rng
        for i in self.ids:
            n = self.nodes[i]
            if not n.up:
                continue
            if rng.random() < 0.3:
                n.raw.tick()
            self._drain(n)
        self._deliver()
        self._client()
        if self.faults:
            self._faults()
        self.check()

    def _drain(self, n: SimNode) -> None:
        while n.up and n.raw.has_ready():
            rd = n.raw.ready()
            if self.faults and self.rng.random() < 0.002:
                self._crash(n)  # crash before persisting: this Ready is lost entirely
                return
            if rd.snapshot is not None:
                self._install(n, rd.snapshot.metadata.index)
            n.storage.persist(rd.hard_state, list(rd.entries), rd.snapshot)
            if self.faults and self.rng.random() < 0.002:
                self._crash(n)  # persisted, never sent
                return
            for m in rd.messages:
                delay = self.rng.randrange(3) if self.faults else 0
                self.net.append((self.step_no + delay, decode_message(encode_message(m))))
            for e in rd.committed_entries:
                self._apply(n, e.index, e.data)
            n.raw.advance(rd)

    def _apply(self, n: SimNode, index: int, data: bytes) -> None:
        while len(n.applied) < index:
            n.applied.append(b"")
        n.applied[index - 1] = data
        self.trace.update(bytes([n.id]) + index.to_bytes(8, "little") + data)
        if n.raw.role == Role.LEADER and data and index not in self.acked:
            self.acked[index] = data
            self.acked_term[index] = n.raw.term

    def _reboot(self, n: SimNode) -> SimNode:
        """Restart: Raft state comes back from its storage; the state machine is durable (as the
        ledger's LMDB is), so what it had applied survives and replayed entries overwrite identically."""
        fresh = self._boot(n.id, n.storage)
        fresh.applied = n.applied
        return fresh

    def _install(self, n: SimNode, index: int) -> None:
        """The driver's job on a snapshot: take the state machine at ``index`` from a replica that has it."""
        donor = next((d for d in self.nodes.values() if len(d.applied) >= index and d is not n), None)
        if donor is None:
            self.fail(f"node {n.id} was sent a snapshot at {index} that no replica has applied")
            return
        n.applied = list(donor.applied[:index])
        self.snapshots += 1

    def _compact(self) -> None:
        n = self.rng.choice(list(self.nodes.values()))
        if n.up:
            upto = min(len(n.applied), n.raw.applied, n.storage.last_index()) - 3
            if upto > n.storage.first_index():
                n.storage.compact(upto)

    def _deliver(self) -> None:
        rng = self.rng
        due = [x for x in self.net if x[0] <= self.step_no]
        self.net = [x for x in self.net if x[0] > self.step_no]
        if self.faults:
            rng.shuffle(due)  # reorder
        for _, m in due:
            if (m.frm, m.to) in self.cut or not self.nodes[m.to].up:
                continue
            if self.faults and rng.random() < 0.05:
                continue  # drop
            self.nodes[m.to].raw.step(m)
            if self.faults and rng.random() < 0.03:
                self.nodes[m.to].raw.step(m)  # duplicate

    def _client(self) -> None:
        if self.rng.random() < 0.3:
            for n in self.nodes.values():
                if n.up and n.raw.role == Role.LEADER:
                    try:
                        self.proposed += 1
                        n.raw.propose(f"{self.seed}:{self.proposed}".encode())
                    except ProposalDropped:
                        pass
                    break

    def _crash(self, n: SimNode) -> None:
        n.up = False

    def _faults(self) -> None:
        rng = self.rng
        x = rng.random()
        if x < 0.004:
            down = [n for n in self.nodes.values() if n.up]
            if len(down) > len(self.ids) // 2 + 0:
                self._crash(rng.choice(down))
        elif x < 0.012:
            for n in self.nodes.values():
                if not n.up:  # restart from durable storage: Raft's in-memory state is gone
                    self.nodes[n.id] = self._reboot(n)
                    break
        elif x < 0.016:
            a, b = rng.sample(self.ids, 2)
            self.cut.add((a, b))  # asymmetric
            if rng.random() < 0.5:
                self.cut.add((b, a))  # symmetric
        elif x < 0.022:
            self.cut.clear()  # heal
        elif x < 0.040:
            self._compact()  # log compaction: lagging or restarted nodes then need a snapshot

    def heal(self) -> None:
        self.cut.clear()
        for n in list(self.nodes.values()):
            if not n.up:
                self.nodes[n.id] = self._reboot(n)

    # -- checkers ---------------------------------------------------------------------------------

    def fail(self, what: str) -> None:
        raise SafetyViolation(f"seed {self.seed} step {self.step_no}: {what} "
                              f"(replay: python -m tests.raft.sim --seed {self.seed})")

    def check(self) -> None:
        for n in self.nodes.values():
            if n.up and n.raw.role == Role.LEADER:
                other = self.leaders.setdefault(n.raw.term, n.id)
                if other != n.id:
                    self.fail(f"two leaders in term {n.raw.term}: {other} and {n.id}")
                for index in self.acked:
                    # leader completeness: every leader of a later term holds the committed entry
                    compacted = index <= n.storage.snap.index  # then it is inside the node's snapshot
                    if n.raw.term > self.acked_term[index] and not compacted and n.raw.log_term(index) == 0:
                        self.fail(f"leader {n.id} (term {n.raw.term}) lacks acknowledged entry {index}")
        nodes = list(self.nodes.values())
        for a in nodes:
            for b in nodes:
                if a.id >= b.id:
                    continue
                k = min(len(a.applied), len(b.applied))
                if a.applied[:k] != b.applied[:k]:
                    first = next(i for i in range(k) if a.applied[i] != b.applied[i])
                    self.fail(f"nodes {a.id} and {b.id} applied different entries at index {first + 1}")
                if len(a.applied) == len(b.applied) and _head(a) != _head(b):
                    self.fail(f"nodes {a.id} and {b.id} have different heads at applied {len(a.applied)}")
            for index, data in self.acked.items():
                if index <= len(a.applied) and a.applied[index - 1] != data:
                    self.fail(f"node {a.id} applied something else at acknowledged index {index}")
        for a in nodes:
            for b in nodes:
                c = min(a.raw.commit, b.raw.commit, a.raw.last_index(), b.raw.last_index())
                ta, tb = a.raw.log_term(c), b.raw.log_term(c)  # 0: compacted into a snapshot, unknown here
                if a.id < b.id and c and ta and tb and ta != tb:
                    self.fail(f"log matching: nodes {a.id} and {b.id} disagree on term at committed index {c}")


def _head(n: SimNode) -> bytes:
    """The application head: a hash over everything applied, in index order."""
    h = hashlib.sha256()
    for i, data in enumerate(n.applied, start=1):
        h.update(i.to_bytes(8, "little") + len(data).to_bytes(4, "little") + data)
    return h.digest()


def run(seed: int, steps: int = 600, nodes: int = 3, liveness_steps: int = 400) -> Simulator:
    """Safety mode for ``steps`` steps, then heal and require progress within ``liveness_steps``."""
    sim = Simulator(seed, nodes)
    for _ in range(steps):
        sim.step()
    sim.faults = False
    sim.heal()
    target = max(len(n.applied) for n in sim.nodes.values())
    for _ in range(liveness_steps):
        sim.step()
        if all(len(n.applied) > target for n in sim.nodes.values()):
            return sim
    sim.fail(f"liveness: no progress beyond index {target} within {liveness_steps} steps after healing")
    return sim


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Raft simulator swarm")
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--seed", type=int, default=None, help="replay one seed")
    ap.add_argument("--nodes", type=int, default=3, choices=(3, 5))
    ap.add_argument("--steps", type=int, default=600)
    args = ap.parse_args(argv)
    seeds = [args.seed] if args.seed is not None else range(args.start, args.start + args.seeds)
    for s in seeds:
        try:
            sim = run(s, args.steps, args.nodes)
        except SafetyViolation as e:
            print(f"FAIL {e}", file=sys.stderr)
            return 1
        if args.seed is not None:
            print(f"seed {s}: ok, trace {sim.trace.hexdigest()[:16]}, applied "
                  f"{max(len(n.applied) for n in sim.nodes.values())}")
    print(f"{len(seeds)} seeds ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
