"""gRPC servicer for rules: list/show deployed rule sets, validate, dry-run a transfer, report.

Read-only: deploying is a ledger entry submitted on Ledger.Submit (kind DEPLOY_RULESET).
Constructor: ``RulesService(store, state)`` — the node's store (read transactions only) and its
LedgerState (for the active rule set and the head; plain attribute reads, safe from another thread).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from ledger.codec import TRANSFER_SIZE
from ledger.reconcile import report
from ledger.rules import CompiledRuleSet, RuleSetError, parse_canonical, validate
from ledger.state import LedgerState, dry_run
from ledger.store import Store
from node.errors import BadRequest, NotFound, abort
from node.offload import Offload
from node.rule_check import load_document, validate_serialized
from sovledger_pb import ledger_pb2 as pb
from sovledger_pb import ledger_pb2_grpc as pb_grpc

log = logging.getLogger("sovledger.rules")

_R = TypeVar("_R")


class RulesService(pb_grpc.RulesServicer):
    """Every handler body runs on the offload pool (rule compilation is CPU-heavy; node.offload)."""

    def __init__(self, store: Store, state: LedgerState, offload: Offload | None = None) -> None:
        self._store = store
        self._state = state
        self._offload = offload or Offload()

    def _infos(self) -> list[pb.RuleSetInfo]:
        active = self._state.head.ruleset_hash
        out = []
        with self._store.read() as txn:
            for h, value in txn.range("rulesets"):
                rs = parse_canonical(value[16:])
                out.append(pb.RuleSetInfo(
                    hash=h, name=rs.name, version=rs.version, deploy_index=int.from_bytes(value[:8], "big"),
                    effective_height=int.from_bytes(value[8:16], "big"), active=h == active,
                    rule_count=len(rs.rules)))
        out.sort(key=lambda i: i.deploy_index)
        return out

    async def _run(self, context: grpc.aio.ServicerContext[Any, Any], fn: Callable[..., _R], *args: object) -> _R:
        try:
            return await self._offload.run(fn, *args)
        except Exception as e:
            await abort(context, e)

    async def ListRuleSets(self, request: pb.ListRuleSetsRequest,
                           context: grpc.aio.ServicerContext[Any, Any]) -> pb.ListRuleSetsResponse:
        return pb.ListRuleSetsResponse(rulesets=await self._run(context, self._infos))

    async def ShowRuleSet(self, request: pb.ShowRuleSetRequest,
                          context: grpc.aio.ServicerContext[Any, Any]) -> pb.ShowRuleSetResponse:
        return await self._run(context, self._show, request.hash or self._state.head.ruleset_hash)

    def _show(self, want: bytes) -> pb.ShowRuleSetResponse:
        with self._store.read() as txn:
            value = txn.get("rulesets", want)
        if value is None:
            raise NotFound(f"no rule set with hash {want.hex()} was deployed")
        info = next(i for i in self._infos() if i.hash == want)
        return pb.ShowRuleSetResponse(info=info, canonical=value[16:])

    async def ValidateRuleSet(self, request: pb.ValidateRuleSetRequest,
                              context: grpc.aio.ServicerContext[Any, Any]) -> pb.ValidateRuleSetResponse:
        try:  # compiling holds the GIL for long: in a worker process, not a thread
            answer = await self._offload.run_isolated(validate_serialized, request.document)
        except Exception as e:
            await abort(context, e)
        return pb.ValidateRuleSetResponse.FromString(answer)

    async def DryRun(self, request: pb.DryRunRequest,
                     context: grpc.aio.ServicerContext[Any, Any]) -> pb.DryRunResponse:
        return await self._run(context, self._dry_run, request.document, request.transfer)

    def _dry_run(self, document: bytes, transfer: bytes) -> pb.DryRunResponse:
        rules: CompiledRuleSet | None
        if document:
            try:
                rules = validate(load_document(document))
            except RuleSetError as e:
                return pb.DryRunResponse(ok=False, problems=e.problems, result=e.result)
            except ValueError as e:
                return pb.DryRunResponse(ok=False, problems=[f"not JSON: {e}"])
        else:
            rules = self._state.rules
            if rules is None:
                return pb.DryRunResponse(ok=False, problems=["no rule set is active; pass one to test"])
        if len(transfer) != TRANSFER_SIZE:
            raise BadRequest(f"transfer must be one {TRANSFER_SIZE}-byte record, got {len(transfer)}")
        head = self._state.head
        with self._store.read() as txn:
            got = dry_run(txn, rules, transfer, head.last_timestamp_ns + 1, head.height + 1,
                          self._state.pair_filters())
        if got.problems:
            return pb.DryRunResponse(ok=False, problems=list(got.problems))
        rule = got.rule
        return pb.DryRunResponse(
            ok=True, action=got.action.name.lower(), rule_id=rule.id if rule else "",
            rule_code=rule.code if rule else 0,
            message=rule.message if rule else "", result=got.result,
            activation_json=json.dumps(got.activation, sort_keys=True),
        )

    async def Report(self, request: pb.RulesReportRequest,
                     context: grpc.aio.ServicerContext[Any, Any]) -> pb.RulesReportResponse:
        return await self._run(context, self._report, request.exceptions_limit or 1000)

    def _report(self, limit: int) -> pb.RulesReportResponse:
        with self._store.read() as txn:
            rep = report(txn, limit)
        return pb.RulesReportResponse(json=json.dumps(rep, sort_keys=True))
