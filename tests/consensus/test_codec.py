"""Codec: every value round-trips (Hypothesis), and malformed peer input always raises
``MessageDecodeError`` — never anything else, never a silently wrong value."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consensus.codec import (
    DecodeError,
    MessageDecodeError,
    decode_conf_state,
    decode_entry,
    decode_hard_state,
    decode_message,
    decode_snapshot,
    decode_snapshot_metadata,
    encode_conf_state,
    encode_entry,
    encode_hard_state,
    encode_message,
    encode_snapshot,
    encode_snapshot_metadata,
)
from consensus.types import (
    ConfChange,
    ConfChangeType,
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

u64 = st.integers(0, 2**64 - 1)
ids = st.integers(1, 2**64 - 1).map(NodeId)
terms = u64.map(Term)
indexes = u64.map(Index)
small_bytes = st.binary(max_size=64)

entries = st.builds(Entry, terms, st.integers(1, 2**64 - 1).map(Index), st.sampled_from(EntryType), small_bytes)
hard_states = st.builds(HardState, terms, u64.map(NodeId), indexes)


@st.composite
def conf_states(draw: st.DrawFn) -> ConfState:
    nodes = draw(st.lists(ids, unique=True, max_size=7))
    k = draw(st.integers(0, len(nodes)))
    return ConfState(tuple(nodes[:k]), tuple(nodes[k:]))


metas = st.builds(SnapshotMetadata, indexes, terms, conf_states())
snapshots = st.builds(Snapshot, metas, small_bytes)
messages = st.builds(
    Message, st.sampled_from(MessageType), u64.map(NodeId), u64.map(NodeId), terms, terms, indexes,
    st.lists(entries, max_size=4).map(tuple), indexes, st.booleans(), indexes, small_bytes,
    st.none() | snapshots,
)


@given(messages)
def test_message_round_trips(m: Message) -> None:
    assert decode_message(encode_message(m)) == m


@given(entries)
def test_entry_round_trips(e: Entry) -> None:
    assert decode_entry(encode_entry(e)) == e


@given(hard_states)
def test_hard_state_round_trips(h: HardState) -> None:
    assert decode_hard_state(encode_hard_state(h)) == h


@given(conf_states())
def test_conf_state_round_trips(c: ConfState) -> None:
    assert decode_conf_state(encode_conf_state(c)) == c


@given(metas)
def test_snapshot_metadata_round_trips(m: SnapshotMetadata) -> None:
    assert decode_snapshot_metadata(encode_snapshot_metadata(m)) == m


@given(snapshots)
def test_snapshot_round_trips(s: Snapshot) -> None:
    assert decode_snapshot(encode_snapshot(s)) == s


@given(st.builds(ConfChange, st.sampled_from(ConfChangeType), ids, small_bytes))
def test_conf_change_round_trips(cc: ConfChange) -> None:
    assert ConfChange.decode(cc.encode()) == cc


@given(messages, st.data())
def test_every_truncation_of_a_message_is_rejected(m: Message, data: st.DataObject) -> None:
    raw = encode_message(m)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(MessageDecodeError):
        decode_message(raw[:cut])


@given(st.binary(max_size=200))
def test_random_bytes_raise_only_message_decode_error(raw: bytes) -> None:
    with contextlib.suppress(MessageDecodeError):
        decode_message(raw)


@given(messages, st.data())
def test_flipped_bytes_decode_or_raise_typed_error(m: Message, data: st.DataObject) -> None:
    raw = bytearray(encode_message(m))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= data.draw(st.integers(1, 255))
    with contextlib.suppress(MessageDecodeError):
        decode_message(bytes(raw))


def _msg() -> Message:
    return Message(MessageType.APP, NodeId(2), NodeId(1), Term(7), Term(6), Index(41),
                   (Entry(Term(7), Index(42), EntryType.NORMAL, b"x" * 10),), Index(40))


def test_unknown_version_type_flag_and_trailing_bytes_are_rejected() -> None:
    raw = encode_message(_msg())
    for bad in (b"", b"\x02" + raw[1:], raw[:1] + b"\x63" + raw[2:], raw + b"x"):
        with pytest.raises(MessageDecodeError):
            decode_message(bad)
    reject_at = 1 + 1 + 8 * 6  # version, type, six u64 fields
    with pytest.raises(MessageDecodeError):
        decode_message(raw[:reject_at] + b"\x02" + raw[reject_at + 1 :])


def test_a_huge_entry_count_is_rejected_without_allocating() -> None:
    raw = bytearray(encode_message(_msg()))
    n_at = 1 + 1 + 8 * 6 + 1 + 8
    struct.pack_into("<I", raw, n_at, 2**32 - 1)
    with pytest.raises(MessageDecodeError):
        decode_message(bytes(raw))


def test_persisted_values_reject_garbage_with_decode_error() -> None:
    for fn in (decode_entry, decode_hard_state, decode_conf_state, decode_snapshot_metadata, decode_snapshot):
        with pytest.raises(DecodeError):
            fn(b"\x01\x02")
    with pytest.raises(DecodeError):
        decode_conf_state(encode_conf_state(ConfState((NodeId(1), NodeId(1)))))  # duplicate member
    with pytest.raises(DecodeError):
        ConfChange.decode(b"\x01\x09" + b"\x00" * 12)  # unknown change type
