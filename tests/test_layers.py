"""The layering of docs/ARCHITECTURE.md, checked mechanically, plus determinism bans.

- consensus/ imports only the standard library (and never clocks, randomness, I/O or threads);
- ledger/ never imports node/, clients/, consensus/ or the generated protobuf code, and only
  ledger/lmdb_store.py imports lmdb;
- clients/ never import node/, consensus/ or the store/state machine;
- the ledger state machine never reads a clock or global randomness.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {"node", "ledger", "consensus", "clients", "sovledger_pb", "sovledger"}
STDLIB = set(sys.stdlib_module_names)


def imports(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), str(path))
    out: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, node.lineno))
    return out


def files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def top(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize("path", files("consensus"), ids=lambda p: str(p.relative_to(ROOT)))
def test_consensus_is_pure_stdlib(path: Path) -> None:
    banned = {"time", "datetime", "asyncio", "threading", "socket", "os", "grpc", "lmdb", "subprocess",
              "selectors", "multiprocessing", "secrets", "uuid"}
    for name, line in imports(path):
        if top(name) == "consensus":
            continue  # its own modules
        assert top(name) in STDLIB, f"{path.name}:{line} imports non-stdlib {name}"
        assert top(name) not in banned, f"{path.name}:{line} imports {name}: no I/O, clocks or threads here"
        if top(name) == "random":
            assert name == "random", f"{path.name}:{line}"


@pytest.mark.parametrize("path", files("ledger"), ids=lambda p: str(p.relative_to(ROOT)))
def test_ledger_layer(path: Path) -> None:
    for name, line in imports(path):
        assert top(name) not in {"node", "clients", "consensus", "sovledger_pb", "sovledger", "grpc"}, (
            f"{path.name}:{line} imports {name}"
        )
        if top(name) == "lmdb":
            assert path.name == "lmdb_store.py", f"{path.name}:{line}: only the LMDB store may import lmdb"


@pytest.mark.parametrize("path", files("clients"), ids=lambda p: str(p.relative_to(ROOT)))
def test_clients_layer(path: Path) -> None:
    forbidden = ("node", "consensus", "ledger.store", "ledger.lmdb_store", "ledger.state", "ledger.reader",
                 "ledger.apply", "ledger.dry_run", "lmdb")
    for name, line in imports(path):
        assert not any(name == f or name.startswith(f + ".") for f in forbidden), f"{path.name}:{line} imports {name}"


@pytest.mark.parametrize("path", files("node"), ids=lambda p: str(p.relative_to(ROOT)))
def test_node_layer(path: Path) -> None:
    for name, line in imports(path):
        assert top(name) not in {"clients", "sovledger"}, f"{path.name}:{line} imports {name}"


DETERMINISTIC = ["ledger/state.py", "ledger/codec.py", "ledger/merkle.py", "ledger/hashing.py", "ledger/schema.py",
                 "ledger/risk.py", "ledger/reconcile.py",
                 *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "ledger" / "apply").glob("*.py"))]


@pytest.mark.parametrize("rel", DETERMINISTIC)
def test_state_machine_reads_no_clock_or_global_random(rel: str) -> None:
    path = ROOT / rel
    source = path.read_text()
    for name, line in imports(path):
        assert top(name) not in {"time", "datetime", "random", "os", "secrets", "uuid"}, (
            f"{rel}:{line} imports {name}: everything applied at commit must depend only on the log"
        )
    assert "time_ns(" not in source and "random(" not in source
