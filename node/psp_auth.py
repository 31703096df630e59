"""PSP signature checks at the edge: every record of a signed batch must verify under a known PSP key.

A PSP may sign each canonical record (Ed25519 over the exact 176-byte transfer record; the node
never re-encodes, so those are the bytes in the log). The batch carries ``signatures`` (n × 64
bytes) and the 4-byte ``signer_key_id`` (``ledger.note`` key id of the PSP's verifier key). This
module checks them before a batch enters the ingest queue; the signatures then go into each leaf's
aux field (tag 1) so an auditor can re-verify them.

A PSP may instead sign in groups (``sign_group`` G > 0, ledger/psp_group.py): one signature per
group of G consecutive records over the group's Merkle root; the node rebuilds each root from the
records and verifies one signature per group (a forged signature or a record changed after signing
fails as ``BadPspGroupSignature`` naming the group and its records). Apply then writes each
record's proof (aux tag 5) into its leaf.

Verification runs in a thread pool: a batch is cut into one chunk per thread (of records, or of
groups) and the chunks verify in parallel on separate cores, off the event loop, while the apply
thread applies earlier blocks. With the native engine a chunk is ONE call into
``ledger/_native/group.c`` (``verify_records`` / ``verify_groups``: group roots hashed in C, then
libsodium's ``crypto_sign_open`` — the one PyNaCl loaded, by its address — per signature), the whole
chunk with the GIL released: a pool thread never waits for the GIL between two signatures while
the apply thread runs Python. Without it (``SOVLEDGER_ENGINE=python`` or no compiler) each
signature is one PyNaCl call, which releases the GIL inside libsodium only.

Keys come from configuration as C2SP verifier key strings ``NAME+KEYID+BASE64``; optionally
prefixed ``PSP_ID=`` (e.g. ``17=acme+1a2b3c4d+AQ…``) to bind the key to one ``psp_id``: then every
record it signs must carry that psp_id (a PSP cannot sign payments in another PSP's name).

Errors are typed; node/errors.py maps ``PspAuthError`` (all of them) to PERMISSION_DENIED.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Final

import blake3
from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

from ledger import native
from ledger.codec import KEY_ID_SIZE, RECORD_SIZE, SIGNATURE_SIZE, TRANSFER_SIZE, Batch
from ledger.note import ALG_ED25519, NoteError, Verifier
from ledger.psp_group import GROUP_CONTEXT, group_message, root_of
from ledger.types import EventKind

# psp_id sits after id, debit, credit, amount lo/hi, pending_id, user_data, external_ref,
# pii_commitment and ledger in the transfer record (docs/formats.md)
TRANSFER_PSP_ID_OFFSET: Final = 16 * 3 + 8 + 8 + 16 + 16 + 32 + 32 + 4  # 164
_U32: Final = struct.Struct("<I")
# a whole transfer record, only its psp_id read
_TRANSFER_PSP_ID: Final = struct.Struct(f"<{TRANSFER_PSP_ID_OFFSET}xI{TRANSFER_SIZE - TRANSFER_PSP_ID_OFFSET - 4}x")
# below this many records a batch is verified as one chunk: thread hand-off costs more than it saves
MIN_CHUNK: Final = 32
CHUNKS_PER_THREAD: Final = 8
# kinds a PSP originates; with require_signatures these must be signed
PSP_KINDS: Final = frozenset({EventKind.CREATE_TRANSFER, EventKind.SETTLEMENT_CALLBACK})
_b3 = blake3.blake3


def _native_open() -> int:
    """Address of the ``crypto_sign_open`` PyNaCl's libsodium exports, for the native engine's
    verify loops; 0 when the native engine is not active or PyNaCl does not expose it."""
    if native.active() != "native" or not hasattr(native.engine(), "verify_groups"):
        return 0
    try:
        from nacl._sodium import ffi, lib  # PyNaCl's cffi module (the library it already loaded)

        return int(ffi.cast("uintptr_t", ffi.addressof(lib, "crypto_sign_open")))
    except (ImportError, AttributeError, TypeError):
        return 0


class PspAuthError(Exception):
    """A batch's PSP signatures are missing, by an unknown key, or do not verify."""


class UnknownPspKey(PspAuthError):
    def __init__(self, key_id: bytes) -> None:
        self.key_id = key_id
        super().__init__(f"batch signed by unknown PSP key id {key_id.hex()}: register the PSP's verifier key "
                         "in the node config (psp_verifier_keys) or sign with a registered key")


class BadPspSignature(PspAuthError):
    def __init__(self, record_index: int, key_id: bytes = b"") -> None:
        self.record_index = record_index
        self.key_id = key_id
        super().__init__(f"PSP signature of record #{record_index} does not verify under key {key_id.hex()} "
                         "(sign the exact canonical record bytes with Ed25519); nothing of the batch was applied")


class BadPspGroupSignature(PspAuthError):
    def __init__(self, group_index: int, first: int, last: int, key_id: bytes = b"") -> None:
        self.group_index, self.first, self.last, self.key_id = group_index, first, last, key_id
        super().__init__(f"PSP group signature #{group_index} (records #{first}..#{last}) does not verify under key "
                         f"{key_id.hex()}: sign the group's Merkle root as in docs/formats.md (PSP group signature); "
                         "a record changed after signing fails the same way; nothing of the batch was applied")


class SignatureRequired(PspAuthError):
    def __init__(self, kind: str = "") -> None:
        super().__init__(f"this node requires PSP signatures on {kind or 'PSP'} batches: send `signatures` "
                         "(n x 64-byte Ed25519 over each record) and the 4-byte `signer_key_id`")


class PspIdMismatch(PspAuthError):
    def __init__(self, record_index: int, psp_id: int, allowed: int, key_id: bytes) -> None:
        self.record_index, self.psp_id, self.allowed = record_index, psp_id, allowed
        super().__init__(f"record #{record_index} has psp_id {psp_id} but key {key_id.hex()} may only sign "
                         f"for psp_id {allowed}")


@dataclass(frozen=True, slots=True)
class PspKey:
    verifier: Verifier
    psp_id: int | None = None  # bound psp_id, if any

    @staticmethod
    def parse(text: str) -> PspKey:
        text = text.strip()
        bound: int | None = None
        head, sep, rest = text.partition("=")
        if sep and head.isdigit():
            bound, text = int(head), rest
        v = Verifier.parse(text)
        if v.alg != ALG_ED25519:
            raise NoteError(f"PSP key {v.name} must be a plain Ed25519 verifier key (alg 0x01)")
        return PspKey(v, bound)


def _verify_range(public_key: bytes, records: bytes, signatures: bytes, size: int, start: int, end: int) -> int:
    """Index of the first record in [start, end) whose signature fails, or -1. Runs in a pool thread,
    once per chunk of a batch; per record only two slices and one libsodium call (which releases the GIL)."""
    verify = crypto_sign_open
    sig_at, rec_at = start * SIGNATURE_SIZE, start * size
    for i in range(start, end):
        try:
            verify(signatures[sig_at : sig_at + SIGNATURE_SIZE] + records[rec_at : rec_at + size], public_key)
        except (BadSignatureError, ValueError):
            return i
        sig_at += SIGNATURE_SIZE
        rec_at += size
    return -1


def _verify_groups(public_key: bytes, kind: int, records: bytes, signatures: bytes, size: int, group: int,
                   start: int, end: int) -> int:
    """Index of the first signing group in [start, end) whose signature fails, or -1 (a pool thread)."""
    n = len(records) // size
    verify = crypto_sign_open
    for g in range(start, end):
        first = g * group
        last = min(n, first + group)
        hashes = [_b3(b"\x00" + records[i * size : (i + 1) * size]).digest() for i in range(first, last)]
        msg = group_message(kind, last - first, root_of(hashes))
        try:
            verify(signatures[g * SIGNATURE_SIZE : (g + 1) * SIGNATURE_SIZE] + msg, public_key)
        except (BadSignatureError, ValueError):
            return g
    return -1


class PspAuthenticator:
    """Checks PSP signatures of incoming batches; ``await verify_batch(batch)`` raises or returns None."""

    def __init__(self, psp_verifier_keys: list[str], require_signatures: bool, threads: int = 2,
                 native_loops: bool = True) -> None:
        if threads < 1:
            raise ValueError("threads must be >= 1")
        self.require_signatures = require_signatures
        self.threads = threads
        self._keys: dict[bytes, PspKey] = {}
        for text in psp_verifier_keys:
            k = PspKey.parse(text)
            kid = k.verifier.key_id
            if kid in self._keys and self._keys[kid] != k:
                raise NoteError(f"two PSP keys share key id {kid.hex()}")
            self._keys[kid] = k
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="psp-verify")
        # address of libsodium's crypto_sign_open for the native loops; 0: one PyNaCl call per signature
        self._open = _native_open() if native_loops else 0

    @property
    def loops(self) -> str:
        """"native" (one GIL-free call per chunk) or "pynacl" (one PyNaCl call per signature)."""
        return "native" if self._open else "pynacl"

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _check_unsigned(self, batch: Batch) -> bool:
        """True when there is nothing to verify; raises when a signature was required."""
        if batch.signatures:
            return False
        if self.require_signatures and batch.kind in PSP_KINDS:
            raise SignatureRequired(batch.kind.name)
        return True

    def _key_for(self, batch: Batch) -> PspKey:
        if len(batch.signer_key_id) != KEY_ID_SIZE:
            raise UnknownPspKey(batch.signer_key_id)
        key = self._keys.get(batch.signer_key_id)
        if key is None:
            raise UnknownPspKey(batch.signer_key_id)
        return key

    def _check_psp_ids(self, batch: Batch, key: PspKey) -> None:
        if key.psp_id is None or batch.kind != EventKind.CREATE_TRANSFER:
            return
        # one C loop over the records (a tuple each); the record is located only when one differs
        if all(psp == key.psp_id for (psp,) in _TRANSFER_PSP_ID.iter_unpack(batch.records)):
            return
        size = RECORD_SIZE[batch.kind]
        for i in range(batch.count):
            (psp,) = _U32.unpack_from(batch.records, i * size + TRANSFER_PSP_ID_OFFSET)
            if psp != key.psp_id:
                raise PspIdMismatch(i, psp, key.psp_id, batch.signer_key_id)

    def _ranges(self, n: int, min_chunk: int = MIN_CHUNK) -> list[tuple[int, int]]:
        """[start, end) chunks of n signatures: one per thread, or CHUNKS_PER_THREAD per thread on the
        native loops (a chunk is one cheap call there, and a thread that finishes early — the other
        one was descheduled — takes the next chunk instead of idling until the batch is done)."""
        per = CHUNKS_PER_THREAD if self._open else 1
        chunks = max(1, min(self.threads * per, n // min_chunk))
        step = -(-n // chunks)
        return [(s, min(n, s + step)) for s in range(0, n, step)]

    async def verify_batch(self, batch: Batch) -> None:
        """Verify every signature of the batch, chunked across the pool's threads."""
        if self._check_unsigned(batch):
            return
        key = self._key_for(batch)
        size = RECORD_SIZE.get(batch.kind)
        if size is None:  # variable-length kinds carry their own operator signature
            raise PspAuthError(f"{batch.kind.name} batches cannot carry PSP signatures")
        self._check_psp_ids(batch, key)
        records, sigs = bytes(batch.records), bytes(batch.signatures)
        loop = asyncio.get_running_loop()
        pk = key.verifier.public_key
        if batch.sign_group:
            await self._verify_grouped(batch, pk, records, sigs, size)
            return
        if self._open:
            verify_range: Callable[..., int] = partial(native.engine().verify_records, self._open)
        else:
            verify_range = _verify_range
        bad = await asyncio.gather(*(
            loop.run_in_executor(self._pool, verify_range, pk, records, sigs, size, s, e)
            for s, e in self._ranges(batch.count)
        ))
        failed = [i for i in bad if i >= 0]
        if failed:
            raise BadPspSignature(min(failed), batch.signer_key_id)


    async def _verify_grouped(self, batch: Batch, pk: bytes, records: bytes, sigs: bytes, size: int) -> None:
        loop = asyncio.get_running_loop()
        groups = len(sigs) // SIGNATURE_SIZE
        if self._open:
            verify = partial(native.engine().verify_groups, self._open, pk, GROUP_CONTEXT)
        else:
            verify = partial(_verify_groups, pk)
        bad = await asyncio.gather(*(
            loop.run_in_executor(self._pool, verify, int(batch.kind), records, sigs, size, batch.sign_group, s, e)
            for s, e in self._ranges(groups, max(1, MIN_CHUNK // batch.sign_group))
        ))
        failed = [g for g in bad if g >= 0]
        if failed:
            g = min(failed)
            first = g * batch.sign_group
            raise BadPspGroupSignature(g, first, min(batch.count, first + batch.sign_group) - 1, batch.signer_key_id)


__all__ = [
    "BadPspGroupSignature", "BadPspSignature", "PspAuthError", "PspAuthenticator", "PspIdMismatch", "PspKey",
    "SignatureRequired", "UnknownPspKey",
]
