"""Engine selection: the compiled engine (ledger/_native/) or the Python reference.

``SOVLEDGER_ENGINE=python|native`` (default ``native``). The native engine applies transfer batches
(``ledger/_native/apply.c`` through ``ledger/apply/native_transfers.py``: checks, u128 balances,
linked chains, two-phase), numbers the block's leaves and encodes the changed accounts and transfer
refs (``seal.c``), and computes the leaf hashes, hash chain, Merkle compact-range append and state
hash (``engine.c``), the long loops with the GIL released. Everything else (account creation, rules,
reconciliation, other record kinds, the store writes) is the Python reference in ``ledger/apply/``.
Both engines produce byte-identical results (tests/engine/). If the extension was not built (no C
compiler at install time), ``native`` falls back to ``python`` with a warning, so a missing compiler
never stops a node; ``active()`` says which engine runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, Final

from ledger import hashing
from ledger.merkle import CompactRange
from ledger.schema import NODE_KEY

ENV: Final = "SOVLEDGER_ENGINE"
ENGINES: Final = ("python", "native")
log = logging.getLogger(__name__)


try:
    from ledger._native import _engine

    _BUILT = True
except ImportError:  # not compiled (no C compiler when the package was installed)
    _BUILT = False


_TRANSFER_FUNCTIONS: Final = ("result_codes", "transfer_ids", "find_transfers", "gather_accounts", "apply_transfers",
                               "number_leaves", "changed_accounts", "transfer_rows", "bind_types")


def _codes_match() -> bool:
    """Whether the result codes compiled into the engine are those of ``ledger.types.Result``."""
    from ledger.types import Result

    if not _BUILT:
        return False
    missing = [f for f in _TRANSFER_FUNCTIONS if not hasattr(_engine, f)]
    if missing:  # an extension built from older sources than this Python code
        log.warning("the compiled engine lacks %s (stale build): transfers on python; rebuild it (pip install -e .)",
                    ", ".join(missing))
        return False
    compiled = _engine.result_codes()
    wrong = sorted(name for name, value in compiled.items() if Result.__members__.get(name) != value)
    if wrong:
        log.warning("the compiled engine's result codes differ from ledger.types.Result (%s): transfers on python; "
                    "rebuild it (pip install -e .)", ", ".join(wrong))
    return not wrong


_CODES_MATCH = _codes_match()
_STATE_INPUT: Final = getattr(_engine, "state_input", None) if _BUILT else None  # absent: a stale build
_SEAL_HASHES: Final = getattr(_engine, "seal_hashes", None) if _BUILT else None


def available() -> bool:
    """Whether the compiled extension is importable."""
    return _BUILT


def _choose(requested: str) -> str:
    if requested not in ENGINES:
        raise ValueError(f"{ENV}={requested!r} is not an engine; use one of {', '.join(ENGINES)}")
    if requested == "native" and not _BUILT:
        log.warning("%s=native but the compiled engine is not built (no C compiler at install?): using python", ENV)
        return "python"
    return requested


_active = _choose(os.environ.get(ENV, "native").strip().lower() or "native")


def active() -> str:
    """The engine in use: ``"native"`` or ``"python"``."""
    return _active


def select(name: str) -> str:
    """Switch engines in this process (tests, benchmarks); returns the engine now active."""
    global _active
    _active = _choose(name)
    return _active


def transfers_native() -> bool:
    """Whether transfer batches run on the compiled engine (ledger/apply/native_transfers.py)."""
    return _active == "native" and _CODES_MATCH


def engine() -> Any:
    """The compiled module (only when ``available()``)."""
    return _engine


def hash_and_chain(prev_link: bytes, leaves: list[bytes]) -> tuple[list[bytes], bytes]:
    """``ledger.hashing.hash_and_chain`` on the active engine."""
    if _active == "native":
        return _engine.hash_and_chain(prev_link, leaves)
    return hashing.hash_and_chain(prev_link, leaves)


def state_hash(previous: bytes, changed: list[tuple[bytes, bytes]]) -> bytes:
    """``ledger.hashing.state_hash`` on the active engine. The native engine lays the input out in C and
    hashes it with the ``blake3`` package: one long input, which that package hashes many chunks at a
    time with SIMD (several times the scalar C compression's speed, bench/README.md)."""
    if _active == "native":
        if _STATE_INPUT is None:  # an extension built before state_input existed
            return _engine.state_hash(previous, changed)
        return hashing.blake3_digest(_STATE_INPUT(previous, changed))
    return hashing.state_hash(previous, changed)


def seal_hashes(prev_link: bytes, leaves: list[tuple[bytes, bytes]],
                tree: CompactRange) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """A block's leaves (index key, leaf bytes) hashed, chained from ``prev_link`` and appended to ``tree``
    (mutated): the new chain link and the stored tree nodes (``node_key(level, index)``, hash), level >= 1.
    The native engine does all of it in one C pass (no Python object per leaf hash)."""
    if _active == "native" and _SEAL_HASHES is not None:
        link, tree.hashes, tree.size, nodes = _SEAL_HASHES(prev_link, leaves, tree.hashes, tree.size)
        return link, nodes
    leaf_hashes, link = hash_and_chain(prev_link, [leaf for _, leaf in leaves])
    pack = NODE_KEY.pack  # node_key, inlined: (end, level)
    return link, [(pack((i + 1) << level, level), h) for level, i, h in append_many(tree, leaf_hashes, min_level=1)]


def append_many(tree: CompactRange, leaf_hashes: Sequence[bytes], min_level: int = 0) -> list[tuple[int, int, bytes]]:
    """``CompactRange.append_many`` on the active engine (mutates ``tree`` the same way)."""
    if _active == "native":
        tree.hashes, tree.size, out = _engine.merkle_append(tree.hashes, tree.size, leaf_hashes, min_level)
        return out
    return tree.append_many(leaf_hashes, min_level)
