"""Typed errors of the consensus core: expected operating errors, each carrying its data."""

from __future__ import annotations


class DecodeError(ValueError):
    """Bytes that are not a valid encoding of the value asked for (bad version, length, enum, ...)."""


class MessageDecodeError(DecodeError):
    """A peer message that does not decode: the transport drops it (Raft retransmits)."""


class ProposalDropped(Exception):
    """This node cannot take the proposal now (not leader, leadership transfer under way, too much
    uncommitted data). ``leader`` is the best-known leader id (0: unknown) for redirecting the client."""

    def __init__(self, leader: int, reason: str = "not leader") -> None:
        self.leader = leader
        self.reason = reason
        super().__init__(f"{reason} (leader {leader})")


class ConfChangeRefused(Exception):
    """A membership change or leader transfer that cannot be done now (the message says why)."""


class StorageError(Exception):
    """Base of the errors a ``Storage`` may raise for an index it cannot serve."""


class Compacted(StorageError):
    """The index asked for is below the first index: it was compacted into a snapshot."""


class Unavailable(StorageError):
    """The index asked for is above the last index."""


class SnapshotTemporarilyUnavailable(StorageError):
    """A snapshot is being built; the leader retries later (the follower stays in snapshot state)."""
