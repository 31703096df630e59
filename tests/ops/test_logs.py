"""``--log-format json``: a real node writes one JSON object per line with node, region, term, block;
gRPC core's own verbosity defaults to ERROR in the node process."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from clients.client import LedgerClient
from clients.workload import account_records
from ledger.types import EventKind
from node.logs import JsonFormatter, set_context
from tests.integration.nodeproc import NodeProcess


@pytest.mark.integration
def test_node_writes_json_lines(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n1", extra=["--log-format", "json", "--region", "eu", "--node-id", "node-1"])
    node.start()
    try:
        with LedgerClient(node.target) as c:
            c.wait_ready()
            c.submit_one(EventKind.CREATE_ACCOUNT, account_records(10))
    finally:
        node.stop()
    lines = [ln for ln in node.log_text().splitlines() if ln.strip()]
    assert lines
    events = [json.loads(ln) for ln in lines]  # every line is one JSON object
    for e in events:
        assert {"ts", "level", "logger", "msg", "node", "region"} <= set(e)
        assert e["node"] == "node-1" and e["region"] == "eu"
    serving = [e for e in events if "serving on" in e["msg"]]
    assert serving and serving[0]["term"] == 0 and serving[0]["block"] == 0
    assert events[-1]["block"] >= 1, "the block field follows the node (a block was committed)"


def test_json_formatter_carries_context_and_exceptions() -> None:
    set_context(lambda: {"term": 7, "block": 42})
    try:
        f = JsonFormatter("node-2", "us")
        try:
            raise ValueError("boom")
        except ValueError:
            rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed %d", (3,), exc_info=True)
            import sys

            rec.exc_info = sys.exc_info()
        d = json.loads(f.format(rec))
        assert d["msg"] == "failed 3" and d["term"] == 7 and d["block"] == 42 and "ValueError: boom" in d["exc"]
    finally:
        set_context(dict)


def test_grpc_verbosity_default_is_set_for_node_processes() -> None:
    import subprocess
    import sys

    from tests.integration.nodeproc import ROOT

    code = ("import os, sys; sys.argv=['sovledger','node','--help'];"
            "from sovledger.cli import main\ntry: main()\nexcept SystemExit: pass\nprint(os.environ['GRPC_VERBOSITY'])")
    env = {k: v for k, v in __import__("os").environ.items() if k != "GRPC_VERBOSITY"}
    env["PYTHONPATH"] = f"{ROOT}:{ROOT / 'proto'}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, cwd=ROOT)
    assert out.stdout.strip().splitlines()[-1] == "ERROR", out.stdout + out.stderr
