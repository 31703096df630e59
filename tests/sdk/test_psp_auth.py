"""node/psp_auth.py: PSP signatures verified at the edge (unit level, no node process)."""

from __future__ import annotations

import asyncio
import time

import pytest
from nacl.signing import SigningKey

from clients.workload import TransferGenerator
from ledger.codec import TRANSFER_SIZE, Batch, EncodingError, validate_batch
from ledger.note import NoteError, Signer
from ledger.types import EventKind
from node.psp_auth import (
    BadPspSignature,
    PspAuthenticator,
    PspAuthError,
    PspIdMismatch,
    SignatureRequired,
    UnknownPspKey,
)

PSP = Signer.generate("acme-psp")
OTHER = Signer.generate("mallory-psp")


def signed(n: int, signer: Signer = PSP, seed: int = 1) -> Batch:
    recs, _ = TransferGenerator(50, seed=seed, psps=1).records(n)
    key = SigningKey(signer.seed)
    sigs = b"".join(key.sign(recs[i : i + TRANSFER_SIZE]).signature for i in range(0, len(recs), TRANSFER_SIZE))
    return validate_batch(EventKind.CREATE_TRANSFER, recs, sigs, signer.key_id)


def run(auth: PspAuthenticator, batch: Batch) -> None:
    asyncio.run(auth.verify_batch(batch))


@pytest.fixture(params=[True, False], ids=["native-loops", "pynacl-calls"])
def auth(request: pytest.FixtureRequest) -> PspAuthenticator:
    """Both ways of verifying: one GIL-free native call per chunk, and one PyNaCl call per signature."""
    a = PspAuthenticator([PSP.verifier.to_string()], require_signatures=True, threads=2, native_loops=request.param)
    yield a  # type: ignore[misc]
    a.close()


@pytest.mark.parametrize("n", [1, 31, 64, 1000])
def test_good_signatures_pass(auth: PspAuthenticator, n: int) -> None:
    run(auth, signed(n))


@pytest.mark.parametrize("bad", [0, 37, 999])
def test_forged_signature_names_the_record(auth: PspAuthenticator, bad: int) -> None:
    b = signed(1000)
    sigs = bytearray(b.signatures)
    sigs[bad * 64 + 5] ^= 1
    with pytest.raises(BadPspSignature) as info:
        run(auth, Batch(b.kind, b.records, bytes(sigs), b.signer_key_id))
    assert info.value.record_index == bad
    assert f"record #{bad}" in str(info.value)


def test_tampered_record_fails(auth: PspAuthenticator) -> None:
    b = signed(100)
    recs = bytearray(b.records)
    recs[50 * TRANSFER_SIZE + 60] ^= 0xFF  # the amount of record 50
    with pytest.raises(BadPspSignature) as info:
        run(auth, Batch(b.kind, bytes(recs), b.signatures, b.signer_key_id))
    assert info.value.record_index == 50


def test_unknown_key(auth: PspAuthenticator) -> None:
    with pytest.raises(UnknownPspKey) as info:
        run(auth, signed(10, OTHER))
    assert info.value.key_id == OTHER.key_id and OTHER.key_id.hex() in str(info.value)


def test_forged_key_id_claiming_a_known_key(auth: PspAuthenticator) -> None:
    b = signed(10, OTHER)  # signed by another key but claiming the registered key id
    with pytest.raises(BadPspSignature):
        run(auth, Batch(b.kind, b.records, b.signatures, PSP.key_id))


def test_signature_required(auth: PspAuthenticator) -> None:
    recs, _ = TransferGenerator(50, seed=1).records(3)
    with pytest.raises(SignatureRequired):
        run(auth, Batch(EventKind.CREATE_TRANSFER, recs))
    # accounts are not PSP events: unsigned is fine
    run(auth, Batch(EventKind.CREATE_ACCOUNT, bytes(64)))
    relaxed = PspAuthenticator([PSP.verifier.to_string()], require_signatures=False)
    run(relaxed, Batch(EventKind.CREATE_TRANSFER, recs))
    with pytest.raises(UnknownPspKey):  # signed batches are still checked when not required
        run(relaxed, signed(3, OTHER))
    relaxed.close()


def test_all_errors_share_a_base_for_one_status_mapping() -> None:
    for cls in (UnknownPspKey, BadPspSignature, SignatureRequired, PspIdMismatch):
        assert issubclass(cls, PspAuthError)


def test_key_bound_to_a_psp_id() -> None:
    b = signed(20)  # TransferGenerator(psps=1): every record has psp_id 1
    ok = PspAuthenticator([f"1={PSP.verifier.to_string()}"], require_signatures=True)
    run(ok, b)
    wrong = PspAuthenticator([f"2={PSP.verifier.to_string()}"], require_signatures=True)
    with pytest.raises(PspIdMismatch) as info:
        run(wrong, b)
    assert info.value.record_index == 0 and info.value.psp_id == 1
    ok.close()
    wrong.close()


def test_a_bound_key_names_the_one_record_with_another_psp_id() -> None:
    recs = bytearray(signed(40).records)
    recs[13 * TRANSFER_SIZE + 164 : 13 * TRANSFER_SIZE + 168] = (7).to_bytes(4, "little")  # psp_id of record 13
    key = SigningKey(PSP.seed)
    sigs = b"".join(key.sign(bytes(recs[i : i + TRANSFER_SIZE])).signature for i in range(0, len(recs), TRANSFER_SIZE))
    bound = PspAuthenticator([f"1={PSP.verifier.to_string()}"], require_signatures=True)
    with pytest.raises(PspIdMismatch) as info:
        run(bound, Batch(EventKind.CREATE_TRANSFER, bytes(recs), sigs, PSP.key_id))
    assert (info.value.record_index, info.value.psp_id, info.value.allowed) == (13, 7, 1)
    assert "record #13 has psp_id 7" in str(info.value)
    bound.close()


def test_bad_config_key_is_refused() -> None:
    with pytest.raises(NoteError):
        PspAuthenticator(["not-a-key"], require_signatures=True)


def test_framing_is_validate_batch_s_job() -> None:
    recs, _ = TransferGenerator(50, seed=1).records(2)
    with pytest.raises(EncodingError):
        validate_batch(EventKind.CREATE_TRANSFER, recs, bytes(64), PSP.key_id)


def test_verification_rate_uses_threads(auth: PspAuthenticator) -> None:
    """Reports signatures/s (printed with -s); timing is informative, bench/psp_verify.py measures it."""
    b = signed(4000)
    run(auth, b)  # warm up
    t0 = time.perf_counter()
    run(auth, b)
    rate = b.count / (time.perf_counter() - t0)
    print(f"PSP verify: {rate:,.0f} signatures/s with {auth.threads} threads")
    assert rate > 0
