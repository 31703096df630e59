"""Strict, versioned binary encodings for messages, entries and states (little-endian, struct).

Peer input is untrusted: anything malformed raises ``MessageDecodeError``; the driver drops it.
"""

from __future__ import annotations

import struct

from consensus.types import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    SnapshotMetadata,
)

_M = struct.Struct("<BBQQQQQQBQIH")  # version, type, to, frm, term, log_term, index, commit, reject, hint, n, ctx
_E = struct.Struct("<QQBI")


class MessageDecodeError(ValueError):
    pass


def encode_entry(e: Entry) -> bytes:
    return _E.pack(e.term, e.index, e.type, len(e.data)) + e.data


def decode_entry(raw: bytes, pos: int = 0) -> Entry:
    return _decode_entry(raw, pos)[0]


def _decode_entry(raw: bytes, pos: int) -> tuple[Entry, int]:
    term, index, t, n = _E.unpack_from(raw, pos)
    pos += _E.size
    if pos + n > len(raw):
        raise MessageDecodeError("entry truncated")
    return Entry(term, index, EntryType(t), bytes(raw[pos : pos + n])), pos + n


def encode_message(m: Message) -> bytes:
    parts = [_M.pack(1, m.type, m.to, m.frm, m.term, m.log_term, m.index, m.commit, int(m.reject),
                     m.reject_hint, len(m.entries), len(m.context)), m.context]
    parts.extend(encode_entry(e) for e in m.entries)
    return b"".join(parts)


def decode_message(raw: bytes) -> Message:
    try:
        v, t, to, frm, term, lt, index, commit, rej, hint, n, nctx = _M.unpack_from(raw)
        if v != 1:
            raise MessageDecodeError(f"unknown message version {v}")
        pos = _M.size + nctx
        ctx = bytes(raw[_M.size : pos])
        if len(ctx) != nctx:
            raise MessageDecodeError("context truncated")
        ents = []
        for _ in range(n):
            e, pos = _decode_entry(raw, pos)
            ents.append(e)
        if pos != len(raw):
            raise MessageDecodeError("trailing bytes")
        return Message(MessageType(t), to, frm, term, lt, index, tuple(ents), commit, bool(rej), hint, ctx)
    except (struct.error, ValueError) as e:
        raise MessageDecodeError(str(e)) from e


def encode_hard_state(h: HardState) -> bytes:
    return struct.pack("<QQQ", h.term, h.vote, h.commit)


def decode_hard_state(raw: bytes) -> HardState:
    return HardState(*struct.unpack("<QQQ", raw))


def encode_conf_state(c: ConfState) -> bytes:
    return struct.pack(f"<II{len(c.voters)}Q{len(c.learners)}Q", len(c.voters), len(c.learners),
                       *c.voters, *c.learners)


def decode_conf_state(raw: bytes) -> ConfState:
    nv, nl = struct.unpack_from("<II", raw)
    vals = struct.unpack_from(f"<{nv + nl}Q", raw, 8)
    return ConfState(tuple(vals[:nv]), tuple(vals[nv:]))


def encode_snapshot_metadata(m: SnapshotMetadata) -> bytes:
    return struct.pack("<QQ", m.index, m.term) + encode_conf_state(m.conf_state)


def decode_snapshot_metadata(raw: bytes) -> SnapshotMetadata:
    index, term = struct.unpack_from("<QQ", raw)
    return SnapshotMetadata(index, term, decode_conf_state(raw[16:]))
