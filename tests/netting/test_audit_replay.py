"""The auditor's full replay understands OBLIGATION and SETTLEMENT entries: every region's log replays to the
balances and state hashes its ledger computed (block headers carry the state hash, so a wrong effect fails)."""

from __future__ import annotations

import random
from pathlib import Path

from clients.auditor.checks import compare_accounts
from clients.auditor.replay import LogVerifier, iter_blocks
from ledger.netting import build_settlement
from ledger.note import Checkpoint, Signer, open_note, sign_note
from ledger.types import EventKind, Result
from tests.netting.regions import Federation, Region
from tests.netting.test_obligations_apply import _pay_around

NAMES = ["eu-west", "us-east", "ap-south"]


def _replay(r: Region) -> LogVerifier:
    store = r.lg.store
    with store.read() as txn:
        leaves = [v for _, v in txn.range("leaves", b"", b"\xff" * 8)]
        headers = [v for _, v in txn.range("blocks", b"", b"\xff" * 8)]
    signer = Signer.generate(f"{r.name}/node-1")
    h, st = r.lg.state.head, r.lg.state
    body = Checkpoint(f"sovledger/{r.name}", h.tree_size, st.range.root(), (
        f"block {h.height} {h.block_hash.hex()}", f"chain {h.chain_head.hex()}",
        f"time {h.last_timestamp_ns}")).to_body()
    v = LogVerifier(psp_keys=[], checkpoints=())
    for hdr, ls in iter_blocks(headers, iter(leaves)):
        v.feed_block(hdr, ls)
    v.finish(Checkpoint.parse(open_note(sign_note(body, signer), [signer.verifier]).body))
    return v


def _states(r: Region) -> dict[bytes, bytes | None]:
    with r.lg.store.read() as txn:
        return {k: v[:136] for k, v in txn.range("accounts", b"", b"\xff" * 16)}


def _federation(tmp_path: Path) -> Federation:
    fed = Federation.create(str(tmp_path), NAMES)
    rng = random.Random(11)
    nxt = _pay_around(fed, rng, 1, 12)
    fed.cut = {"ap-south"}
    _pay_around(fed, rng, nxt, 12)
    for r in fed.regions.values():
        r.lg.now_ns += 40 * 1_000_000_000  # past every deadline: the cut-off region's obligations are refused
    fed.cut = set()
    fed.relay()
    raw = build_settlement(1, fed.open_obligations()).encode()
    for r in fed.regions.values():
        assert r.block(EventKind.SETTLEMENT, raw) in ([Result.OK], [Result.SETTLEMENT_NOT_INVOLVED])
    return fed


def test_every_region_replays_to_its_own_balances(tmp_path: Path) -> None:
    fed = _federation(tmp_path)
    for r in fed.regions.values():
        v = _replay(r)
        compare_accounts(v.account_states(), _states(r), r.name)
