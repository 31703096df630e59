"""The Rules servicer and the CLI against an in-process gRPC server (no node process)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from clients.rules_cli import register
from ledger.codec import SettlementCallback, validate_batch
from node.rules_service import RulesService
from sovledger_pb import ledger_pb2 as pb
from sovledger_pb import ledger_pb2_grpc as pb_grpc
from tests.rules.helpers import OPERATOR, RulesLedger, acct, ruleset, xfer

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "ruleset.json"


class _Submit(pb_grpc.LedgerServicer):
    """Just enough of Ledger.Submit to deploy through the CLI: apply each batch as a block."""

    def __init__(self, lg: RulesLedger) -> None:
        self.lg = lg

    async def Submit(self, it: Any, context: Any) -> Any:
        async for req in it:
            out = self.lg.block(validate_batch(req.kind, req.records, req.signatures, req.signer_key_id))
            b = out.batches[0]
            yield pb.SubmitResponse(batch_id=req.batch_id, results=b.results, log_indexes=b.log_indexes,
                                    blocks=b.blocks)


@pytest.fixture
def node() -> Iterator[tuple[str, RulesLedger]]:
    lg = RulesLedger()
    lg.accounts(acct(1), acct(2), acct(9))
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def serve() -> None:
        stop = asyncio.Event()
        holder["stop"] = stop
        server = grpc.aio.server()
        pb_grpc.add_RulesServicer_to_server(RulesService(lg.store, lg.state), server)
        pb_grpc.add_LedgerServicer_to_server(_Submit(lg), server)
        holder["port"] = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        ready.set()
        await stop.wait()
        await server.stop(0)

    t = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    t.start()
    ready.wait(10)
    yield f"127.0.0.1:{holder['port']}", lg
    loop.call_soon_threadsafe(holder["stop"].set)
    t.join(10)


def cli(*argv: str) -> int:
    import argparse

    p = argparse.ArgumentParser()
    register(p.add_subparsers())
    args = p.parse_args([*argv, "--insecure"] if "--target" in argv else list(argv))  # an in-process plaintext server
    result: int = args.func(args)
    return result


def test_deploy_list_show_test_report(node: tuple[str, RulesLedger], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    target, lg = node
    key = tmp_path / "op.key"
    key.write_text(OPERATOR.to_string())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(ruleset({"id": "x", "expr": "debit.nope > 1", "action": "flag"})))
    assert cli("rules", "deploy", str(bad), "--key", str(key), "--target", target) == 1
    assert "debit.nope" in capsys.readouterr().err
    assert cli("rules", "deploy", str(EXAMPLE), "--key", str(key), "--target", target) == 0
    assert lg.state.rules is not None
    assert cli("rules", "list", "--target", target) == 0
    assert "eu-retail" in capsys.readouterr().out
    assert cli("rules", "show", "active", "--target", target) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "eu-retail"
    tr = json.dumps({"debit_account_id": 1, "credit_account_id": 2, "amount": 100_001, "ledger": 978, "code": 1})
    assert cli("rules", "test", "active", "--transfer", tr, "--target", target) == 0
    assert json.loads(capsys.readouterr().out)["rule_id"] == "balance-floor"
    missing = json.dumps({"debit_account_id": 77, "credit_account_id": 2, "amount": 1, "ledger": 1, "code": 1})
    assert cli("rules", "test", "active", "--transfer", missing, "--target", target) == 1
    assert "not found" in capsys.readouterr().err
    doc = tmp_path / "floor.json"
    doc.write_text(json.dumps(ruleset({"id": "floor", "expr": "debit.balance - transfer.amount < -100",
                                       "action": "reject", "code": 55, "message": "floor"})))
    tr = json.dumps({"debit_account_id": 1, "credit_account_id": 2, "amount": 101, "ledger": 1, "code": 1})
    assert cli("rules", "test", str(doc), "--transfer", tr, "--target", target) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["action"] == "reject" and out["rule_id"] == "floor" and out["result"] == "rule_rejected"
    assert len(lg.leaves()) == 4  # 3 accounts, 1 deploy (the bad one was refused locally); dry runs write nothing
    lg.transfer(xfer(1, amount=5, ledger=1))
    lg.callbacks(SettlementCallback(callback_id=1, transfer_id=1, observed_amount=7))
    assert cli("rules", "report", "--json", "--target", target) == 0
    rep = json.loads(capsys.readouterr().out)
    assert [e["kind"] for e in rep["open_exceptions"]] == ["outside_tolerance"]
    assert cli("rules", "report", "--target", target) == 0
    assert "open exceptions: 1" in capsys.readouterr().out
