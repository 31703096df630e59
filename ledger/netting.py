"""Cross-region obligations and multilateral netting: pure, bytes in, typed verdicts out.

A cross-region payment leaves one *obligation* behind: region ``debtor`` owes region ``creditor``
``amount`` minor units of ``ledger``. The obligation is the only thing about the payment that
crosses a border (docs/federation.md): id, amount, ledger, the two region names, the payee's
opaque account number and the deadline. The payer's account never leaves its region.

A settlement cycle gathers open obligations into a :class:`SettlementBatch`: the obligations
(gross) and the net position of every (ledger, region) — what the region receives minus what it
pays. ``verify_settlement`` answers "do these obligations net to this batch" for the node that
is asked to append a batch and for the auditor, with the same code. ``net_transfers`` turns the
positions into the few transfers a settlement agent actually makes.

Byte forms: docs/formats.md §16. Nothing here reads a clock, a file or the network.
"""

from __future__ import annotations

import enum
import re
import struct
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

import blake3

from ledger.types import U64_MAX, U128_MAX

REGION_SIZE: Final = 16
REGION_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,15}")
ZERO16: Final = bytes(16)
MAX16: Final = b"\xff" * 16

# --- the obligation (the border message): 96 bytes ------------------------------------------------
OBLIGATION_STRUCT: Final = struct.Struct("<16sQQI4x16s16s16sQ")
OBLIGATION_SIZE: Final = OBLIGATION_STRUCT.size  # 96


class Role(enum.IntEnum):
    """What an OBLIGATION record (leaf kind 9) does in the log that holds it."""

    INITIATE = 1  # debtor region, from a PSP: the payer's leg, pending
    ACCEPT = 2  # creditor region, proposed by its node: the decision (payee credited, or refused)
    RESOLVE = 3  # debtor region, proposed by its node: the payer's leg posted or voided after the decision


class Verdict(enum.IntEnum):
    """The creditor region's decision as the debtor region records it (RESOLVE records)."""

    NONE = 0
    ACCEPTED = 1
    REFUSED = 2


class ObligationStatus(enum.IntEnum):
    """Status of an obligation in one region's ``obligations`` table."""

    PENDING = 1  # debtor: initiated, waiting for the creditor's decision
    OPEN = 2  # accepted and not settled yet
    VOIDED = 3  # refused by the creditor region (or initiated and then voided)
    SETTLED = 4  # cleared by a settlement batch


class NettingError(ValueError):
    """A byte form does not decode; the message says which field and why."""


def region_bytes(name: str) -> bytes:
    """A region name as its 16-byte field: ASCII ``[A-Za-z0-9][A-Za-z0-9_-]{0,15}``, zero padded."""
    if not REGION_RE.fullmatch(name):
        raise NettingError(f"region name {name!r} must be 1-16 characters of A-Z, a-z, 0-9, '-' and '_' "
                           "(starting with a letter or digit) to take part in cross-region payments")
    return name.encode("ascii").ljust(REGION_SIZE, b"\x00")


def region_name(raw: bytes) -> str:
    name = raw.rstrip(b"\x00")
    try:
        text = name.decode("ascii")
    except UnicodeDecodeError:
        raise NettingError("region field is not ASCII") from None
    if not REGION_RE.fullmatch(text) or raw != region_bytes(text):
        raise NettingError(f"region field {raw!r} is not a zero-padded region name")
    return text


@dataclass(frozen=True, slots=True)
class Obligation:
    """Region ``debtor`` owes region ``creditor`` ``amount`` of ``ledger`` for payment ``id``."""

    id: bytes  # 16 bytes, the payment's id in both regions
    amount: int
    ledger: int
    debtor: str
    creditor: str
    payee: bytes  # 16 bytes: the payee's account id in the creditor region (an opaque number)
    deadline_ns: int  # the creditor region accepts only in a block whose time is below this

    def encode(self) -> bytes:
        if len(self.id) != 16 or len(self.payee) != 16:
            raise NettingError("obligation id and payee must be 16 bytes")
        if not 0 < self.amount <= U128_MAX or not 0 < self.ledger <= 0xFFFFFFFF:
            raise NettingError("obligation amount and ledger must be positive and fit u128 / u32")
        if not 0 <= self.deadline_ns <= U64_MAX:
            raise NettingError("obligation deadline must fit u64")
        if self.debtor == self.creditor:
            raise NettingError("an obligation is between two different regions")
        return OBLIGATION_STRUCT.pack(self.id, self.amount & U64_MAX, self.amount >> 64, self.ledger,
                                      region_bytes(self.debtor), region_bytes(self.creditor), self.payee,
                                      self.deadline_ns)


def decode_obligation(raw: bytes) -> Obligation:
    if len(raw) != OBLIGATION_SIZE:
        raise NettingError(f"obligation is {len(raw)} bytes, expected {OBLIGATION_SIZE}")
    if raw[36:40] != bytes(4):
        raise NettingError("obligation reserved bytes 36..40 must be zero")
    oid, lo, hi, ledger, debtor, creditor, payee, deadline = OBLIGATION_STRUCT.unpack(raw)
    ob = Obligation(oid, lo | (hi << 64), ledger, region_name(debtor), region_name(creditor), payee, deadline)
    if oid in (ZERO16, MAX16) or ob.amount == 0 or ledger == 0 or ob.debtor == ob.creditor:
        raise NettingError("obligation id, amount, ledger or regions are not valid")
    return ob


# --- the OBLIGATION record (leaf kind 9): 144 bytes -----------------------------------------------
RECORD_TAIL: Final = struct.Struct("<BBHII4x16sQ8x")  # role, verdict, reserved, psp, window_s, payer, evidence
OBLIGATION_RECORD_SIZE: Final = OBLIGATION_SIZE + RECORD_TAIL.size  # 144
WINDOW_S_MAX: Final = 7 * 86400


@dataclass(frozen=True, slots=True)
class ObligationRecord:
    """The body of an OBLIGATION leaf: the obligation plus what this log does with it."""

    role: Role
    obligation: bytes  # 96 bytes; in an INITIATE record ``deadline_ns`` is 0 (the ledger sets it)
    verdict: Verdict = Verdict.NONE
    psp_id: int = 0
    window_s: int = 0  # INITIATE: seconds the creditor region has to decide
    payer: bytes = ZERO16  # INITIATE: the payer's account; zero in ACCEPT and RESOLVE (provable abroad)
    evidence_index: int = 0  # RESOLVE: the creditor region's leaf index holding its decision

    def encode(self) -> bytes:
        return self.obligation + RECORD_TAIL.pack(self.role, self.verdict, 0, self.psp_id, self.window_s,
                                                  self.payer, self.evidence_index)


def decode_record(raw: bytes) -> ObligationRecord:
    """Framing of a kind-9 record (reserved bytes zero, known role and verdict); not its business content."""
    if len(raw) != OBLIGATION_RECORD_SIZE:
        raise NettingError(f"obligation record is {len(raw)} bytes, expected {OBLIGATION_RECORD_SIZE}")
    role, verdict, reserved, psp, window, payer, evidence = RECORD_TAIL.unpack_from(raw, OBLIGATION_SIZE)
    if reserved or raw[108:112] != bytes(4) or raw[136:] != bytes(8):
        raise NettingError("obligation record reserved bytes must be zero")
    try:
        return ObligationRecord(Role(role), raw[:OBLIGATION_SIZE], Verdict(verdict), psp, window, payer, evidence)
    except ValueError:
        raise NettingError(f"obligation record role {role} / verdict {verdict} is unknown") from None


def initiate_record(obligation: Obligation, payer: bytes, psp_id: int, window_s: int) -> bytes:
    """What a PSP submits to its home (debtor) region for a cross-region payment."""
    ob = Obligation(obligation.id, obligation.amount, obligation.ledger, obligation.debtor, obligation.creditor,
                    obligation.payee, 0)
    return ObligationRecord(Role.INITIATE, ob.encode(), psp_id=psp_id, window_s=window_s, payer=payer).encode()


def accept_record(obligation: bytes) -> bytes:
    """What the creditor region's node proposes for an obligation it received (no payer: it never leaves)."""
    return ObligationRecord(Role.ACCEPT, obligation).encode()


def resolve_record(obligation: bytes, accepted: bool, evidence_index: int) -> bytes:
    """What the debtor region's node proposes once the creditor region's decision is proved. It names no
    payer (the ledger has it from the INITIATE entry), so the leaf can be proved to other regions."""
    verdict = Verdict.ACCEPTED if accepted else Verdict.REFUSED
    return ObligationRecord(Role.RESOLVE, obligation, verdict, evidence_index=evidence_index).encode()


# --- clearing and settlement accounts -----------------------------------------------------------
def clearing_account_id(direction: str, counterparty: str, ledger: int) -> bytes:
    """The clearing account for a counterparty region: ``due-to`` (debtor side) or ``due-from`` (creditor side).

    ``BLAKE3(0x07 ‖ direction ‖ region (16) ‖ ledger u32 LE)[:16]``; the operator creates it as an ordinary
    account (code and flags of its choosing) before the first cross-region payment with that region.
    """
    if direction not in ("due-to", "due-from"):
        raise NettingError("direction is 'due-to' or 'due-from'")
    h = blake3.blake3(b"\x07" + direction.encode() + region_bytes(counterparty) + ledger.to_bytes(4, "little"))
    return h.digest()[:16]


def settlement_account_id(ledger: int) -> bytes:
    """The region's account at the settlement agent for ``ledger``: ``BLAKE3(0x07 ‖ "settlement" ‖ ledger)[:16]``."""
    return blake3.blake3(b"\x07settlement" + ledger.to_bytes(4, "little")).digest()[:16]


def is_region_account(record: bytes) -> bool:
    """Whether a 64-byte account record creates one of the region's own netting accounts: the settlement
    account of its ledger, or a clearing account whose counterparty region is named in ``user_data``
    (bytes 16..32, the zero-padded region name). Operators create these (node/psp_guard.py)."""
    aid, user_data, ledger = record[:16], record[16:32], int.from_bytes(record[32:36], "little")
    if aid == settlement_account_id(ledger):
        return True
    try:
        region = region_name(user_data)
    except NettingError:
        return False
    return aid in (clearing_account_id("due-to", region, ledger), clearing_account_id("due-from", region, ledger))


# --- netting -------------------------------------------------------------------------------------
PositionKey = tuple[int, str]  # (ledger, region)


def net_positions(obligations: Iterable[Obligation]) -> dict[PositionKey, int]:
    """Multilateral net position per (ledger, region): received minus paid. Zero positions are dropped."""
    pos: dict[PositionKey, int] = defaultdict(int)
    for ob in obligations:
        pos[(ob.ledger, ob.creditor)] += ob.amount
        pos[(ob.ledger, ob.debtor)] -= ob.amount
    return {k: v for k, v in sorted(pos.items(), key=lambda kv: (kv[0][0], region_bytes(kv[0][1]))) if v}


@dataclass(frozen=True, slots=True)
class NetTransfer:
    """One transfer the settlement agent makes: ``payer`` region pays ``payee`` region."""

    ledger: int
    payer: str
    payee: str
    amount: int


def net_transfers(positions: Mapping[PositionKey, int]) -> list[NetTransfer]:
    """Deterministic transfers realising the positions: at most (regions − 1) per ledger.

    Largest payer pays largest receiver first; ties by region name. Every amount is positive.
    """
    out: list[NetTransfer] = []
    for ledger in sorted({k[0] for k in positions}):
        mine = [(v, r) for (lg, r), v in positions.items() if lg == ledger]
        pay = sorted(((-v, r) for v, r in mine if v < 0), key=lambda x: (-x[0], x[1]))
        get = sorted(((v, r) for v, r in mine if v > 0), key=lambda x: (-x[0], x[1]))
        i = j = 0
        pay_left = [a for a, _ in pay]
        get_left = [a for a, _ in get]
        while i < len(pay) and j < len(get):
            amount = min(pay_left[i], get_left[j])
            out.append(NetTransfer(ledger, pay[i][1], get[j][1], amount))
            pay_left[i] -= amount
            get_left[j] -= amount
            i += pay_left[i] == 0
            j += get_left[j] == 0
    return out


def open_in_both(as_debtor: Iterable[bytes], as_creditor: Iterable[bytes]) -> list[Obligation]:
    """What a settlement cycle nets: obligations its debtor region and its creditor region both report open,
    byte for byte the same (``as_debtor``/``as_creditor``: every region's open lists, joined), sorted by id."""
    creditor_side = set(as_creditor)
    out = {}
    for raw in as_debtor:
        if raw in creditor_side:
            ob = decode_obligation(raw)
            out[ob.id] = ob
    return [out[k] for k in sorted(out)]


# --- the settlement batch (leaf kind 10) ---------------------------------------------------------
SETTLEMENT_MAGIC: Final = b"sovledger/settlement/v1\n"
_COUNTS: Final = struct.Struct("<QI")  # cycle, obligation count
_POSITION: Final = struct.Struct("<I16sBQQ")  # ledger, region, sign (1 = negative), magnitude u128
SETTLEMENT_OBLIGATIONS_MAX: Final = 8189  # as many as records in one batch
SETTLEMENT_BYTES_MAX: Final = len(SETTLEMENT_MAGIC) + _COUNTS.size + 4 + SETTLEMENT_OBLIGATIONS_MAX * (
    OBLIGATION_SIZE + 2 * _POSITION.size)


@dataclass(frozen=True, slots=True)
class SettlementBatch:
    """A cycle's obligations (sorted by id bytes) and net positions (sorted by ledger, region bytes)."""

    cycle: int
    obligations: tuple[Obligation, ...]
    positions: tuple[tuple[int, str, int], ...]  # (ledger, region, net): net = received − paid, never 0

    def encode(self) -> bytes:
        parts = [SETTLEMENT_MAGIC, _COUNTS.pack(self.cycle, len(self.obligations))]
        parts += [ob.encode() for ob in self.obligations]
        parts.append(len(self.positions).to_bytes(4, "little"))
        for ledger, region, net in self.positions:
            mag = abs(net)
            parts.append(_POSITION.pack(ledger, region_bytes(region), 1 if net < 0 else 0, mag & U64_MAX, mag >> 64))
        return b"".join(parts)

    @property
    def digest(self) -> bytes:
        """``BLAKE3(0x08 ‖ canonical batch)``; its first 16 bytes are the batch id."""
        return settlement_digest(self.encode())

    @property
    def batch_id(self) -> bytes:
        return self.digest[:16]


def settlement_digest(canonical: bytes) -> bytes:
    return blake3.blake3(b"\x08" + canonical).digest()


def build_settlement(cycle: int, obligations: Iterable[Obligation]) -> SettlementBatch:
    """The canonical batch for these obligations (duplicates by id refused)."""
    obs = sorted(obligations, key=lambda o: o.id)
    if len({o.id for o in obs}) != len(obs):
        raise NettingError("an obligation id appears twice")
    if not obs or len(obs) > SETTLEMENT_OBLIGATIONS_MAX:
        raise NettingError(f"a settlement batch holds 1..{SETTLEMENT_OBLIGATIONS_MAX} obligations")
    positions = tuple((lg, r, v) for (lg, r), v in net_positions(obs).items())
    return SettlementBatch(cycle, tuple(obs), positions)


def decode_settlement(raw: bytes) -> SettlementBatch:
    """Parse a batch; refuse anything that is not exactly its own canonical encoding."""
    verdict = _structure(raw)
    if verdict.failure is not None or verdict.batch is None:
        raise NettingError(verdict.detail)
    return verdict.batch


def _parse(raw: bytes) -> SettlementBatch:
    """The fields, without the canonical-order checks."""
    if not raw.startswith(SETTLEMENT_MAGIC) or len(raw) > SETTLEMENT_BYTES_MAX:
        raise NettingError("not a sovledger settlement batch (magic or size)")
    pos = len(SETTLEMENT_MAGIC)
    if len(raw) < pos + _COUNTS.size:
        raise NettingError("settlement batch truncated")
    cycle, n = _COUNTS.unpack_from(raw, pos)
    pos += _COUNTS.size
    if not 0 < n <= SETTLEMENT_OBLIGATIONS_MAX or len(raw) < pos + n * OBLIGATION_SIZE + 4:
        raise NettingError(f"settlement batch obligation count {n} is out of range or truncated")
    obs = tuple(decode_obligation(raw[pos + i * OBLIGATION_SIZE : pos + (i + 1) * OBLIGATION_SIZE]) for i in range(n))
    pos += n * OBLIGATION_SIZE
    m = int.from_bytes(raw[pos : pos + 4], "little")
    pos += 4
    if len(raw) != pos + m * _POSITION.size:
        raise NettingError("settlement batch positions are truncated or followed by extra bytes")
    positions = []
    for i in range(m):
        ledger, region, sign, lo, hi = _POSITION.unpack_from(raw, pos + i * _POSITION.size)
        if sign > 1:
            raise NettingError("position sign byte must be 0 or 1")
        mag = lo | (hi << 64)
        positions.append((ledger, region_name(region), -mag if sign else mag))
    return SettlementBatch(cycle, obs, tuple(positions))


class NettingFailure(enum.IntEnum):
    MALFORMED = 1  # does not decode, or not canonical
    DUPLICATE_OBLIGATION = 2
    UNSORTED = 3
    POSITIONS_MISMATCH = 4  # the positions are not the net of the obligations
    NOT_ZERO_SUM = 5  # a ledger's positions do not sum to zero
    UNKNOWN_OBLIGATION = 6  # the verifier's own record has no such obligation
    OBLIGATION_DIFFERS = 7  # the verifier's own record of the obligation differs


@dataclass(frozen=True, slots=True)
class NettingVerdict:
    """The answer to "do these obligations net to this batch"."""

    failure: NettingFailure | None
    detail: str = ""
    batch: SettlementBatch | None = None
    gross_count: int = 0  # obligations in the batch
    net_count: int = 0  # transfers the settlement agent makes (``net_transfers``)

    @property
    def ok(self) -> bool:
        return self.failure is None


def verify_settlement(raw: bytes, known: Mapping[bytes, Obligation] | None = None) -> NettingVerdict:
    """Check a batch's bytes: canonical, obligations unique and sorted, positions = their net, Σ = 0 per ledger.

    ``known``: the verifier's own record of obligations by id (a region's table, or what the auditor
    proved from both logs); each of the batch's obligations must be in it, byte for byte equal.
    """
    structure = _structure(raw)
    if structure.failure is not None or structure.batch is None:
        return structure
    batch = structure.batch
    sums: dict[int, int] = defaultdict(int)
    for ledger, _region, net in batch.positions:
        sums[ledger] += net
    for ledger, total in sorted(sums.items()):
        if total:
            return NettingVerdict(NettingFailure.NOT_ZERO_SUM, f"ledger {ledger}: positions sum to {total}", batch)
    expected = tuple((lg, r, v) for (lg, r), v in net_positions(batch.obligations).items())
    if expected != batch.positions:
        return NettingVerdict(NettingFailure.POSITIONS_MISMATCH, "positions are not the net of the obligations", batch)
    if known is not None:
        for ob in batch.obligations:
            mine = known.get(ob.id)
            if mine is None:
                return NettingVerdict(NettingFailure.UNKNOWN_OBLIGATION, f"obligation {ob.id.hex()} is unknown", batch)
            if mine != ob:
                return NettingVerdict(NettingFailure.OBLIGATION_DIFFERS, f"obligation {ob.id.hex()} differs", batch)
    return NettingVerdict(None, "", batch, len(batch.obligations), len(net_transfers(dict(
        ((lg, r), v) for lg, r, v in batch.positions))))


def _structure(raw: bytes) -> NettingVerdict:
    """Decode and check the canonical form: obligations unique and sorted by id, then byte-exact re-encoding."""
    try:
        batch = _parse(raw)
    except NettingError as exc:
        return NettingVerdict(NettingFailure.MALFORMED, str(exc))
    ids = [o.id for o in batch.obligations]
    if len(set(ids)) != len(ids):
        return NettingVerdict(NettingFailure.DUPLICATE_OBLIGATION, "an obligation id appears twice", batch)
    if ids != sorted(ids):
        return NettingVerdict(NettingFailure.UNSORTED, "obligations are not sorted by id bytes", batch)
    try:
        canonical = batch.encode() == raw and all(net for _lg, _r, net in batch.positions) and \
            [(lg, region_bytes(r)) for lg, r, _n in batch.positions] == sorted(
                (lg, region_bytes(r)) for lg, r, _n in batch.positions)
    except NettingError as exc:
        return NettingVerdict(NettingFailure.MALFORMED, str(exc), batch)
    if not canonical:
        return NettingVerdict(NettingFailure.MALFORMED, "positions are not in canonical form "
                              "(sorted by ledger and region, no zero position, no negative zero)", batch)
    return NettingVerdict(None, "", batch)
