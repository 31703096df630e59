"""Lookups, paged history, inclusion proofs by transfer id, blocks — over real gRPC to a real node."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from clients.auditor.checks import verify_checkpoint_note, verify_inclusion_response
from clients.client import LedgerClient
from ledger.codec import BlockHeader, decode_leaf, decode_transfer
from ledger.hashing import block_hash
from ledger.types import Account, AccountFlags, Result, Transfer, TransferFlags
from tests.integration.nodeproc import ROOT, NodeProcess

pytestmark = pytest.mark.integration


def test_lookups_history_proofs_and_blocks(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n1", extra=["--region", "eu-west"]).start()
    try:
        with LedgerClient(node.target) as c:
            c.wait_ready()
            made = c.create_accounts([Account(1, 840, 1, flags=AccountFlags.HISTORY), Account(2, 840, 1),
                                      Account(3, 840, 1)])
            assert [m.result for m in made] == [Result.OK] * 3
            # 250 transfers 1 -> 2 in 5 batches: account 1's history needs paging
            batches = [[Transfer(1000 + 50 * b + i, 1, 2, 5 + i, 840, 1) for i in range(50)] for b in range(5)]
            for batch in batches:
                assert {r.result for r in c.create_transfers(batch)} == {Result.OK}
            r = c.create_transfers([Transfer(9000, 2, 3, 7, 840, 1, flags=TransferFlags.PENDING, timeout_s=3600)])
            assert r[0].result == Result.OK

            info = c.lookup_transfers([1000, 9000, 424242])
            assert [t.found for t in info] == [True, True, False]
            assert decode_transfer(info[0].record).amount == 5
            assert info[1].status == 1  # pending

            (a1, a2, a3) = c.lookup_accounts([1, 2, 3])
            assert a1 is not None and a2 is not None and a3 is not None
            total = sum(5 + i for i in range(50)) * 5
            assert (a1.debits_posted, a2.credits_posted, a2.debits_pending, a3.credits_pending) == (total, total, 7, 7)

            hist = list(c.history(1, limit=100))  # account 1 has the history flag
            assert len(hist) == 1 + 250  # its creation + every transfer touching it
            assert [h.index for h in hist] == sorted(h.index for h in hist)
            assert list(c.history(3)) == []  # no history flag: not indexed (docs/operations.md)

            cp = c.checkpoint()
            verify_checkpoint_note(cp.note, cp.verifier_key)
            assert cp.note.startswith("sovledger/eu-west\n")
            proof = c.inclusion_proof(transfer_id=1042)
            verify_inclusion_response(proof, cp.root)
            assert decode_transfer(decode_leaf(proof.leaf).body).id == 1042

            headers = [BlockHeader.decode(h) for h in c.blocks()]
            assert [h.height for h in headers] == list(range(1, len(headers) + 1))
            for prev, cur in itertools.pairwise(headers):
                assert cur.prev_block_hash == block_hash(prev.encode())
                assert cur.first_index == prev.tree_size
            assert headers[-1].tree_size == cp.tree_size and headers[-1].merkle_root == cp.root

            with pytest.raises(grpc.RpcError) as e:
                c.inclusion_proof(transfer_id=5555)
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
            st = c.status()
            assert st.region == "eu-west" and st.tree_size == cp.tree_size
    finally:
        node.stop()


def test_keys_cli_generates_and_shows(tmp_path: Path) -> None:
    key = tmp_path / "k.key"
    run = [sys.executable, "-m", "sovledger", "keys"]
    out = subprocess.run([*run, "gen", "--out", str(key), "--name", "eu-west/node-9", "--json"],
                         capture_output=True, text=True, cwd=ROOT, check=True)
    made = json.loads(out.stdout)
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    shown = json.loads(subprocess.run([*run, "show", "--key", str(key), "--json"], capture_output=True,
                                      text=True, cwd=ROOT, check=True).stdout)
    assert shown == made and shown["verifier_key"].startswith("eu-west/node-9+")
    again = subprocess.run([*run, "gen", "--out", str(key), "--name", "x/y"], capture_output=True, text=True,
                           cwd=ROOT)
    assert again.returncode != 0 and "refusing to overwrite" in again.stderr
