"""Configuration of one Raft node (etcd's ``Config``), validated at construction."""

from __future__ import annotations

import random
from dataclasses import dataclass

from consensus.storage import Storage
from consensus.types import Index, NodeId


class ConfigError(ValueError):
    """A configuration that cannot work (the message says which field and why)."""


@dataclass(frozen=True, slots=True)
class Config:
    id: int
    storage: Storage
    rng: random.Random  # the only source of randomness (election timeouts): seed it to replay a run
    election_tick: int = 10  # a follower campaigns after a random [election_tick, 2*election_tick) silent ticks
    heartbeat_tick: int = 1  # the leader sends heartbeats every heartbeat_tick ticks
    applied: int = 0  # the application's applied index at start (entries after it are handed out again)
    max_size_per_msg: int = 1 << 20  # bytes of entries per append (at least one entry is always sent)
    max_inflight_msgs: int = 256  # unacknowledged appends per follower in replicate state
    check_quorum: bool = True  # a leader not hearing from a quorum for an election timeout steps down
    pre_vote: bool = True  # ask "could I win?" before bumping the term (Raft thesis §9.6)
    max_uncommitted_entries_size: int = 0  # bytes of uncommitted proposals a leader accepts (0: unlimited)
    max_committed_size_per_ready: int = 0  # bytes of committed entries per Ready (0: max_size_per_msg)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        checks = [
            (self.id > 0, "id must be > 0 (0 means 'nobody')"),
            (self.heartbeat_tick > 0, "heartbeat_tick must be > 0"),
            (self.election_tick > self.heartbeat_tick, "election_tick must be > heartbeat_tick"),
            (self.applied >= 0, "applied must be >= 0"),
            (self.max_size_per_msg > 0, "max_size_per_msg must be > 0"),
            (self.max_inflight_msgs > 0, "max_inflight_msgs must be > 0"),
            (self.max_uncommitted_entries_size >= 0, "max_uncommitted_entries_size must be >= 0"),
            (self.max_committed_size_per_ready >= 0, "max_committed_size_per_ready must be >= 0"),
            (isinstance(self.rng, random.Random), "rng must be a random.Random instance"),
        ]
        for ok, why in checks:
            if not ok:
                raise ConfigError(why)

    @property
    def node_id(self) -> NodeId:
        return NodeId(self.id)

    @property
    def applied_index(self) -> Index:
        return Index(self.applied)

    def committed_bytes_per_ready(self) -> int:
        return self.max_committed_size_per_ready or self.max_size_per_msg
