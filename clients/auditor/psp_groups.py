"""The auditor's check of batch-signed PSP records (aux tag 5, docs/formats.md "PSP group signature").

A leaf of a group-signed record carries its group's signature, the group size, its index and its
audit path. The check rebuilds the group root from the leaf's own record and the path and verifies
the signature over it with the trusted PSP key: an altered record, index or path — or a forged
signature — makes it fail. No other leaf is needed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from clients.auditor.failures import PspSignatureInvalid
from ledger.codec import EncodingError
from ledger.psp_group import GroupProofError, check_group_aux, parse_group_aux
from ledger.types import EventKind


def check_leaf_group(index: int, kind: int, body: bytes, value: bytes, keys: Mapping[bytes, VerifyKey],
                     names: Mapping[bytes, str], unknown: Counter[str], verify: bool) -> bool:
    """Check one leaf's group proof; True when a signature was verified, False when it could not be
    (unknown key, verification off, or a copy on a ledger-written leaf); raises PspSignatureInvalid."""
    try:
        kid = parse_group_aux(value)[0]
    except EncodingError as e:
        raise PspSignatureInvalid(f"leaf {index}: {e}", index=index) from None
    if kid not in keys:
        unknown[kid.hex()] += 1
        return False
    if not verify or kind == EventKind.LEDGER_TRANSFER:  # an adjustment carries its cause's proof
        return False

    def ed25519(key_id: bytes, message: bytes, signature: bytes) -> bool:
        try:
            keys[key_id].verify(message, signature)
        except BadSignatureError:
            return False
        return True

    try:
        check_group_aux(kind, body, value, ed25519)
    except GroupProofError as e:
        raise PspSignatureInvalid(f"leaf {index}: PSP group signature by key {names.get(kid, '?')} "
                                  f"({kid.hex()}): {e}", index=index, key_id=kid, psp=names.get(kid, "")) from None
    return True


__all__ = ["check_leaf_group"]
