"""Canonical byte encodings: the bytes that are hashed, signed, stored and sent.

Protobuf serialization is not canonical, so everything that enters a hash or a signature is encoded
here, fixed-width and little-endian. docs/formats.md describes every layout byte by byte; the
tests pin them with known-answer vectors. Pure module: clients (the auditor) import it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from ledger.keyrotation import ROTATION_SIZE
from ledger.netting import OBLIGATION_RECORD_SIZE, SETTLEMENT_BYTES_MAX, SETTLEMENT_MAGIC
from ledger.types import (
    BATCH_ITEMS_MAX,
    U32_MAX,
    U64_MAX,
    U128_MAX,
    Account,
    AccountBalance,
    EventKind,
    Transfer,
)

FORMAT_VERSION: Final = 1

# -- records -------------------------------------------------------------------------------------

# id, user_data, ledger, code, flags, asset_scale, reserved
ACCOUNT_STRUCT: Final = struct.Struct("<16s16sIHHB23s")
ACCOUNT_SIZE: Final = ACCOUNT_STRUCT.size  # 64

# id, debit, credit, amount_lo, amount_hi, pending_id, user_data, external_ref, pii_commitment,
# ledger, psp_id, timeout_s, code, flags
TRANSFER_STRUCT: Final = struct.Struct("<16s16s16sQQ16s16s32s32sIIIHH")
TRANSFER_SIZE: Final = TRANSFER_STRUCT.size  # 176
# field positions in a ``TRANSFER_STRUCT.unpack`` tuple
T_ID: Final = 0
T_DEBIT: Final = 1
T_CREDIT: Final = 2
T_AMOUNT_LO: Final = 3
T_AMOUNT_HI: Final = 4
T_PENDING_ID: Final = 5
T_USER_DATA: Final = 6
T_EXTERNAL_REF: Final = 7
T_PII: Final = 8
T_LEDGER: Final = 9
T_PSP: Final = 10
T_TIMEOUT: Final = 11
T_CODE: Final = 12
T_FLAGS: Final = 13
TransferRecord = tuple[bytes, bytes, bytes, int, int, bytes, bytes, bytes, bytes, int, int, int, int, int]

# record, debits_pending, debits_posted, credits_pending, credits_posted (u128 as lo/hi), timestamp
ACCOUNT_STATE_STRUCT: Final = struct.Struct("<64sQQQQQQQQQ")
ACCOUNT_STATE_SIZE: Final = ACCOUNT_STATE_STRUCT.size  # 136

# callback_id, transfer_id, external_ref, observed_amount lo/hi, psp_id, reserved (docs/rules.md)
CALLBACK_STRUCT: Final = struct.Struct("<16s16s32sQQI12s")
CALLBACK_SIZE: Final = CALLBACK_STRUCT.size  # 96

ERASURE_SIZE: Final = 48  # commitment 32, reason u16, reserved 14 (ledger/pii.py)

RECORD_SIZE: Final = {
    EventKind.CREATE_ACCOUNT: ACCOUNT_SIZE,
    EventKind.CREATE_TRANSFER: TRANSFER_SIZE,
    EventKind.SETTLEMENT_CALLBACK: CALLBACK_SIZE,
    EventKind.ERASE_SUBJECT: ERASURE_SIZE,
    EventKind.KEY_ROTATION: ROTATION_SIZE,
    EventKind.OBLIGATION: OBLIGATION_RECORD_SIZE,
}
# kinds only the node itself proposes (after checking the caller's role), never accepted from Submit
NODE_ONLY_KINDS: Final = frozenset({EventKind.ERASE_SUBJECT, EventKind.KEY_ROTATION, EventKind.AGGREGATE,
                                    EventKind.SETTLEMENT})
OBLIGATION_ROLE_OFFSET: Final = 96  # a client may only submit OBLIGATION records of role 1 (INITIATE)

# Variable-length records (one per batch): a rule set deployment. On the wire of a proposal the
# batch header's count is 1 and the record is preceded by its length (u32 LE).
VARIABLE_KINDS: Final = frozenset({EventKind.DEPLOY_RULESET, EventKind.AGGREGATE, EventKind.SETTLEMENT})
AGGREGATE_BYTES_MAX: Final = 64 << 10  # one AGGREGATE record (docs/formats.md §15)
DEPLOY_HEADER_SIZE: Final = 4 + 64  # operator key id, Ed25519 signature; then the canonical rule set
RULESET_BYTES_MAX: Final = 64 << 10
RULESET_SIGN_PREFIX: Final = b"sovledger/ruleset/v1\n"
_VAR_LEN: Final = struct.Struct("<I")

SIGNATURE_SIZE: Final = 64
KEY_ID_SIZE: Final = 4
ZERO16: Final = bytes(16)
MAX16: Final = b"\xff" * 16
ZERO32: Final = bytes(32)


class EncodingError(ValueError):
    """Bytes that do not follow a canonical layout; the message says which field and why."""


@dataclass(frozen=True, slots=True)
class SettlementCallback:
    """A PSP's settlement confirmation (the 96-byte canonical callback record)."""

    callback_id: int
    transfer_id: int = 0  # either this …
    external_ref: bytes = b""  # … or this (with psp_id) names the transfer
    observed_amount: int = 0
    psp_id: int = 0


def encode_callback(c: SettlementCallback) -> bytes:
    _check_uint(c.psp_id, U32_MAX, "psp_id")
    _check_uint(c.observed_amount, U128_MAX, "observed_amount")
    return CALLBACK_STRUCT.pack(
        u128_bytes(c.callback_id), u128_bytes(c.transfer_id), _fixed(c.external_ref, 32, "external_ref"),
        c.observed_amount & U64_MAX, c.observed_amount >> 64, c.psp_id, bytes(12),
    )


def decode_callback(raw: bytes) -> SettlementCallback:
    _check_len(raw, CALLBACK_SIZE, "callback record")
    cid, tid, ext, lo, hi, psp, _res = CALLBACK_STRUCT.unpack(raw)
    return SettlementCallback(u128_from(cid), u128_from(tid), ext.rstrip(b"\x00"), lo | hi << 64, psp)


def encode_deploy(key_id: bytes, signature: bytes, canonical_ruleset: bytes) -> bytes:
    """A DEPLOY_RULESET record: operator key id (4) ‖ Ed25519 signature (64) ‖ canonical rule set."""
    if len(key_id) != KEY_ID_SIZE or len(signature) != SIGNATURE_SIZE:
        raise EncodingError("deploy record needs a 4-byte key id and a 64-byte signature")
    if not 0 < len(canonical_ruleset) <= RULESET_BYTES_MAX:
        raise EncodingError(f"rule set is {len(canonical_ruleset)} bytes, 1..{RULESET_BYTES_MAX} allowed")
    return key_id + signature + canonical_ruleset


def decode_deploy(raw: bytes) -> tuple[bytes, bytes, bytes]:
    """(key id, signature, canonical rule set bytes)."""
    if len(raw) <= DEPLOY_HEADER_SIZE:
        raise EncodingError(f"deploy record is {len(raw)} bytes, shorter than its header")
    return raw[:4], raw[4:DEPLOY_HEADER_SIZE], raw[DEPLOY_HEADER_SIZE:]


def u128_bytes(value: int) -> bytes:
    if not 0 <= value <= U128_MAX:
        raise EncodingError(f"u128 out of range: {value}")
    return value.to_bytes(16, "little")


def u128_from(raw: bytes) -> int:
    return int.from_bytes(raw, "little")


def _fixed(value: bytes, size: int, field: str) -> bytes:
    if len(value) > size:
        raise EncodingError(f"{field} is {len(value)} bytes, at most {size} allowed")
    return value.ljust(size, b"\x00")


def encode_account(a: Account) -> bytes:
    _check_uint(a.ledger, U32_MAX, "ledger")
    _check_uint(a.code, 0xFFFF, "code")
    _check_uint(a.flags, 0xFFFF, "flags")
    _check_uint(a.asset_scale, 0xFF, "asset_scale")
    return ACCOUNT_STRUCT.pack(
        u128_bytes(a.id), u128_bytes(a.user_data), a.ledger, a.code, a.flags, a.asset_scale,
        _fixed(a.reserved, 23, "reserved"),
    )


def decode_account(raw: bytes) -> Account:
    _check_len(raw, ACCOUNT_SIZE, "account record")
    aid, ud, ledger, code, flags, scale, reserved = ACCOUNT_STRUCT.unpack(raw)
    return Account(
        id=u128_from(aid), ledger=ledger, code=code, flags=flags, asset_scale=scale,
        user_data=u128_from(ud), reserved=b"" if reserved == bytes(23) else reserved,
    )


def encode_transfer(t: Transfer) -> bytes:
    _check_uint(t.ledger, U32_MAX, "ledger")
    _check_uint(t.psp_id, U32_MAX, "psp_id")
    _check_uint(t.timeout_s, U32_MAX, "timeout_s")
    _check_uint(t.code, 0xFFFF, "code")
    _check_uint(t.flags, 0xFFFF, "flags")
    _check_uint(t.amount, U128_MAX, "amount")
    if t.pii_commitment and len(t.pii_commitment) != 32:
        raise EncodingError("pii_commitment must be empty or exactly 32 bytes (a salted hash)")
    return TRANSFER_STRUCT.pack(
        u128_bytes(t.id), u128_bytes(t.debit_account_id), u128_bytes(t.credit_account_id),
        t.amount & U64_MAX, t.amount >> 64, u128_bytes(t.pending_id), u128_bytes(t.user_data),
        _fixed(t.external_ref, 32, "external_ref"), _fixed(t.pii_commitment, 32, "pii_commitment"),
        t.ledger, t.psp_id, t.timeout_s, t.code, t.flags,
    )


def decode_transfer(raw: bytes) -> Transfer:
    _check_len(raw, TRANSFER_SIZE, "transfer record")
    (tid, dr, cr, alo, ahi, pid, ud, ext, pii, ledger, psp, timeout, code, flags) = (
        TRANSFER_STRUCT.unpack(raw)
    )
    return Transfer(
        id=u128_from(tid), debit_account_id=u128_from(dr), credit_account_id=u128_from(cr),
        amount=alo | (ahi << 64), ledger=ledger, code=code, flags=flags, pending_id=u128_from(pid),
        timeout_s=timeout, user_data=u128_from(ud), psp_id=psp, external_ref=ext.rstrip(b"\x00"),
        pii_commitment=b"" if pii == ZERO32 else pii,
    )


def encode_account_state(b: AccountBalance) -> bytes:
    return ACCOUNT_STATE_STRUCT.pack(
        encode_account(b.account),
        *_lohi(b.debits_pending), *_lohi(b.debits_posted),
        *_lohi(b.credits_pending), *_lohi(b.credits_posted), b.timestamp_ns,
    )


def decode_account_state(raw: bytes) -> AccountBalance:
    _check_len(raw, ACCOUNT_STATE_SIZE, "account state")
    rec, dpl, dph, dol, doh, cpl, cph, col, coh, ts = ACCOUNT_STATE_STRUCT.unpack(raw)
    return AccountBalance(
        account=decode_account(rec), debits_pending=dpl | dph << 64, debits_posted=dol | doh << 64,
        credits_pending=cpl | cph << 64, credits_posted=col | coh << 64, timestamp_ns=ts,
    )


def _lohi(value: int) -> tuple[int, int]:
    return value & U64_MAX, value >> 64


def _check_uint(value: int, maximum: int, field: str) -> None:
    if not 0 <= value <= maximum:
        raise EncodingError(f"{field}={value} is outside 0..{maximum}")


def _check_len(raw: bytes, size: int, what: str) -> None:
    if len(raw) != size:
        raise EncodingError(f"{what} must be {size} bytes, got {len(raw)}")


# -- leaves ---------------------------------------------------------------------------------------

# version, kind, result, index, timestamp_ns, body_len
LEAF_HEADER: Final = struct.Struct("<BBHQQI")
LEAF_HEADER_SIZE: Final = LEAF_HEADER.size  # 24
AUX_LEN: Final = struct.Struct("<H")
AUX_TAG_PSP_SIGNATURE: Final = 1
AUX_TAG_RULE_OUTCOME: Final = 2  # action u8, rule code u16, id length u8, rule id (UTF-8)
AUX_TAG_RECONCILE: Final = 3  # status u8, transfer id 16, expected u128 16, observed u128 16
AUX_TAG_ORIGIN: Final = 4  # for LEDGER_TRANSFER leaves: origin u8 (1 adjustment, 2 residual), source id 16
NO_AUX: Final = b"\x00\x00"


@dataclass(frozen=True, slots=True)
class Leaf:
    """One log entry: an event, its result, and where/when the ledger applied it."""

    kind: EventKind
    result: int
    index: int
    timestamp_ns: int
    body: bytes
    aux: bytes = b""  # TLV: u8 tag, u16 len, value (see docs/formats.md)

    def encode(self) -> bytes:
        return encode_leaf(self.kind, self.result, self.index, self.timestamp_ns, self.body, self.aux)

    @property
    def psp_signature(self) -> tuple[bytes, bytes] | None:
        """(key_id, signature) when the PSP signed the record."""
        for tag, value in iter_aux(self.aux):
            if tag == AUX_TAG_PSP_SIGNATURE:
                return value[:KEY_ID_SIZE], value[KEY_ID_SIZE:]
        return None


def encode_leaf(kind: int, result: int, index: int, timestamp_ns: int, body: bytes, aux: bytes = b"") -> bytes:
    return b"".join(
        (LEAF_HEADER.pack(FORMAT_VERSION, kind, result, index, timestamp_ns, len(body)), body,
         AUX_LEN.pack(len(aux)), aux)
    )


def psp_signature_aux(key_id: bytes, signature: bytes) -> bytes:
    value = key_id + signature
    return bytes((AUX_TAG_PSP_SIGNATURE,)) + AUX_LEN.pack(len(value)) + value


def rule_outcome_aux(action: int, code: int, rule_id: bytes) -> bytes:
    value = bytes((action,)) + code.to_bytes(2, "little") + bytes((len(rule_id),)) + rule_id
    return bytes((AUX_TAG_RULE_OUTCOME,)) + AUX_LEN.pack(len(value)) + value


def decode_rule_outcome(value: bytes) -> tuple[int, int, str]:
    """(action, rule code, rule id) from a tag-2 value."""
    if len(value) < 4 or len(value) != 4 + value[3]:
        raise EncodingError("rule outcome TLV is malformed")
    return value[0], int.from_bytes(value[1:3], "little"), value[4:].decode("utf-8")


def reconcile_aux(status: int, transfer_id: bytes, expected: int, observed: int) -> bytes:
    value = bytes((status,)) + transfer_id + u128_bytes(expected) + u128_bytes(observed)
    return bytes((AUX_TAG_RECONCILE,)) + AUX_LEN.pack(len(value)) + value


def origin_aux(origin: int, source_id: bytes) -> bytes:
    value = bytes((origin,)) + source_id
    return bytes((AUX_TAG_ORIGIN,)) + AUX_LEN.pack(len(value)) + value


def iter_aux(aux: bytes) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while pos < len(aux):
        if pos + 3 > len(aux):
            raise EncodingError(f"aux TLV header truncated at byte {pos}")
        tag = aux[pos]
        (length,) = AUX_LEN.unpack_from(aux, pos + 1)
        end = pos + 3 + length
        if end > len(aux):
            raise EncodingError(f"aux TLV tag {tag} claims {length} bytes, only {len(aux) - pos - 3} left")
        yield tag, aux[pos + 3 : end]
        pos = end


_BODY_SIZE: Final = {
    EventKind.CREATE_ACCOUNT: ACCOUNT_SIZE,
    EventKind.CREATE_TRANSFER: TRANSFER_SIZE,
    EventKind.EXPIRE_PENDING: 16,
    EventKind.SETTLEMENT_CALLBACK: CALLBACK_SIZE,
    EventKind.LEDGER_TRANSFER: TRANSFER_SIZE,
    EventKind.ERASE_SUBJECT: ERASURE_SIZE,
    EventKind.KEY_ROTATION: ROTATION_SIZE,
    EventKind.OBLIGATION: OBLIGATION_RECORD_SIZE,
}
LEAF_BODY_SIZE: Final = _BODY_SIZE  # fixed body length per event kind (DEPLOY_RULESET varies); the auditor checks it


def decode_leaf(raw: bytes) -> Leaf:
    if len(raw) < LEAF_HEADER_SIZE + AUX_LEN.size:
        raise EncodingError(f"leaf is {len(raw)} bytes, shorter than its fixed header")
    version, kind, result, index, ts, body_len = LEAF_HEADER.unpack_from(raw)
    if version != FORMAT_VERSION:
        raise EncodingError(f"leaf format version {version} is unknown (expected {FORMAT_VERSION})")
    try:
        event = EventKind(kind)
    except ValueError:
        raise EncodingError(f"leaf event kind {kind} is unknown") from None
    expected = _BODY_SIZE.get(event)
    if expected is not None and body_len != expected:
        raise EncodingError(f"{event.name} leaf body must be {expected} bytes, header says {body_len}")
    body_end = LEAF_HEADER_SIZE + body_len
    if body_end + AUX_LEN.size > len(raw):
        raise EncodingError(f"leaf truncated: body needs {body_len} bytes")
    (aux_len,) = AUX_LEN.unpack_from(raw, body_end)
    if body_end + AUX_LEN.size + aux_len != len(raw):
        raise EncodingError(
            f"leaf length {len(raw)} does not match header (body {body_len}, aux {aux_len})"
        )
    aux = raw[body_end + AUX_LEN.size :]
    for _ in iter_aux(aux):  # validates the TLV structure
        pass
    return Leaf(event, result, index, ts, raw[LEAF_HEADER_SIZE:body_end], aux)


# -- block headers -------------------------------------------------------------------------------

# version, height, timestamp_ns, first_index, leaf_count, tree_size, prev_block_hash, merkle_root,
# chain_head, state_hash, ruleset_hash
BLOCK_HEADER: Final = struct.Struct("<BQQQIQ32s32s32s32s32s")
BLOCK_HEADER_SIZE: Final = BLOCK_HEADER.size  # 197


@dataclass(frozen=True, slots=True)
class BlockHeader:
    height: int
    timestamp_ns: int
    first_index: int
    leaf_count: int
    tree_size: int
    prev_block_hash: bytes
    merkle_root: bytes
    chain_head: bytes
    state_hash: bytes
    ruleset_hash: bytes = ZERO32

    def encode(self) -> bytes:
        return BLOCK_HEADER.pack(
            FORMAT_VERSION, self.height, self.timestamp_ns, self.first_index, self.leaf_count,
            self.tree_size, self.prev_block_hash, self.merkle_root, self.chain_head, self.state_hash,
            self.ruleset_hash,
        )

    @staticmethod
    def decode(raw: bytes) -> BlockHeader:
        _check_len(raw, BLOCK_HEADER_SIZE, "block header")
        version, *fields = BLOCK_HEADER.unpack(raw)
        if version != FORMAT_VERSION:
            raise EncodingError(f"block header version {version} is unknown")
        return BlockHeader(*fields)


# -- block proposals (what consensus replicates) ---------------------------------------------------

PROPOSAL_HEADER: Final = struct.Struct("<BQI")  # version, timestamp_ns, batch_count
BATCH_HEADER: Final = struct.Struct("<BIB4s")  # kind, count, signed, signer_key_id
SIGNED_RECORDS: Final = 1  # `signed`: one PSP signature per record follows the records
SIGNED_GROUPS: Final = 2  # `signed`: u16 group size, then one PSP signature per signing group
_SIGN_GROUP: Final = struct.Struct("<H")


@dataclass(frozen=True, slots=True)
class Batch:
    """A client's batch of records of one kind, kept as the canonical bytes it arrived as."""

    kind: EventKind
    records: bytes
    signatures: bytes = b""  # empty, or count x 64 bytes
    signer_key_id: bytes = b""  # 4 bytes when signatures are present
    # 0: ``signatures`` holds one signature per record; G >= 1: one per group of G consecutive records
    # (the last may be shorter) over the group's Merkle root (ledger/psp_group.py)
    sign_group: int = 0

    @property
    def count(self) -> int:
        size = RECORD_SIZE.get(self.kind)
        return 1 if size is None else len(self.records) // size


@dataclass(frozen=True, slots=True)
class Proposal:
    """One block to apply: the leader-assigned timestamp and the batches, in order."""

    timestamp_ns: int
    batches: tuple[Batch, ...]

    @property
    def item_count(self) -> int:
        return sum(b.count for b in self.batches)


def validate_batch(kind: int, records: bytes, signatures: bytes, signer_key_id: bytes,
                   node_proposed: bool = False, sign_group: int = 0) -> Batch:
    """Check a batch's framing (not its business content); raise EncodingError with the reason.
    ``node_proposed``: also accept the kinds only a node proposes (a proposal being decoded)."""
    try:
        event = EventKind(kind)
    except ValueError:
        raise EncodingError(f"unknown event kind {kind}; use CREATE_ACCOUNTS or CREATE_TRANSFERS") from None
    if event in NODE_ONLY_KINDS and not node_proposed:
        raise EncodingError(f"event kind {event.name} cannot be submitted by clients (the node proposes it: "
                            "ERASE_SUBJECT through the Vault service, KEY_ROTATION on `sovledger keys rotate`)")
    if event == EventKind.AGGREGATE:
        if signatures or signer_key_id or not 0 < len(records) <= AGGREGATE_BYTES_MAX:
            raise EncodingError(f"an AGGREGATE batch is one unsigned record of 1..{AGGREGATE_BYTES_MAX} bytes")
        return Batch(event, records)
    if event == EventKind.SETTLEMENT:
        return _settlement_batch(records, signatures, signer_key_id)
    if event in VARIABLE_KINDS:
        if signatures or signer_key_id or sign_group:
            raise EncodingError("a DEPLOY_RULESET record carries its operator signature inside the record")
        if not DEPLOY_HEADER_SIZE < len(records) <= DEPLOY_HEADER_SIZE + RULESET_BYTES_MAX:
            raise EncodingError(
                f"DEPLOY_RULESET record is {len(records)} bytes; expected key id (4) + signature (64) + "
                f"a canonical rule set of 1..{RULESET_BYTES_MAX} bytes"
            )
        return Batch(event, records)
    size = RECORD_SIZE.get(event)
    if size is None:
        raise EncodingError(f"event kind {event.name} cannot be submitted by clients")
    if not records:
        raise EncodingError("batch is empty: send between 1 and 8189 records")
    if len(records) % size:
        raise EncodingError(
            f"records is {len(records)} bytes, not a multiple of the {size}-byte {event.name} record"
        )
    count = len(records) // size
    if count > BATCH_ITEMS_MAX:
        raise EncodingError(f"batch has {count} records, at most {BATCH_ITEMS_MAX} allowed")
    if event == EventKind.OBLIGATION and not node_proposed:
        _client_obligations(records, count)
    _check_signatures(count, signatures, signer_key_id, sign_group)
    return Batch(event, records, signatures, signer_key_id if signatures else b"", sign_group if signatures else 0)


def _check_signatures(count: int, signatures: bytes, signer_key_id: bytes, sign_group: int) -> None:
    if not 0 <= sign_group <= BATCH_ITEMS_MAX:
        raise EncodingError(f"sign_group is {sign_group}: use 0 (one signature per record) or a group size "
                            f"of 1..{BATCH_ITEMS_MAX} records")
    if not signatures:
        if signer_key_id or sign_group:
            raise EncodingError("signer_key_id or sign_group given without signatures")
        return
    groups = -(-count // sign_group) if sign_group else count
    if len(signatures) != groups * SIGNATURE_SIZE:
        per = f"group of up to {sign_group} records" if sign_group else "record"
        raise EncodingError(f"signatures is {len(signatures)} bytes, expected {groups} x {SIGNATURE_SIZE} "
                            f"(one signature per {per}, {count} records)")
    if len(signer_key_id) != KEY_ID_SIZE:
        raise EncodingError("signer_key_id must be 4 bytes when signatures are present")


def _settlement_batch(records: bytes, signatures: bytes, signer_key_id: bytes) -> Batch:
    if signatures or signer_key_id or not records.startswith(SETTLEMENT_MAGIC) or len(records) > SETTLEMENT_BYTES_MAX:
        raise EncodingError("a SETTLEMENT batch is one unsigned canonical settlement batch (docs/formats.md §16)")
    return Batch(EventKind.SETTLEMENT, records)


def _client_obligations(records: bytes, count: int) -> None:
    for i in range(count):
        if records[i * OBLIGATION_RECORD_SIZE + OBLIGATION_ROLE_OFFSET] != 1:
            raise EncodingError(f"OBLIGATION record {i}: a PSP submits role 1 (INITIATE) only; ACCEPT and RESOLVE "
                                "records are proposed by the regions' nodes")


def encode_proposal(p: Proposal) -> bytes:
    parts = [PROPOSAL_HEADER.pack(FORMAT_VERSION, p.timestamp_ns, len(p.batches))]
    for b in p.batches:
        signed = (SIGNED_GROUPS if b.sign_group else SIGNED_RECORDS) if b.signatures else 0
        parts.append(BATCH_HEADER.pack(b.kind, b.count, signed, b.signer_key_id.ljust(4, b"\x00")))
        if b.kind in VARIABLE_KINDS:
            parts.append(_VAR_LEN.pack(len(b.records)))
        parts.append(b.records)
        if signed == SIGNED_GROUPS:
            parts.append(_SIGN_GROUP.pack(b.sign_group))
        if signed:
            parts.append(b.signatures)
    return b"".join(parts)


def decode_proposal(raw: bytes) -> Proposal:
    if len(raw) < PROPOSAL_HEADER.size:
        raise EncodingError("proposal shorter than its header")
    version, ts, nbatches = PROPOSAL_HEADER.unpack_from(raw)
    if version != FORMAT_VERSION:
        raise EncodingError(f"proposal version {version} is unknown")
    pos = PROPOSAL_HEADER.size
    batches = []
    for _ in range(nbatches):
        if pos + BATCH_HEADER.size > len(raw):
            raise EncodingError("proposal truncated in a batch header")
        kind, count, signed, key_id = BATCH_HEADER.unpack_from(raw, pos)
        pos += BATCH_HEADER.size
        if signed not in (0, SIGNED_RECORDS, SIGNED_GROUPS):
            raise EncodingError(f"proposal batch has unknown signature mode {signed}")
        try:
            event = EventKind(kind)
        except ValueError:
            raise EncodingError(f"proposal batch has unknown event kind {kind}") from None
        if event in VARIABLE_KINDS:
            if count != 1 or pos + _VAR_LEN.size > len(raw):
                raise EncodingError("variable-length batch must hold exactly one length-prefixed record")
            (var_len,) = _VAR_LEN.unpack_from(raw, pos)
            pos += _VAR_LEN.size
            size = var_len
        else:
            size = RECORD_SIZE.get(event, 0)
        end = pos + count * size
        records = raw[pos:end]
        pos = end
        sigs, group = b"", 0
        if signed == SIGNED_GROUPS:
            if pos + _SIGN_GROUP.size > len(raw):
                raise EncodingError("proposal truncated in a batch's sign_group")
            (group,) = _SIGN_GROUP.unpack_from(raw, pos)
            pos += _SIGN_GROUP.size
        if signed:
            nsig = -(-count // group) if group else count
            sigs = raw[pos : pos + nsig * SIGNATURE_SIZE]
            pos += nsig * SIGNATURE_SIZE
        if pos > len(raw):
            raise EncodingError("proposal truncated in batch records")
        batches.append(validate_batch(kind, records, sigs, key_id if signed else b"", node_proposed=True,
                                      sign_group=group))
    if pos != len(raw):
        raise EncodingError(f"proposal has {len(raw) - pos} trailing bytes")
    return Proposal(ts, tuple(batches))
