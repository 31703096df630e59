"""The native PSP signature loops and aux builders (ledger/_native/group.c) against the Python
reference (ledger/psp_group.py, ledger/codec.py, PyNaCl): the same bytes for every batch shape, the
same first failing record or group, and the node really uses them when the native engine runs."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from ledger import native
from ledger.codec import TRANSFER_SIZE, Batch, psp_signature_aux
from ledger.note import Signer
from ledger.psp_group import GROUP_CONTEXT, group_auxes, group_messages
from ledger.types import EventKind
from node.psp_auth import PspAuthenticator, _native_open

pytestmark = pytest.mark.skipif(not native.available(), reason="native engine not built (no C compiler)")

if native.available():
    from ledger._native import _engine

KIND = int(EventKind.CREATE_TRANSFER)
PSP = Signer.generate("test-psp")
KEY = SigningKey(PSP.seed)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 70), st.sampled_from([1, 2, 3, 4, 5, 7, 8, 16, 17, 33, 64, 8189]),
       st.sampled_from([176, 64, 40]), st.integers(0, 2**32))
def test_group_auxes_and_roots_match_the_reference(n: int, group: int, size: int, seed: int) -> None:
    rnd = random.Random(seed)
    recs = rnd.randbytes(n * size)
    sigs = rnd.randbytes(64 * -(-n // group))
    kid = rnd.randbytes(4)
    assert _engine.group_auxes(recs, size, group, sigs, kid) == group_auxes(KIND, recs, size, group, sigs, kid)
    roots = _engine.group_roots(recs, size, group)
    assert [roots[i : i + 32] for i in range(0, len(roots), 32)] == [
        m[-32:] for m in group_messages(KIND, recs, size, group)]


def test_group_auxes_of_a_full_batch() -> None:
    recs = random.Random(1).randbytes(8189 * TRANSFER_SIZE)
    for group in (16, 8189, 1000):
        sigs = bytes(range(64)) * -(-8189 // group)
        assert _engine.group_auxes(recs, TRANSFER_SIZE, group, sigs, b"kid1") == group_auxes(
            KIND, recs, TRANSFER_SIZE, group, sigs, b"kid1")


@given(st.integers(0, 300))
def test_record_auxes_match_the_reference(n: int) -> None:
    sigs = random.Random(n).randbytes(64 * n)
    assert _engine.record_auxes(sigs, b"\x01\x02\x03\x04") == [
        psp_signature_aux(b"\x01\x02\x03\x04", sigs[i : i + 64]) for i in range(0, len(sigs), 64)]


def _records(n: int) -> bytes:
    return random.Random(n).randbytes(n * TRANSFER_SIZE)


@pytest.fixture
def native_engine() -> Iterator[None]:
    """The verify loops are the native engine's: ``_native_open`` answers 0 while another engine is
    active (e.g. a run under SOVLEDGER_ENGINE=python)."""
    previous = native.active()
    native.select("native")
    yield
    native.select(previous)


def test_verify_records_finds_the_first_bad_one_in_its_range(native_engine: None) -> None:
    fn, pk = _native_open(), PSP.verifier.public_key
    recs = _records(100)
    sigs = b"".join(KEY.sign(recs[i : i + TRANSFER_SIZE]).signature for i in range(0, len(recs), TRANSFER_SIZE))
    assert _engine.verify_records(fn, pk, recs, sigs, TRANSFER_SIZE, 0, 100) == -1
    bad = bytearray(recs)
    bad[70 * TRANSFER_SIZE + 3] ^= 1
    bad[40 * TRANSFER_SIZE] ^= 1
    assert _engine.verify_records(fn, pk, bytes(bad), sigs, TRANSFER_SIZE, 0, 100) == 40
    assert _engine.verify_records(fn, pk, bytes(bad), sigs, TRANSFER_SIZE, 41, 100) == 70
    assert _engine.verify_records(fn, pk, bytes(bad), sigs, TRANSFER_SIZE, 71, 100) == -1
    assert _engine.verify_records(fn, bytes(32), recs, sigs, TRANSFER_SIZE, 0, 1) == 0  # another key


def test_verify_groups_checks_the_message_the_reference_signs(native_engine: None) -> None:
    fn, pk = _native_open(), PSP.verifier.public_key
    recs = _records(100)  # groups of 16: the last one has 4 records
    sigs = b"".join(KEY.sign(m).signature for m in group_messages(KIND, recs, TRANSFER_SIZE, 16))
    assert _engine.verify_groups(fn, pk, GROUP_CONTEXT, KIND, recs, sigs, TRANSFER_SIZE, 16, 0, 7) == -1
    bad = bytearray(recs)
    bad[99 * TRANSFER_SIZE] ^= 1
    assert _engine.verify_groups(fn, pk, GROUP_CONTEXT, KIND, bytes(bad), sigs, TRANSFER_SIZE, 16, 0, 7) == 6
    assert _engine.verify_groups(fn, pk, GROUP_CONTEXT, KIND, recs, sigs, TRANSFER_SIZE, 16, 0, 7) == -1
    # another kind, another context or another group size is another message
    assert _engine.verify_groups(fn, pk, GROUP_CONTEXT, KIND + 1, recs, sigs, TRANSFER_SIZE, 16, 0, 7) == 0
    assert _engine.verify_groups(fn, pk, b"other/v1\x00", KIND, recs, sigs, TRANSFER_SIZE, 16, 3, 7) == 3
    assert _engine.verify_groups(fn, pk, GROUP_CONTEXT, KIND, recs, sigs[:64 * 4], TRANSFER_SIZE, 32, 0, 4) == 0


@pytest.mark.parametrize("call", [
    lambda fn: _engine.verify_records(fn, bytes(32), b"x" * 176, bytes(63), 176, 0, 1),  # signature size
    lambda fn: _engine.verify_records(fn, bytes(31), b"x" * 176, bytes(64), 176, 0, 1),  # key size
    lambda fn: _engine.verify_records(fn, bytes(32), b"x" * 176, bytes(64), 176, 0, 2),  # range
    lambda fn: _engine.verify_records(0, bytes(32), b"x" * 176, bytes(64), 176, 0, 1),  # no function
    lambda fn: _engine.verify_groups(fn, bytes(32), GROUP_CONTEXT, KIND, b"x" * 176, bytes(64), 176, 0, 0, 1),
    lambda fn: _engine.group_auxes(b"x" * 175, 176, 16, bytes(64), b"kid1"),  # not whole records
    lambda fn: _engine.group_auxes(b"x" * 176, 176, 16, bytes(64), b"kid"),  # key id size
])
def test_bad_shapes_raise_instead_of_reading_past_a_buffer(call: object) -> None:
    with pytest.raises(ValueError):
        call(_native_open())  # type: ignore[operator]


def test_the_node_verifies_with_the_native_loops_when_the_native_engine_runs() -> None:
    previous = native.active()
    try:
        native.select("native")
        a = PspAuthenticator([PSP.verifier.to_string()], require_signatures=True)
        assert a.loops == "native"
        recs = _records(64)
        sigs = b"".join(KEY.sign(m).signature for m in group_messages(KIND, recs, TRANSFER_SIZE, 16))
        asyncio.run(a.verify_batch(Batch(EventKind.CREATE_TRANSFER, recs, sigs, PSP.key_id, 16)))
        a.close()
        native.select("python")
        b = PspAuthenticator([PSP.verifier.to_string()], require_signatures=True)
        assert b.loops == "pynacl"
        b.close()
    finally:
        native.select(previous)
