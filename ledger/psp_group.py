"""Batch-signed PSP records: one Ed25519 signature over the Merkle root of a signing group.

A PSP that signs in groups cuts a batch into consecutive groups of ``G`` records (the last one may
be shorter), builds an RFC 6962 tree over each group (leaf hash ``BLAKE3(0x00 ‖ record)``, node
``BLAKE3(0x01 ‖ left ‖ right)`` — the log's own hashes) and signs

    ``GROUP_CONTEXT ‖ kind (u8) ‖ count (u16 LE) ‖ root (32)``

once per group. Every record's leaf then carries aux tag 5 with what an auditor needs to check that
*its* record was signed, without any other leaf: the key id, the group signature, the group size,
its index in the group and its audit path (docs/formats.md §1, "PSP group signature").

Pure (stdlib, blake3, PyNaCl): the node verifies with it, apply derives the auxes with it, the
auditor checks leaves with it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Final

import blake3

from ledger.codec import AUX_LEN, KEY_ID_SIZE, SIGNATURE_SIZE, EncodingError

AUX_TAG_PSP_GROUP: Final = 5
GROUP_CONTEXT: Final = b"sovledger/psp-group/v1\x00"
GROUP_SIZE_MAX: Final = 8189  # one batch
HASH_SIZE: Final = 32
_U16: Final = struct.Struct("<H")
_GROUP_HEAD: Final = struct.Struct("<HH")  # group count, index in the group
_AUX_FIXED: Final = KEY_ID_SIZE + SIGNATURE_SIZE + _GROUP_HEAD.size  # 72
_b3 = blake3.blake3


class GroupProofError(Exception):
    """A record's group signature aux does not prove that the PSP signed it; the message says why."""


def record_hash(record: bytes) -> bytes:
    return _b3(b"\x00" + record).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return _b3(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    k = 1
    while k << 1 < n:
        k <<= 1
    return k


def tree(hashes: Sequence[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """RFC 6962 root over ``hashes`` and every leaf's audit path (siblings from the leaf up)."""
    n = len(hashes)
    if n == 1:
        return hashes[0], [[]]
    k = _split(n)
    left, lpaths = tree(hashes[:k])
    right, rpaths = tree(hashes[k:])
    for p in lpaths:
        p.append(right)
    for p in rpaths:
        p.append(left)
    return _node(left, right), lpaths + rpaths


def _levels(hashes: list[bytes]) -> list[list[bytes]]:
    """Every level of a perfect tree (len(hashes) a power of two), leaves first."""
    b3 = _b3
    levels = [hashes]
    cur = hashes
    while len(cur) > 1:
        cur = [b3(b"\x01" + cur[i] + cur[i + 1]).digest() for i in range(0, len(cur), 2)]
        levels.append(cur)
    return levels


def _paths_joined(hashes: list[bytes]) -> list[bytes]:
    """Every leaf's audit path as one byte string; a perfect tree level by level (the common, full
    group), any other size through ``tree``."""
    n = len(hashes)
    if n & (n - 1):
        return [b"".join(p) for p in tree(hashes)[1]]
    levels = _levels(hashes)[:-1]
    return [b"".join([lv[(j >> k) ^ 1] for k, lv in enumerate(levels)]) for j in range(n)]


def root_of(hashes: Sequence[bytes]) -> bytes:
    """RFC 6962 root only (no paths): what a signer and the node's verifier need."""
    n = len(hashes)
    if n == 1:
        return hashes[0]
    k = _split(n)
    return _node(root_of(hashes[:k]), root_of(hashes[k:]))


def group_message(kind: int, count: int, root: bytes) -> bytes:
    """The exact bytes the PSP signs for one group."""
    return GROUP_CONTEXT + bytes((kind,)) + _U16.pack(count) + root


def group_ranges(n: int, group: int) -> list[tuple[int, int]]:
    """[start, end) record ranges of the signing groups of an n-record batch."""
    return [(s, min(n, s + group)) for s in range(0, n, group)]


def group_messages(kind: int, records: bytes, size: int, group: int) -> list[bytes]:
    """The message to sign for every group of a batch of ``size``-byte records, in order."""
    n = len(records) // size
    out = []
    for s, e in group_ranges(n, group):
        hashes = [_b3(b"\x00" + records[i * size : (i + 1) * size]).digest() for i in range(s, e)]
        out.append(group_message(kind, e - s, root_of(hashes)))
    return out


def group_auxes(kind: int, records: bytes, size: int, group: int, signatures: bytes, key_id: bytes) -> list[bytes]:
    """The aux item (tag 5) of every record of a group-signed batch, in record order: deterministic
    from the batch alone, so every replica (and the native apply) gets the same bytes."""
    n = len(records) // size
    b3 = _b3
    out: list[bytes] = []
    pack = _GROUP_HEAD.pack
    for g, (s, e) in enumerate(group_ranges(n, group)):
        hashes = [b3(b"\x00" + records[i * size : (i + 1) * size]).digest() for i in range(s, e)]
        paths = _paths_joined(hashes)
        count = e - s
        value_len = _AUX_FIXED + len(paths[0])  # every path of a perfect tree has the same length
        head = bytes((AUX_TAG_PSP_GROUP,)) + AUX_LEN.pack(value_len) + key_id + signatures[
            g * SIGNATURE_SIZE : (g + 1) * SIGNATURE_SIZE]
        if count & (count - 1) == 0:
            out += [head + pack(count, j) + path for j, path in enumerate(paths)]
            continue
        for j, path in enumerate(paths):  # paths differ in length: each aux its own length
            value = head[3:] + pack(count, j) + path
            out.append(bytes((AUX_TAG_PSP_GROUP,)) + AUX_LEN.pack(len(value)) + value)
    return out


def parse_group_aux(value: bytes) -> tuple[bytes, bytes, int, int, list[bytes]]:
    """(key id, signature, group count, index, path) of a tag-5 value; EncodingError when malformed."""
    if len(value) < _AUX_FIXED or (len(value) - _AUX_FIXED) % HASH_SIZE:
        raise EncodingError(f"PSP group aux is {len(value)} bytes: expected {_AUX_FIXED} + 32 x path length")
    kid, sig = value[:KEY_ID_SIZE], value[KEY_ID_SIZE : KEY_ID_SIZE + SIGNATURE_SIZE]
    count, index = _GROUP_HEAD.unpack_from(value, KEY_ID_SIZE + SIGNATURE_SIZE)
    tail = value[_AUX_FIXED:]
    path = [tail[k : k + HASH_SIZE] for k in range(0, len(tail), HASH_SIZE)]
    return kid, sig, count, index, path


def root_from_path(leaf: bytes, index: int, count: int, path: Sequence[bytes]) -> bytes:
    """RFC 9162 §2.1.3.2: the root a leaf hash and its audit path imply; GroupProofError on a bad shape."""
    if not 0 <= index < count:
        raise GroupProofError(f"index {index} is outside a signing group of {count} records")
    fn, sn, r = index, count - 1, leaf
    for p in path:
        if sn == 0:
            raise GroupProofError(f"audit path has {len(path)} hashes, too many for index {index} of {count}")
        if fn & 1 or fn == sn:
            r = _node(p, r)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            r = _node(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise GroupProofError(f"audit path has {len(path)} hashes, too few for index {index} of {count}")
    return r


def check_group_aux(kind: int, record: bytes, value: bytes,
                    verify: Callable[[bytes, bytes, bytes], bool]) -> bytes:
    """Check that ``record`` was signed as part of the group its aux describes; returns the key id.

    ``verify(key_id, message, signature)`` returns False for an unknown key or a bad signature.
    Raises GroupProofError (or EncodingError for a malformed aux) with the reason."""
    kid, sig, count, index, path = parse_group_aux(value)
    root = root_from_path(record_hash(record), index, count, path)
    if not verify(kid, group_message(kind, count, root), sig):
        raise GroupProofError(f"group signature by key {kid.hex()} does not verify over the root its audit path "
                              f"implies (record #{index} of a group of {count}): record, index or path altered")
    return kid


__all__ = [
    "AUX_TAG_PSP_GROUP", "GROUP_CONTEXT", "GROUP_SIZE_MAX", "GroupProofError", "check_group_aux", "group_auxes",
    "group_message", "group_messages", "group_ranges", "parse_group_aux", "record_hash",
    "root_from_path", "root_of", "tree",
]
