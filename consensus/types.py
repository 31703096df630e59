"""Values of the consensus core. Everything numbered is on the wire: explicit numbers, never reused."""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import NewType

from consensus.errors import DecodeError

Term = NewType("Term", int)
Index = NewType("Index", int)
NodeId = NewType("NodeId", int)

NO_LEADER = NodeId(0)  # also "no vote": node ids start at 1
ZERO_TERM = Term(0)
ZERO_INDEX = Index(0)


class EntryType(enum.IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1


class MessageType(enum.IntEnum):
    APP = 1  # append entries (empty: a probe, or news of a higher commit index)
    APP_RESP = 2
    VOTE = 3
    VOTE_RESP = 4
    PRE_VOTE = 5
    PRE_VOTE_RESP = 6
    HEARTBEAT = 7
    HEARTBEAT_RESP = 8
    TIMEOUT_NOW = 9  # leader transfer: the target campaigns at once
    SNAP = 10  # install a snapshot: ``snapshot`` carries its metadata (and data, if the driver ships it inline)
    READ_INDEX = 11  # a follower forwards a ReadIndex request to its leader (term 0: not a term-bearing message)
    READ_INDEX_RESP = 12  # the leader answers it: ``index`` is the read index, ``context`` the request id
    TRANSFER_LEADER = 13  # a follower asks the leader to hand over to ``frm`` (term 0)


# Messages that carry no term: they are forwarded requests, handled like local input (etcd does the same).
TERMLESS = frozenset({MessageType.READ_INDEX, MessageType.TRANSFER_LEADER})


class Role(enum.IntEnum):
    FOLLOWER = 0  # a learner is a follower that is not in the voter set
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


class ConfChangeType(enum.IntEnum):
    ADD_VOTER = 0
    REMOVE_VOTER = 1
    ADD_LEARNER = 2


class ProgressState(enum.IntEnum):
    PROBE = 0  # one append in flight until the match point is found
    REPLICATE = 1  # pipelined appends, at most ``max_inflight_msgs`` unacknowledged
    SNAPSHOT = 2  # a snapshot is on its way; no appends until it is acknowledged or reported failed


@dataclass(frozen=True, slots=True)
class Entry:
    term: Term
    index: Index
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be on disk before any message leaves: the term, the vote in it, the commit index."""

    term: Term = Term(0)
    vote: NodeId = NO_LEADER
    commit: Index = Index(0)


@dataclass(frozen=True, slots=True)
class ConfState:
    voters: tuple[NodeId, ...] = ()
    learners: tuple[NodeId, ...] = ()


_CC = struct.Struct("<BBQI")  # version, type, node id, context length
_CC_VERSION = 1


@dataclass(frozen=True, slots=True)
class ConfChange:
    """A single-server membership change. ``context`` is opaque to Raft (the driver keeps the
    new member's address there)."""

    type: ConfChangeType
    node_id: NodeId
    context: bytes = b""

    def encode(self) -> bytes:
        return _CC.pack(_CC_VERSION, self.type, self.node_id, len(self.context)) + self.context

    @staticmethod
    def decode(raw: bytes) -> ConfChange:
        if len(raw) < _CC.size:
            raise DecodeError("conf change truncated")
        version, kind, node, n = _CC.unpack_from(raw)
        if version != _CC_VERSION:
            raise DecodeError(f"unknown conf change version {version}")
        if kind not in ConfChangeType._value2member_map_:
            raise DecodeError(f"unknown conf change type {kind}")
        if node == 0:
            raise DecodeError("conf change names node 0")
        if len(raw) != _CC.size + n:
            raise DecodeError("conf change length mismatch")
        return ConfChange(ConfChangeType(kind), NodeId(node), bytes(raw[_CC.size :]))


@dataclass(frozen=True, slots=True)
class SnapshotMetadata:
    index: Index = Index(0)
    term: Term = Term(0)
    conf_state: ConfState = field(default_factory=ConfState)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The state machine at ``metadata.index``. ``data`` may be empty when the driver moves the state
    out of band (node/ streams its LMDB copy separately and only the metadata travels in Raft)."""

    metadata: SnapshotMetadata = field(default_factory=SnapshotMetadata)
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state the driver may want to show (not persisted)."""

    leader: NodeId
    role: Role


@dataclass(frozen=True, slots=True)
class Message:
    type: MessageType
    to: NodeId
    frm: NodeId
    term: Term
    log_term: Term = Term(0)  # APP: term at ``index``; APP_RESP reject: term at ``reject_hint``; votes: last term
    index: Index = Index(0)  # APP: index before ``entries``; APP_RESP: highest matching index; votes: last index
    entries: tuple[Entry, ...] = ()
    commit: Index = Index(0)
    reject: bool = False
    reject_hint: Index = Index(0)  # APP_RESP reject: the follower's guess of the highest index that may match
    context: bytes = b""  # ReadIndex request id (echoed by heartbeat responses); CAMPAIGN_TRANSFER on votes
    snapshot: Snapshot | None = None  # SNAP only


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read tagged ``request_ctx`` may be served once the local applied index reaches
    ``index``."""

    index: Index
    request_ctx: bytes


@dataclass(frozen=True, slots=True)
class ProgressStatus:
    match: Index
    next: Index
    state: ProgressState
    learner: bool
    recent_active: bool


@dataclass(frozen=True, slots=True)
class Status:
    id: NodeId
    term: Term
    vote: NodeId
    commit: Index
    applied: Index
    role: Role
    leader: NodeId
    lead_transferee: NodeId
    conf_state: ConfState
    progress: tuple[tuple[NodeId, ProgressStatus], ...] = ()  # leader only, sorted by node id

    def progress_of(self, node: NodeId) -> ProgressStatus | None:
        return dict(self.progress).get(node)
