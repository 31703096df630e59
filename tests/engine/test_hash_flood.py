"""Hash flooding: ids a PSP crafts must not share one probe chain in the C engine's hash tables.

The C tables (ledger/_native/apply.c: accounts and transfers of a batch; risk_table.c: risk states and
payer-payee pairs) are open addressing. Their hash used to be unkeyed: the ids below are computed from
the old functions (reproduced here) so that every one of them lands in one slot, which made each insert
and lookup walk a chain as long as the table. Now the hash is keyed per process (keyed_hash.h); the same
ids must spread like any others. And since the key is random, results must never depend on it: the same
blocks applied under two keys leave every LMDB table byte for byte the same.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import hashflood as flood
from ledger import native, risk
from ledger.schema import Table

pytestmark = pytest.mark.skipif(not native.available() or risk.Hook is None,
                                reason="native engine not built (no C compiler)")

N = 12_000          # crafted keys per table (load 0.37 in the apply tables and the risk maps)
LONGEST = 64        # a flood is far above (all N in one chain); random keys: <= 30 in 3000 keys tried
M64 = (1 << 64) - 1


# ---- the old, unkeyed functions (the ids are crafted against them in bench/hashflood.py) -----------
def old_id_hash(id16: bytes) -> int:
    """apply.c's former id_hash."""
    lo, hi = int.from_bytes(id16[:8], "little"), int.from_bytes(id16[8:], "little")
    h = ((lo ^ (hi * 0x9E3779B97F4A7C15 & M64)) * 0xFF51AFD7ED558CCD) & M64
    return h ^ (h >> 29)


def old_rt_hash(k: bytes) -> int:
    """risk_table.h's former rt_hash."""
    h, i = 0x9E3779B97F4A7C15 ^ len(k), 0
    while i + 8 <= len(k):
        h = ((h ^ int.from_bytes(k[i:i + 8], "little")) * 0xFF51AFD7ED558CCD) & M64
        h ^= h >> 32
        i += 8
    for b in k[i:]:
        h = ((h ^ b) * 0x100000001B3) & M64
    h ^= h >> 29
    h = (h * 0xC4CEB9FE1A85EC53) & M64
    return h ^ (h >> 32)


def crafted_ids(n: int) -> list[bytes]:
    return [i.to_bytes(16, "little") for i in flood.crafted_ids(n)]


crafted_state_keys, crafted_pair_keys = flood.crafted_state_keys, flood.crafted_pair_keys


def test_the_crafted_keys_collide_under_the_old_functions() -> None:
    """The attack is real: every crafted key had the same first slot before the hash was keyed."""
    assert len({old_id_hash(i) & 0xFFFF for i in crafted_ids(N)}) == 1
    states, pairs = crafted_state_keys(N), crafted_pair_keys(N)
    assert len(set(states)) == len(set(pairs)) == N
    assert {old_rt_hash(k) >> 32 for k in states} == {0xC0FFEE42}
    assert {old_rt_hash(k) >> 32 for k in pairs} == {0xBADC0DE5}


# ---- the real tables, filled with crafted keys ------------------------------------------------------
def test_crafted_ids_spread_in_the_transfer_apply_tables() -> None:
    from ledger._native import _engine
    ids = crafted_ids(N)
    assert _engine.max_probe(b"".join(ids)) <= LONGEST
    rnd = random.Random(5)
    assert _engine.max_probe(b"".join(rnd.randbytes(16) for _ in range(N))) <= LONGEST
    with pytest.raises(ValueError, match="duplicate"):
        _engine.max_probe(ids[0] + ids[1] + ids[0])
    with pytest.raises(ValueError, match="whole"):
        _engine.max_probe(b"x" * 17)


def test_crafted_risk_keys_spread_in_the_risk_table() -> None:
    from ledger._native import _risk
    table = risk.RiskTable(1 << 20, 1 << 20)
    table.begin(lambda k: None, lambda k: None, lambda ks: [None] * len(ks))
    state = [0] * 17
    table.commit({k: state for k in crafted_state_keys(N)}, set(crafted_pair_keys(N)))
    assert table.sizes()[0] == table.sizes()[2] == N
    states, pairs = _risk.max_probe(table)
    assert 1 <= states <= LONGEST and 1 <= pairs <= LONGEST
    assert table.state(crafted_state_keys(3)[2]) == state  # (found through its chain)
    with pytest.raises(TypeError):
        _risk.max_probe(object())  # type: ignore[arg-type]


# ---- results never depend on the key ----------------------------------------------------------------
KEY_A, KEY_B = "11" * 32, "c3" * 16 + "5e" * 16


def run_child(key: str, out: Path) -> dict[str, Any]:
    env = dict(os.environ, SOVLEDGER_HASH_KEY=key, SOVLEDGER_ENGINE="native")
    code = f"from tests.engine.test_hash_flood import child; child({str(out)!r})"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=300,
                   cwd=Path(__file__).resolve().parents[2])
    with open(out, "rb") as f:
        got: dict[str, Any] = pickle.load(f)
    return got


def child(out: str) -> None:
    """Under this process's key: the workloads below on both engines (each block compared), the native
    stores' tables dumped, with the hashes that show which key was in effect."""
    import tempfile

    from ledger._native import _engine, _risk
    from ledger.codec import Batch, encode_account
    from ledger.types import EventKind
    from tests.engine import test_differential as plain
    from tests.engine import test_rules_differential as rules
    from tests.rules import helpers
    # the operator key is drawn per process: both children sign the rule sets with one fixed key
    object.__setattr__(helpers.OPERATOR, "seed", bytes(range(32)))
    dumps: dict[str, Any] = {"id_hash": _engine.id_hash(bytes(range(16))), "key_hash": _risk.key_hash(b"o" * 17)}
    with tempfile.TemporaryDirectory() as root:
        p = rules.RulesPair(Path(root) / "rules")
        rules.run_workload(p, 7, blocks=10, per_block=40, picks=list(range(len(rules.RULE_POOL))))
        dumps["rules"] = plain.dump(p.stores["native"])
        p.close()
        q = plain.Pair(Path(root) / "plain")
        q.block((Batch(EventKind.CREATE_ACCOUNT, b"".join(encode_account(a) for a in plain.ACCOUNTS)),))
        for i, transfers in enumerate(plain.workload(3, blocks=12, per_block=30)):
            q.transfers(transfers, advance_s=1 + i % 3)
        q.assert_stores_identical()
        dumps["plain"] = plain.dump(q.stores["native"])
        q.close()
        risk.RISK_TABLE_STATES, risk.RISK_TABLE_PAIRS = 1000, 2000  # (Final: bounds the C table evicts at)
        w = rules.RulesPair(Path(root) / "wide")  # small bounds: the wide workload evicts after commits
        wide_workload(w)
        dumps["wide"] = plain.dump(w.stores["native"])
        w.close()
    with open(out, "wb") as f:
        pickle.dump(dumps, f)


def wide_workload(p: Any) -> None:
    """Many accounts with spread ids under risk rules: the risk maps grow past their first sizes (1024
    states, 4096 pairs) and the apply tables hold thousands of ids, so slot layouts differ by key."""
    from ledger.codec import Batch, encode_account, encode_transfer
    from ledger.types import Account, EventKind, Transfer
    from ledger.types import TransferFlags as TF
    rnd = random.Random(11)
    ids = [rnd.getrandbits(127) + 1 for _ in range(1200)]
    p.block(Batch(EventKind.CREATE_ACCOUNT, b"".join(encode_account(Account(a, ledger=1, code=1)) for a in ids)))
    p.deploy([1, 2, 3, 8], 1)  # velocity, psp-sum, payee-new, credit-hot: every risk family and the pairs
    pending: list[int] = []
    for _ in range(4):
        batch = []
        for _ in range(1500):
            tid = rnd.getrandbits(128) or 1
            if pending and rnd.random() < 0.1:
                flags = rnd.choice((TF.POST_PENDING_TRANSFER, TF.VOID_PENDING_TRANSFER))
                batch.append(Transfer(tid, 0, 0, 0, ledger=0, code=0, flags=flags, pending_id=pending.pop()))
                continue
            dr, cr = rnd.sample(ids, 2)
            t = Transfer(tid, dr, cr, rnd.randint(1, 500), ledger=1, code=1, psp_id=rnd.randint(0, 3),
                         flags=rnd.choice((0, 0, 0, TF.PENDING)))
            batch.append(t)
            if t.flags & TF.PENDING:
                pending.append(tid)
        p.block(Batch(EventKind.CREATE_TRANSFER, b"".join(encode_transfer(t) for t in batch)))
    p.assert_stores_identical()


def test_results_do_not_depend_on_the_hash_key(tmp_path: Path) -> None:
    a, b = run_child(KEY_A, tmp_path / "a.pkl"), run_child(KEY_B, tmp_path / "b.pkl")
    assert a["id_hash"] != b["id_hash"] and a["key_hash"] != b["key_hash"]  # the keys really differ
    for name in ("rules", "plain", "wide"):
        assert a[name] == b[name], name
        assert sum(len(rows) for rows in a[name].values()) > 100  # (the stores hold the workload)
    assert sum(len(a["wide"][t]) for t in (Table.RISK, Table.RISK_PAIRS, Table.RISK_LOG)) > 0  # rules ran


def test_a_fixed_key_is_read_at_import_and_checked() -> None:
    code = "from ledger._native import _engine; print(_engine.id_hash(bytes(16)))"
    env = dict(os.environ, SOVLEDGER_HASH_KEY=KEY_A)
    one = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    two = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert one.stdout == two.stdout
    bad = subprocess.run([sys.executable, "-c", code], env=dict(env, SOVLEDGER_HASH_KEY="zz"),
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "SOVLEDGER_HASH_KEY must be 64 hex digits" in bad.stderr
    # without it, every process draws its own key
    env.pop("SOVLEDGER_HASH_KEY")
    free = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                           check=True).stdout for _ in range(2)]
    assert free[0] != free[1]


def test_the_bench_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """bench.hashflood at a tiny size: every workload crafted and random, a ratio each, a JSON file."""
    assert flood.main(["--accounts", "200", "--blocks", "1", "--rounds", "1", "--results-dir", str(tmp_path)]) == 0
    data = json.loads(next(tmp_path.glob("hashflood-*.json")).read_text())
    assert set(data["ratio_crafted_vs_random"]) == {"ids", "risk-states", "risk-pairs"}
    assert all(r > 0 for r in data["ratio_crafted_vs_random"].values()) and data["machine"]["cpus"]
    assert "ratio" in capsys.readouterr().out
