"""Strict, versioned binary encodings (little-endian, ``struct``) for messages and persisted state.

Peer input is untrusted: every decoder checks the version, every length, every enum and every flag,
and rejects trailing bytes; anything malformed raises ``MessageDecodeError`` (messages) or
``DecodeError`` (persisted values) and never a bare ``struct.error`` or ``IndexError``.

Formats (version 1), all integers unsigned little-endian:

- entry: ``version u8 | term u64 | index u64 | type u8 | len u32 | data``
- hard state: ``version u8 | term u64 | vote u64 | commit u64``
- conf state: ``version u8 | n_voters u32 | n_learners u32 | voter u64 * n | learner u64 * n``
- snapshot metadata: ``version u8 | index u64 | term u64 | conf state (len u32 | bytes)``
- snapshot: ``metadata (len u32 | bytes) | data (len u32 | bytes)``
- message: ``version u8 | type u8 | to u64 | frm u64 | term u64 | log_term u64 | index u64 | commit u64 |
  reject u8 | reject_hint u64 | n_entries u32 | ctx_len u32 | has_snapshot u8 | ctx | entries (body of the
  entry format without its version byte) * n | snapshot (if has_snapshot)``
"""

from __future__ import annotations

import struct

from consensus.errors import DecodeError, MessageDecodeError
from consensus.types import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    Index,
    Message,
    MessageType,
    NodeId,
    Snapshot,
    SnapshotMetadata,
    Term,
)

VERSION = 1
_VERSION = struct.Struct("<B")
_ENTRY = struct.Struct("<QQBI")
_HARD = struct.Struct("<BQQQ")
_CONF = struct.Struct("<BII")
_NODE = struct.Struct("<Q")
_META = struct.Struct("<BQQI")
_LEN = struct.Struct("<I")
_MSG = struct.Struct("<BBQQQQQQBQIIB")

__all__ = [
    "VERSION",
    "DecodeError",
    "MessageDecodeError",
    "decode_conf_state",
    "decode_entry",
    "decode_hard_state",
    "decode_message",
    "decode_snapshot",
    "decode_snapshot_metadata",
    "encode_conf_state",
    "encode_entry",
    "encode_hard_state",
    "encode_message",
    "encode_snapshot",
    "encode_snapshot_metadata",
]


class _Reader:
    """A cursor over untrusted bytes: every read is bounds-checked."""

    def __init__(self, raw: bytes) -> None:
        self.raw = memoryview(raw)
        self.pos = 0

    def unpack(self, s: struct.Struct) -> tuple[int, ...]:
        if self.pos + s.size > len(self.raw):
            raise DecodeError(f"truncated at byte {self.pos}")
        out = s.unpack_from(self.raw, self.pos)
        self.pos += s.size
        return tuple(out)

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.raw):
            raise DecodeError(f"truncated: {n} bytes wanted at byte {self.pos}")
        out = bytes(self.raw[self.pos : self.pos + n])
        self.pos += n
        return out

    def remaining(self) -> int:
        return len(self.raw) - self.pos

    def version(self) -> None:
        (v,) = self.unpack(_VERSION)
        if v != VERSION:
            raise DecodeError(f"unknown encoding version {v}")

    def done(self) -> None:
        if self.pos != len(self.raw):
            raise DecodeError(f"{len(self.raw) - self.pos} trailing bytes")


def _flag(v: int, what: str) -> bool:
    if v not in (0, 1):
        raise DecodeError(f"{what} flag is {v}, not 0 or 1")
    return v == 1


# -- entries ------------------------------------------------------------------------------------


def _entry_body(e: Entry) -> bytes:
    return _ENTRY.pack(e.term, e.index, e.type, len(e.data)) + e.data


def _read_entry(r: _Reader) -> Entry:
    term, index, kind, n = r.unpack(_ENTRY)
    if kind not in EntryType._value2member_map_:
        raise DecodeError(f"unknown entry type {kind}")
    if index == 0:
        raise DecodeError("entry index 0")
    return Entry(Term(term), Index(index), EntryType(kind), r.take(n))


def encode_entry(e: Entry) -> bytes:
    return _VERSION.pack(VERSION) + _entry_body(e)


def decode_entry(raw: bytes) -> Entry:
    r = _Reader(raw)
    r.version()
    e = _read_entry(r)
    r.done()
    return e


# -- hard state, conf state, snapshots ----------------------------------------------------------


def encode_hard_state(h: HardState) -> bytes:
    return _HARD.pack(VERSION, h.term, h.vote, h.commit)


def decode_hard_state(raw: bytes) -> HardState:
    r = _Reader(raw)
    v, term, vote, commit = r.unpack(_HARD)
    if v != VERSION:
        raise DecodeError(f"unknown encoding version {v}")
    r.done()
    return HardState(Term(term), NodeId(vote), Index(commit))


def encode_conf_state(c: ConfState) -> bytes:
    ids = b"".join(_NODE.pack(n) for n in (*c.voters, *c.learners))
    return _CONF.pack(VERSION, len(c.voters), len(c.learners)) + ids


def _read_conf_state(r: _Reader) -> ConfState:
    v, nv, nl = r.unpack(_CONF)
    if v != VERSION:
        raise DecodeError(f"unknown encoding version {v}")
    if (nv + nl) * _NODE.size > r.remaining():
        raise DecodeError("conf state truncated")
    voters = tuple(NodeId(r.unpack(_NODE)[0]) for _ in range(nv))
    learners = tuple(NodeId(r.unpack(_NODE)[0]) for _ in range(nl))
    if 0 in voters or 0 in learners:
        raise DecodeError("conf state names node 0")
    if len(set(voters) | set(learners)) != nv + nl:
        raise DecodeError("conf state names a node twice")
    return ConfState(voters, learners)


def decode_conf_state(raw: bytes) -> ConfState:
    r = _Reader(raw)
    c = _read_conf_state(r)
    r.done()
    return c


def encode_snapshot_metadata(m: SnapshotMetadata) -> bytes:
    cs = encode_conf_state(m.conf_state)
    return _META.pack(VERSION, m.index, m.term, len(cs)) + cs


def _read_snapshot_metadata(r: _Reader) -> SnapshotMetadata:
    v, index, term, n = r.unpack(_META)
    if v != VERSION:
        raise DecodeError(f"unknown encoding version {v}")
    return SnapshotMetadata(Index(index), Term(term), decode_conf_state(r.take(n)))


def decode_snapshot_metadata(raw: bytes) -> SnapshotMetadata:
    r = _Reader(raw)
    m = _read_snapshot_metadata(r)
    r.done()
    return m


def encode_snapshot(s: Snapshot) -> bytes:
    meta = encode_snapshot_metadata(s.metadata)
    return _LEN.pack(len(meta)) + meta + _LEN.pack(len(s.data)) + s.data


def _read_snapshot(r: _Reader) -> Snapshot:
    (n,) = r.unpack(_LEN)
    meta = decode_snapshot_metadata(r.take(n))
    (n,) = r.unpack(_LEN)
    return Snapshot(meta, r.take(n))


def decode_snapshot(raw: bytes) -> Snapshot:
    r = _Reader(raw)
    s = _read_snapshot(r)
    r.done()
    return s


# -- messages -----------------------------------------------------------------------------------


def encode_message(m: Message) -> bytes:
    head = _MSG.pack(VERSION, m.type, m.to, m.frm, m.term, m.log_term, m.index, m.commit, int(m.reject),
                     m.reject_hint, len(m.entries), len(m.context), int(m.snapshot is not None))
    parts = [head, m.context, *(_entry_body(e) for e in m.entries)]
    if m.snapshot is not None:
        parts.append(encode_snapshot(m.snapshot))
    return b"".join(parts)


def decode_message(raw: bytes) -> Message:
    try:
        return _decode_message(_Reader(raw))
    except MessageDecodeError:
        raise
    except (DecodeError, struct.error, ValueError, OverflowError) as e:
        raise MessageDecodeError(str(e)) from e


def _decode_message(r: _Reader) -> Message:
    v, kind, to, frm, term, log_term, index, commit, reject, hint, n, nctx, has_snap = r.unpack(_MSG)
    if v != VERSION:
        raise MessageDecodeError(f"unknown message version {v}")
    if kind not in MessageType._value2member_map_:
        raise MessageDecodeError(f"unknown message type {kind}")
    ctx = r.take(nctx)
    if n * _ENTRY.size > r.remaining():  # refuse to loop over a count the bytes cannot hold
        raise MessageDecodeError("entry count exceeds message size")
    entries = tuple(_read_entry(r) for _ in range(n))
    snapshot = _read_snapshot(r) if _flag(has_snap, "snapshot") else None
    r.done()
    return Message(MessageType(kind), NodeId(to), NodeId(frm), Term(term), Term(log_term), Index(index), entries,
                   Index(commit), _flag(reject, "reject"), Index(hint), ctx, snapshot)
