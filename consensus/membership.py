"""Membership changes and leader transfer of the Raft core (``consensus/core.py``'s ``Raft``).

Single-server changes (thesis §4.1): the leader proposes one CONF_CHANGE entry at a time; every node
applies it when the driver applies the committed entry. Leader transfer (thesis §3.10). Functions of
the ``Raft`` they act on; ``Raft``'s methods of the same names call them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from consensus.errors import ConfChangeRefused, ProposalDropped
from consensus.types import (
    NO_LEADER,
    ConfChange,
    ConfChangeType,
    ConfState,
    EntryType,
    Index,
    MessageType,
    NodeId,
    Role,
)

if TYPE_CHECKING:
    from consensus.core import Raft

MT = MessageType


def propose_conf_change(r: Raft, cc: ConfChange) -> Index:
    """Single-server change (thesis §4.1): one voter added or removed at a time, so any two
    majorities of the old and new configurations overlap. At most one may be unapplied."""
    r._check_can_propose()
    if r.pending_conf_index > r.log.applied:
        raise ConfChangeRefused(f"a membership change at or below index {r.pending_conf_index} "
                                f"is not applied yet (applied {r.log.applied})")
    validate_conf_change(r, cc)
    index = r._append_and_send(EntryType.CONF_CHANGE, cc.encode())
    r.pending_conf_index = index
    return index


def validate_conf_change(r: Raft, cc: ConfChange) -> None:
    voters = r.tracker.voters
    if cc.node_id == NO_LEADER:
        raise ConfChangeRefused("node id 0 is reserved")
    if cc.type == ConfChangeType.REMOVE_VOTER and voters <= {cc.node_id}:
        raise ConfChangeRefused("cannot remove the last voter")
    if cc.type == ConfChangeType.ADD_LEARNER and cc.node_id == r.id:
        raise ConfChangeRefused("the leader cannot demote itself; transfer leadership first")
    if cc.type == ConfChangeType.ADD_VOTER and cc.node_id in r.tracker.learners:
        pr = r.tracker.progress.get(cc.node_id)
        match = pr.match if pr is not None else 0
        if match < r.log.committed:  # thesis §4.2.1: catch up first, or commits stall
            raise ConfChangeRefused(f"learner {cc.node_id} has not caught up (match {match} < commit "
                                    f"{r.log.committed})")


def apply_conf_change(r: Raft, cc: ConfChange) -> ConfState:
    """Apply a committed change (the driver calls this when it applies the CONF_CHANGE entry)."""
    t = r.tracker
    node = cc.node_id
    if cc.type == ConfChangeType.ADD_VOTER:
        t.learners.discard(node)
        t.voters.add(node)
    elif cc.type == ConfChangeType.ADD_LEARNER:
        t.voters.discard(node)
        t.learners.add(node)
    else:
        t.voters.discard(node)
        t.learners.discard(node)
    if r.role == Role.LEADER:
        leader_conf_applied(r, node)
    return t.conf_state()


def leader_conf_applied(r: Raft, node: NodeId) -> None:
    t = r.tracker
    if r.id not in t.voters:
        r.become_follower(r.term, NO_LEADER)  # removed (or demoted): step down
        return
    if node in t.members() and node not in t.progress:
        t.progress[node] = t.new_progress(node, Index(r.log.last_index() + 1))
    elif node not in t.members():
        t.progress.pop(node, None)
    if node in t.progress:
        t.progress[node].is_learner = node in t.learners
    if r.lead_transferee == node and node not in t.voters:
        r.lead_transferee = NO_LEADER
    if r.maybe_commit():  # the quorum may have shrunk
        r.bcast_append()
    elif node in t.progress:
        r.maybe_send_append(node, send_if_empty=True)



def transfer_leader(r: Raft, to: NodeId) -> None:
    """Thesis §3.10: stop taking proposals, bring ``to`` up to date, then TIMEOUT_NOW. Aborted if
    not done within an election timeout."""
    if r.role != Role.LEADER:
        raise ProposalDropped(r.lead)
    if to == r.id:
        return
    if to not in r.tracker.voters:
        raise ConfChangeRefused(f"node {to} is not a voter")
    if r.lead_transferee == to:
        return
    r.lead_transferee = to
    r.election_elapsed = 0  # the transfer must finish within one election timeout
    pr = r.tracker.progress[to]
    if pr.match == r.log.last_index():
        r.send(MT.TIMEOUT_NOW, to)
    else:
        r.maybe_send_append(to, send_if_empty=True)
