"""BLAKE3 hashes with RFC 6962-style domain separation (docs/formats.md, "Hashes").

domain byte  use
0x00         leaf hash        BLAKE3(0x00 || leaf)
0x01         tree node        BLAKE3(0x01 || left || right)
0x02         chain link       BLAKE3(0x02 || previous link || leaf hash)
0x03         block hash       BLAKE3(0x03 || canonical block header)
0x04         state hash       BLAKE3(0x04 || previous state hash || changed accounts …)
0x05         rule set hash    BLAKE3(0x05 || canonical rule set)            (ledger/rules/model.py)
0x06         derived id       BLAKE3(0x06 || purpose || source id)[:16]     ids of ledger-written transfers

Pure: the auditor imports this.
"""

from __future__ import annotations

from typing import Final

import blake3

HASH_SIZE: Final = 32
EMPTY_ROOT: Final = blake3.blake3(b"").digest()
GENESIS_LINK: Final = bytes(32)
# The domain bytes above, named for loops that hash inline (the auditor's replay) instead of calling per leaf.
LEAF_DOMAIN: Final = b"\x00"
NODE_DOMAIN: Final = b"\x01"
CHAIN_DOMAIN: Final = b"\x02"
BLOCK_DOMAIN: Final = b"\x03"
STATE_DOMAIN: Final = b"\x04"
RULESET_DOMAIN: Final = b"\x05"
DERIVED_DOMAIN: Final = b"\x06"
DERIVED_ID_SIZE: Final = 16

_b3 = blake3.blake3


def leaf_hash(leaf: bytes) -> bytes:
    return _b3(LEAF_DOMAIN + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return _b3(NODE_DOMAIN + left + right).digest()


def chain_link(prev_link: bytes, leaf_hash_: bytes) -> bytes:
    return _b3(CHAIN_DOMAIN + prev_link + leaf_hash_).digest()


def hash_and_chain(prev_link: bytes, leaves: list[bytes]) -> tuple[list[bytes], bytes]:
    """Leaf hashes of consecutive leaves and the chain link after the last: ``leaf_hash`` and
    ``chain_link`` applied in order (one loop for a whole block)."""
    b3 = _b3
    link = prev_link
    hashes = []
    for leaf in leaves:
        lh = b3(LEAF_DOMAIN + leaf).digest()
        hashes.append(lh)
        link = b3(CHAIN_DOMAIN + link + lh).digest()
    return hashes, link


def block_hash(header: bytes) -> bytes:
    return _b3(BLOCK_DOMAIN + header).digest()


def blake3_digest(data: bytes) -> bytes:
    """BLAKE3-256 of ``data`` (no domain byte: the caller's input carries it)."""
    return _b3(data).digest()


def state_hash(previous: bytes, changed: list[tuple[bytes, bytes]]) -> bytes:
    """Chain the previous state hash with every (account id, encoded state) a block changed, by id."""
    h = _b3(STATE_DOMAIN + previous)
    for aid, state in changed:
        h.update(aid)
        h.update(state)
    return h.digest()


def ruleset_hash(canonical: bytes) -> bytes:
    return _b3(RULESET_DOMAIN + canonical).digest()


def derived_id(purpose: bytes, source: bytes) -> bytes:
    """Id of a transfer the ledger writes itself (an adjustment, a residual) from its cause's id."""
    return _b3(DERIVED_DOMAIN + purpose + source).digest()[:DERIVED_ID_SIZE]
