"""Compatibility names: the state machine lives in ``ledger/apply/``, the schema in
``ledger/schema.py`` and read-side rule evaluation in ``ledger/dry_run.py``."""

from ledger.apply import BatchOutcome, BlockOutcome, LedgerState
from ledger.dry_run import DryRun, ReadRiskView, dry_run
from ledger.schema import META_APPLIED, META_HEAD, META_RANGE, AccountState, Head, TransferRef

__all__ = [
    "META_APPLIED", "META_HEAD", "META_RANGE", "AccountState", "BatchOutcome", "BlockOutcome", "DryRun", "Head",
    "LedgerState", "ReadRiskView", "TransferRef", "dry_run",
]
