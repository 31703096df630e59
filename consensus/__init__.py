"""Raft as a pure, deterministic state machine (no I/O, no clock, no threads, no global randomness).

Shaped like etcd-io/raft: ``RawNode.step(msg)``, ``tick()``, ``propose(data)`` in; ``ready()`` out
(hard state + entries to persist, messages to send, committed entries to apply), then
``advance(ready)``. The persistence contract is in ``consensus.raft`` and docs/consensus.md.
"""
