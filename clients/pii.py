"""SDK helpers for personal data: the vault client, local commitments, and disclosure files.

A PSP keeps personal data out of the ledger: it puts a subject into the region's vault, gets back
(or computes itself) the 32-byte commitment, and puts only that into ``Transfer.pii_commitment``.
Every answer from the vault is checked here: the commitment the vault returns must be exactly the
one computed locally from the fields and the salt (ledger/pii.py), so a PSP never logs a commitment
it cannot later prove.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc

from clients.channels import open_sync_channel
from clients.connect import ClientTls
from ledger.pii import SALT_SIZE, ErasureReason, PiiRecord, commit, decode_canonical_pii, verify_commitment
from sovledger_pb import LEADER_METADATA_KEY, REASON_METADATA_KEY
from sovledger_pb import vault_pb2 as vpb
from sovledger_pb import vault_pb2_grpc as vpb_grpc

PII_FILE_VERSION: Final = 1


class VaultCallError(Exception):
    """A vault call failed; ``code`` is the gRPC status, the message is the node's explanation."""

    def __init__(self, code: grpc.StatusCode, message: str, leader: str = "") -> None:
        self.code, self.leader = code, leader
        super().__init__(message)


class SubjectErasedError(VaultCallError):
    """The subject was erased: its data and salt are destroyed in the whole region."""


class SubjectNotFoundError(VaultCallError):
    pass


def new_salt() -> bytes:
    return os.urandom(SALT_SIZE)


def new_subject_id() -> int:
    """A fresh subject id: 128 random bits. Never derive one from the person (a hash of an e-mail address):
    the vault refuses a taken id, so a derived id could be probed by another PSP (docs/privacy.md)."""
    return int.from_bytes(os.urandom(16), "little")


def commitment_for(subject_id: int, fields: Mapping[str, str], salt: bytes) -> bytes:
    """The value for ``Transfer.pii_commitment`` (computed locally, no network)."""
    return commit(PiiRecord(subject_id, dict(fields)), salt)


@dataclass(frozen=True, slots=True)
class PutReceipt:
    commitment: bytes
    salt: bytes
    created: bool
    copies: int


@dataclass(frozen=True, slots=True)
class Disclosed:
    record: PiiRecord
    salt: bytes
    commitment: bytes
    psp_id: int

    def to_json(self) -> dict[str, Any]:
        return {"version": PII_FILE_VERSION, "subject_id": str(self.record.subject_id),
                "fields": dict(sorted(self.record.fields.items())), "salt": self.salt.hex(),
                "commitment": self.commitment.hex(), "psp_id": self.psp_id}


def write_pii_file(path: Path, d: Disclosed) -> None:
    """A disclosure file for `sovledger audit disclose --pii` (personal data: mode 0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(d.to_json(), f, indent=2, ensure_ascii=False)


def read_pii_file(path: Path) -> tuple[PiiRecord, bytes]:
    """(record, salt) from a disclosure file; ValueError names what is wrong."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("version") != PII_FILE_VERSION:
            raise ValueError(f"version {data.get('version')!r}, expected {PII_FILE_VERSION}")
        subject = int(str(data["subject_id"]), 0)
        fields = data["fields"]
        salt = bytes.fromhex(data["salt"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a PII disclosure file: {e}") from None
    if not isinstance(fields, dict) or not all(isinstance(v, str) for v in fields.values()):
        raise ValueError(f"{path}: 'fields' must map names to text")
    if len(salt) != SALT_SIZE:
        raise ValueError(f"{path}: salt must be {SALT_SIZE} bytes ({2 * SALT_SIZE} hex digits)")
    return PiiRecord(subject, fields), salt


def _error(e: grpc.RpcError) -> VaultCallError:
    code, message = e.code(), e.details() or str(e)
    trailing: Any = e.trailing_metadata() if hasattr(e, "trailing_metadata") else ()
    meta = {k: str(v) for k, v in trailing or ()}
    leader = meta.get(LEADER_METADATA_KEY, "")
    if meta.get(REASON_METADATA_KEY) == "REASON_SUBJECT_ERASED":  # branch on the reason, never the text
        return SubjectErasedError(code, message)
    if code == grpc.StatusCode.NOT_FOUND:
        return SubjectNotFoundError(code, message)
    return VaultCallError(code, message, leader)


class PiiVault:
    """Client of one node's Vault service (any member of the region; erase goes to the leader).

    ``tls``: the caller's certificate (clients.connect); it decides the role — a PSP certificate puts
    and reads its own subjects, an auditor or operator certificate reads any, an operator erases.
    None: plaintext, only for a node started with --insecure."""

    def __init__(self, target: str, timeout_s: float = 30.0, tls: ClientTls | None = None) -> None:
        self.target = target
        self._channel = open_sync_channel(target, tls)
        self._stub = vpb_grpc.VaultStub(self._channel)
        self._timeout = timeout_s

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> PiiVault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def put(self, subject_id: int, fields: Mapping[str, str], psp_id: int = 0,
            salt: bytes | None = None) -> PutReceipt:
        """``psp_id``: 0 takes the PSP from the certificate (TLS); an --insecure node needs it."""
        record = PiiRecord(subject_id, dict(fields))
        record.canonical()  # refuse bad fields before anything leaves the process
        req = vpb.PutRequest(subject_id=subject_id.to_bytes(16, "little"), fields=dict(fields), psp_id=psp_id,
                             salt=salt or b"")
        try:
            resp = self._stub.Put(req, timeout=self._timeout)
        except grpc.RpcError as e:
            raise _error(e) from None
        verify_commitment(record, resp.salt, resp.commitment)  # the vault committed to exactly our data
        return PutReceipt(resp.commitment, resp.salt, resp.created, resp.copies)

    def get(self, subject_id: int, psp_id: int = 0) -> Disclosed:
        try:
            resp = self._stub.Get(vpb.GetRequest(subject_id=subject_id.to_bytes(16, "little"), psp_id=psp_id),
                                  timeout=self._timeout)
        except grpc.RpcError as e:
            raise _error(e) from None
        record = decode_canonical_pii(resp.canonical)
        verify_commitment(record, resp.salt, resp.commitment)
        return Disclosed(record, resp.salt, resp.commitment, resp.psp_id)

    def erase(self, subject_id: int, reason: ErasureReason) -> vpb.EraseResponse:
        try:
            return self._stub.Erase(vpb.EraseRequest(subject_id=subject_id.to_bytes(16, "little"),
                                                     reason=int(reason)), timeout=self._timeout)
        except grpc.RpcError as e:
            raise _error(e) from None
