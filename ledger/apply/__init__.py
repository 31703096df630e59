"""The apply package: the deterministic state machine that turns block proposals into leaves.

- ``driver``: ``LedgerState``, the thin block driver (one write transaction per block);
- ``transfers``: create, post and void transfers — one path with an optional rules hook;
- ``accounts``: create accounts;
- ``callbacks``: settlement callbacks with reconciliation;
- ``effects``: what rules do (hold, flag, adjust, reject), risk state, rule set deployment;
- ``seal``: number events into leaves (one leaf builder), tree, chain, header, the one write;
- ``scratch``: the block's scratch state (ledger scratch and rules/reconciliation scratch);
- ``batches``: record slices, PSP signature auxes, linked chains.
"""

from ledger.apply.driver import LedgerState
from ledger.apply.seal import BatchOutcome, BlockOutcome

__all__ = ["BatchOutcome", "BlockOutcome", "LedgerState"]
