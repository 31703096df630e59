"""Account ownership between PSPs: the owner is named by the account id itself.

The owner of an account is the PSP whose ``psp_id`` sits in the account id's top 32 bits (bytes
12..15 of the 16-byte little-endian id); the PSP numbers its accounts in the low 96 bits. A PSP may
create and debit only its own accounts (node/psp_guard.py, docs/security.md). Being a pure function
of the id, ownership needs no lookup, cannot race a concurrent block, and an auditor recomputes it
from the log alone.
"""

from __future__ import annotations

from typing import Final

LOCAL_BITS: Final = 96


def account_id_for(psp_id: int, local: int) -> int:
    """The id of account number ``local`` (< 2^96) owned by ``psp_id``."""
    if not 0 <= local < 1 << LOCAL_BITS or not 0 <= psp_id < 1 << 32:
        raise ValueError(f"psp_id {psp_id} must fit 32 bits and local {local} 96 bits")
    return (psp_id << LOCAL_BITS) | local


def owner_of(account_id: bytes) -> int:
    """The psp_id owning a 16-byte little-endian account id."""
    return int.from_bytes(account_id[12:16], "little")
