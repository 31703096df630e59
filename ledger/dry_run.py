"""Read-side rule evaluation (the node's Rules service and ``sovledger rules test``): evaluate a
rule set against one transfer over a committed snapshot; nothing is written."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ledger import risk_log
from ledger.codec import T_CREDIT, T_DEBIT, TRANSFER_STRUCT
from ledger.pair_runs import PairRuns
from ledger.risk import RiskView, decode_state
from ledger.rules.compiler import NO_MATCH, CompiledRuleSet
from ledger.rules.model import Action, Rule
from ledger.schema import AccountState, Table
from ledger.store import ReadTxn
from ledger.types import Result


class ReadRiskView(RiskView):
    """The risk view of the activation builder over a committed snapshot: ``risk`` / the stored pairs (legacy
    ``risk_pairs`` and runs, ledger/pair_runs.py) overridden by the journal (``risk_log``) of the same
    snapshot. Its rows are read once, when first needed, and searched per key (ledger/risk_log.py
    ``state_in`` / ``has_pair``): a dry run does not decode a journal of up to 16 blocks' states for the
    three keys it reads."""

    __slots__ = ("_filters", "_rows", "_runs", "txn")

    def __init__(self, txn: ReadTxn, filters: dict[int, Any] | None = None) -> None:
        self.txn = txn
        self._rows: list[bytes] | None = None
        self._runs: PairRuns | None = None
        self._filters = filters

    def rows(self) -> list[bytes]:
        if self._rows is None:
            self._rows = [value for _, value in risk_log.rows(self.txn)]
        return self._rows

    def state(self, key: bytes) -> list[int] | None:
        raw = risk_log.state_in(self.rows(), key) if self.rows() else None
        if raw is None:
            raw = self.txn.get(Table.RISK, key)
        return decode_state(raw) if raw is not None else None

    def seen(self, debit_id: bytes, credit_id: bytes) -> bool:
        pk = debit_id + credit_id
        if self.rows() and risk_log.has_pair(self.rows(), pk):
            return True
        if self._runs is None:  # the ledger's committed filters when given (ids never change content), else seeks
            self._runs = PairRuns.read(self.txn, self._filters, build=self._filters is not None)
        return self._runs.has(self.txn, pk)


@dataclass(frozen=True, slots=True)
class DryRun:
    action: Action
    rule: Rule | None
    result: int  # what the rules would make of the transfer: 0, rule_rejected or rule_error
    activation: dict[str, object]
    problems: tuple[str, ...] = ()


def dry_run(txn: ReadTxn, rules: CompiledRuleSet, raw: bytes, timestamp_ns: int, height: int,
            filters: dict[int, Any] | None = None) -> DryRun:
    """Evaluate ``rules`` against one transfer record over committed state; nothing is written.

    The ledger's own checks are not repeated except that both accounts must exist. ``filters``: the ledger's
    per-run pair filters (LedgerState.pair_filters), else pair lookups seek each run."""
    rec = TRANSFER_STRUCT.unpack(raw)
    accts = []
    for aid, name in ((rec[T_DEBIT], "debit"), (rec[T_CREDIT], "credit")):
        stored = txn.get(Table.ACCOUNTS, aid)
        if stored is None:
            return DryRun(Action.NONE, None, 0, {}, (f"{name} account {int.from_bytes(aid, 'little')} not found",))
        accts.append(AccountState.decode(stored))
    try:
        activation = rules.build(rec, accts[0], accts[1], timestamp_ns, height, ReadRiskView(txn, filters))
    except MemoryError:
        raise
    except Exception as e:  # the state machine records rule_evaluation_failed here
        return DryRun(Action.ERROR, None, Result.RULE_EVALUATION_FAILED, {}, (f"rule inputs could not be built: {e}",))
    if not rules.active:
        return DryRun(Action.NONE, None, 0, activation)
    idx, errored = rules.evaluate(activation)
    if idx == NO_MATCH:
        return DryRun(Action.NONE, None, 0, activation)
    rule = rules.rules[idx]
    if errored:
        return DryRun(Action.ERROR, rule, Result.RULE_ERROR, activation)
    return DryRun(rule.action, rule, Result.RULE_REJECTED if rule.action == Action.REJECT else 0, activation)
