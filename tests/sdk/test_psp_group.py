"""Batch-signed PSP records (ledger/psp_group.py): group roots and audit paths, the node's check
(node/psp_auth.py), the leaf aux apply derives, and the auditor's check of one leaf (no processes)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from clients.auditor.failures import PspSignatureInvalid
from clients.auditor.replay import LogVerifier, iter_blocks
from clients.workload import TransferGenerator
from ledger.codec import (
    TRANSFER_SIZE,
    Batch,
    EncodingError,
    Proposal,
    decode_leaf,
    decode_proposal,
    encode_proposal,
    iter_aux,
    validate_batch,
)
from ledger.hashing import leaf_hash
from ledger.merkle import MemoryNodes, inclusion_proof, naive_root
from ledger.note import Checkpoint, Signer, open_note
from ledger.psp_group import (
    AUX_TAG_PSP_GROUP,
    GroupProofError,
    check_group_aux,
    group_auxes,
    group_messages,
    parse_group_aux,
    record_hash,
    tree,
)
from ledger.types import EventKind, Result
from node.psp_auth import BadPspGroupSignature, BadPspSignature, PspAuthenticator, PspAuthError
from tests.audit.memlog import MemLog, xfer

PSP = Signer.generate("acme-psp")
OTHER = Signer.generate("mallory-psp")
KIND = EventKind.CREATE_TRANSFER


def group_signed(n: int, group: int, signer: Signer = PSP, seed: int = 3) -> Batch:
    recs, _ = TransferGenerator(50, seed=seed, psps=1).records(n)
    key = SigningKey(signer.seed)
    sigs = b"".join(key.sign(m).signature for m in group_messages(KIND, recs, TRANSFER_SIZE, group))
    return validate_batch(KIND, recs, sigs, signer.key_id, sign_group=group)


def ed25519(keys: dict[bytes, Signer]):  # type: ignore[no-untyped-def]
    def verify(kid: bytes, msg: bytes, sig: bytes) -> bool:
        return kid in keys and keys[kid].verifier.verify(msg, sig)
    return verify


# -- the tree: RFC 6962 over record hashes, paths the reference verifier accepts --------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 16, 17])
def test_group_tree_matches_the_log_s_merkle_reference(n: int) -> None:
    hashes = [leaf_hash(bytes([i]) * 7) for i in range(n)]
    root, paths = tree(hashes)
    assert root == naive_root(hashes)
    nodes = MemoryNodes(hashes)
    assert paths == [inclusion_proof(nodes, i, n) for i in range(n)]


@pytest.mark.parametrize(("n", "group"), [(1, 16), (16, 16), (100, 16), (37, 5), (64, 1), (40, 8189)])
def test_every_leaf_aux_proves_its_own_record(n: int, group: int) -> None:
    b = group_signed(n, group)
    auxes = group_auxes(KIND, b.records, TRANSFER_SIZE, group, b.signatures, b.signer_key_id)
    assert len(auxes) == n
    verify = ed25519({PSP.key_id: PSP})
    for i, aux in enumerate(auxes):
        ((tag, value),) = list(iter_aux(aux))
        assert tag == AUX_TAG_PSP_GROUP
        kid, _sig, count, index, path = parse_group_aux(value)
        assert kid == PSP.key_id and index == i % group and count == min(group, n - i // group * group)
        assert len(path) == len(tree([record_hash(b"x")] * count)[1][index])
        assert check_group_aux(KIND, b.records[i * TRANSFER_SIZE : (i + 1) * TRANSFER_SIZE], value, verify) == kid


def _aux_value(b: Batch, group: int, i: int) -> bytes:
    aux = group_auxes(KIND, b.records, TRANSFER_SIZE, group, b.signatures, b.signer_key_id)[i]
    return aux[3:]


def test_altered_record_wrong_index_wrong_path_and_forged_signature_fail() -> None:
    b = group_signed(32, 16)
    verify = ed25519({PSP.key_id: PSP})
    rec = b.records[5 * TRANSFER_SIZE : 6 * TRANSFER_SIZE]
    value = _aux_value(b, 16, 5)
    altered = bytearray(rec)
    altered[60] ^= 1  # the amount
    with pytest.raises(GroupProofError, match="does not verify"):
        check_group_aux(KIND, bytes(altered), value, verify)
    wrong_index = bytearray(value)
    wrong_index[70] = 6  # index u16 at offset 70: claims to be record #6 of the group
    with pytest.raises(GroupProofError, match="does not verify"):
        check_group_aux(KIND, rec, bytes(wrong_index), verify)
    wrong_path = bytearray(value)
    wrong_path[-1] ^= 1
    with pytest.raises(GroupProofError, match="does not verify"):
        check_group_aux(KIND, rec, bytes(wrong_path), verify)
    with pytest.raises(GroupProofError, match="too few"):
        check_group_aux(KIND, rec, value[:-32], verify)
    out_of_range = bytearray(value)
    out_of_range[70] = 16
    with pytest.raises(GroupProofError, match="outside"):
        check_group_aux(KIND, rec, bytes(out_of_range), verify)
    forged = bytearray(value)
    forged[4 + 10] ^= 1  # a byte of the group signature
    with pytest.raises(GroupProofError):
        check_group_aux(KIND, rec, bytes(forged), verify)
    with pytest.raises(EncodingError):
        check_group_aux(KIND, rec, value[:-1], verify)


# -- framing: validate_batch and the replicated proposal ------------------------------------------------


def test_group_signed_batch_round_trips_through_the_proposal() -> None:
    b = group_signed(37, 16)
    assert len(b.signatures) == 3 * 64 and b.sign_group == 16
    plain = group_signed(5, 1)
    p = Proposal(123, (b, Batch(KIND, b.records[:176]), plain))
    assert decode_proposal(encode_proposal(p)) == p


def test_framing_errors_are_clear() -> None:
    b = group_signed(37, 16)
    with pytest.raises(EncodingError, match="expected 3 x 64"):
        validate_batch(KIND, b.records, b.signatures[:128], PSP.key_id, sign_group=16)
    with pytest.raises(EncodingError, match="without signatures"):
        validate_batch(KIND, b.records, b"", b"", sign_group=16)
    with pytest.raises(EncodingError, match="sign_group is 9000"):
        validate_batch(KIND, b.records, b.signatures, PSP.key_id, sign_group=9000)


# -- the node: one signature per group, a PSP-readable refusal --------------------------------------------


@pytest.fixture(params=[True, False], ids=["native-loops", "pynacl-calls"])
def auth(request: pytest.FixtureRequest) -> PspAuthenticator:
    """Both ways of verifying: one GIL-free native call per chunk, and one PyNaCl call per signature."""
    a = PspAuthenticator([PSP.verifier.to_string()], require_signatures=True, threads=2, native_loops=request.param)
    yield a  # type: ignore[misc]
    a.close()


@pytest.mark.parametrize(("n", "group"), [(1, 16), (100, 16), (8189, 16), (300, 64)])
def test_node_accepts_group_signed_batches(auth: PspAuthenticator, n: int, group: int) -> None:
    asyncio.run(auth.verify_batch(group_signed(n, group)))


def test_node_refuses_a_forged_group_signature_naming_group_and_records(auth: PspAuthenticator) -> None:
    b = group_signed(100, 16)
    sigs = bytearray(b.signatures)
    sigs[2 * 64 + 9] ^= 1
    with pytest.raises(BadPspGroupSignature) as info:
        asyncio.run(auth.verify_batch(Batch(KIND, b.records, bytes(sigs), b.signer_key_id, 16)))
    assert info.value.group_index == 2 and (info.value.first, info.value.last) == (32, 47)
    assert "group signature #2 (records #32..#47)" in str(info.value) and "nothing of the batch" in str(info.value)
    assert isinstance(info.value, PspAuthError)  # → PERMISSION_DENIED at the edge


def test_node_refuses_a_record_altered_after_group_signing(auth: PspAuthenticator) -> None:
    b = group_signed(100, 16)
    recs = bytearray(b.records)
    recs[99 * TRANSFER_SIZE + 60] ^= 1  # record 99, the last group (96..99)
    with pytest.raises(BadPspGroupSignature, match=r"records #96\.\.#99"):
        asyncio.run(auth.verify_batch(Batch(KIND, bytes(recs), b.signatures, b.signer_key_id, 16)))


def test_group_signatures_sent_as_per_record_ones_are_refused(auth: PspAuthenticator) -> None:
    b = group_signed(16, 1)  # one group per record: same count as per-record, other bytes signed
    with pytest.raises(BadPspSignature):
        asyncio.run(auth.verify_batch(Batch(KIND, b.records, b.signatures, b.signer_key_id)))


def test_a_group_signature_by_another_key_is_refused(auth: PspAuthenticator) -> None:
    b = group_signed(40, 16, signer=OTHER)
    with pytest.raises(BadPspGroupSignature):
        asyncio.run(auth.verify_batch(Batch(KIND, b.records, b.signatures, PSP.key_id, 16)))


# -- apply and the auditor: leaves carry the proof, an altered leaf is flagged ----------------------------


def _group_log() -> MemLog:
    log = MemLog()
    log.accounts(6)
    recs = [xfer(100 + i, 1 + i % 5, 2 + i % 5, 10 + i) for i in range(37)]
    raw = b"".join(recs)
    sigs = b"".join(PSP.sign(m) for m in group_messages(KIND, raw, TRANSFER_SIZE, 16))
    log.block(Batch(KIND, raw, sigs, PSP.key_id, 16))
    return log


def _audit(log: MemLog, leaves: list[bytes]) -> LogVerifier:
    v = LogVerifier(psp_keys=[PSP.verifier])
    for h, ls in iter_blocks(log.headers(), iter(leaves)):
        v.feed_block(h, ls)
    v.finish(Checkpoint.parse(open_note(log.note(), [log.signer.verifier]).body))
    return v


def test_applied_leaves_carry_the_group_proof_and_the_auditor_verifies_each() -> None:
    log = _group_log()
    leaves = log.leaves()
    transfers = [decode_leaf(raw) for raw in leaves if decode_leaf(raw).kind == KIND]
    assert len(transfers) == 37
    for leaf in transfers:
        ((tag, value),) = list(iter_aux(leaf.aux))
        assert tag == AUX_TAG_PSP_GROUP
        check_group_aux(KIND, leaf.body, value, ed25519({PSP.key_id: PSP}))
    assert _audit(log, leaves).stats.psp_verified == 37


@pytest.mark.parametrize(("where", "offset"), [("record", 24 + 60), ("index", 24 + 176 + 2 + 3 + 70),
                                               ("path", -5)])
def test_auditor_flags_an_altered_group_signed_leaf(where: str, offset: int) -> None:
    """A full replay names the altered leaf and the PSP key (exit code 15), before any tree mismatch."""
    log = _group_log()
    leaves = log.leaves()
    i = next(k for k, raw in enumerate(leaves) if decode_leaf(raw).kind == KIND) + 20
    raw = bytearray(leaves[i])
    raw[offset] ^= 1
    leaves[i] = bytes(raw)
    with pytest.raises(PspSignatureInvalid) as e:
        _audit(log, leaves)
    assert f"leaf {i}" in str(e.value) and "acme-psp" in str(e.value) and e.value.exit_code == 15


def test_an_outsider_following_docs_formats_verifies_a_leaf() -> None:
    """An independent verifier written from docs/formats.md alone (blake3 + Ed25519, no project code)."""
    import struct

    import blake3
    from nacl.signing import VerifyKey

    def outsider_check(kind: int, body: bytes, value: bytes, public_key: bytes) -> None:
        sig, (c, j) = value[4:68], struct.unpack_from("<HH", value, 68)
        path = [value[k : k + 32] for k in range(72, len(value), 32)]
        h = blake3.blake3(b"\x00" + body).digest()
        fn, sn = j, c - 1
        for p in path:  # RFC 9162 2.1.3.2
            if fn & 1 or fn == sn:
                h = blake3.blake3(b"\x01" + p + h).digest()
                while not fn & 1 and fn:
                    fn, sn = fn >> 1, sn >> 1
            else:
                h = blake3.blake3(b"\x01" + h + p).digest()
            fn, sn = fn >> 1, sn >> 1
        assert sn == 0
        msg = b"sovledger/psp-group/v1" + b"\x00" + bytes([kind]) + struct.pack("<H", c) + h
        assert len(msg) == 58
        VerifyKey(public_key).verify(msg, sig)

    leaves = [decode_leaf(raw) for raw in _group_log().leaves()]
    for leaf in (lf for lf in leaves if lf.kind == KIND):
        outsider_check(KIND, leaf.body, leaf.aux[3:], PSP.verifier.public_key)


@pytest.mark.skipif(not __import__("ledger.native").native.available(), reason="native engine not built")
def test_python_and_native_apply_write_the_same_group_proofs(tmp_path: Path) -> None:
    """The aux is an input both engines take (signature_auxes): identical leaves, headers and stores."""
    from ledger.codec import encode_account, encode_transfer
    from ledger.types import Transfer
    from tests.engine.test_differential import ACCOUNTS, Pair

    p = Pair(tmp_path)
    try:
        p.block((Batch(EventKind.CREATE_ACCOUNT, b"".join(encode_account(a) for a in ACCOUNTS)),))
        recs = b"".join(encode_transfer(Transfer(900 + i, 4 if i % 5 else 5, 2, 5 + i, ledger=1, code=1))
                        for i in range(37))  # every fifth: a ledger mismatch (a failed leaf carries its proof too)
        sigs = b"".join(PSP.sign(m) for m in group_messages(KIND, recs, TRANSFER_SIZE, 16))
        grouped = Batch(KIND, recs, sigs, PSP.key_id, 16)
        p.block((grouped, grouped))  # the second one: exact retries in the same block
        p.assert_stores_identical()
        assert Result.OK in p.results and len(p.results) > 1
    finally:
        p.close()
