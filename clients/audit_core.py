"""The auditor's pure verification core: typed failures, the full-log verifier, the export format.

No I/O here besides reading/writing an export file object handed in: everything the verifier
checks arrives as canonical bytes (leaves, block headers, signed notes) and is re-derived
independently from ``ledger.codec`` layouts and ``ledger.hashing`` domains. Imports only the pure
ledger modules (tests/test_layers.py).

What ``LogVerifier`` recomputes, per block (docs/auditor.md, "What each check proves"):
leaf framing and index/timestamp continuity → leaf hashes → hash chain → RFC 6962 tree (compact
range) → the block header (chaining, continuity, merkle root, chain head, state hash, rule set
hash, block hash) → balances replayed from the *recorded results* (effects only, never decisions)
→ at the end the signed checkpoint (size, root, ``block``/``chain``/``time`` lines).
"""

from __future__ import annotations

import base64
import json
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Final

import blake3
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from ledger.codec import (
    AUX_TAG_PSP_SIGNATURE,
    AUX_TAG_RECONCILE,
    AUX_TAG_RULE_OUTCOME,
    BLOCK_HEADER,
    BLOCK_HEADER_SIZE,
    FORMAT_VERSION,
    LEAF_HEADER,
    LEAF_HEADER_SIZE,
    ZERO32,
    EncodingError,
    decode_account_state,
    decode_leaf,
    iter_aux,
)
from ledger.hashing import EMPTY_ROOT, GENESIS_LINK
from ledger.note import Checkpoint, Verifier
from ledger.types import U64_MAX, EventKind, Result

_b3 = blake3.blake3

# Exit codes, one per failure class (docs/auditor.md).
EXIT_OK: Final = 0
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3
EXIT_BAD_SIGNATURE: Final = 10
EXIT_INCONSISTENT: Final = 11
EXIT_LOG_MISMATCH: Final = 12
EXIT_BLOCK_MISMATCH: Final = 13
EXIT_BALANCE_MISMATCH: Final = 14
EXIT_PSP_SIGNATURE: Final = 15

# Rule action numbers as recorded in aux tag 2 (ledger/rules/model.py Action; fixed on the wire).
_ACTION_HOLD: Final = 3
_F_PENDING: Final = 2
_F_POST: Final = 4
_F_VOID: Final = 8
_RULESET_DOMAIN: Final = b"\x05"
_DEPLOY_HEADER: Final = 4 + 64

# from the body start: id, debit, credit, amount lo, amount hi, pending id, (skip 94), flags
_XFER: Final = struct.Struct("<16s16s16sQQ16s94xH")
# the whole 202-byte leaf of a create-transfer without aux: version|kind|result (one u32), index, timestamp,
# body_len, debit, credit, amount lo/hi, flags, aux_len
_FAST: Final = struct.Struct("<IQQI16x16s16sQQ16x94xHH")
_BODY_SIZE: Final = {1: 64, 2: 176, 3: 16, 5: 96, 6: 176}
_NO_AUX: Final = b"\x00\x00"
_U64_MASK: Final = U64_MAX


def ab(raw: bytes | None, n: int = 16) -> str:
    """Hex-abbreviated bytes for messages: the first ``n`` hex digits and an ellipsis."""
    if raw is None:
        return "-"
    h = raw.hex()
    return h if len(h) <= n else h[:n] + "…"


# -- typed failures ---------------------------------------------------------------------------------


class AuditFailure(Exception):
    """A verification failure. ``exit_code`` is the class; ``data`` says where and what mismatched."""

    exit_code = 1
    kind = "failure"

    def __init__(self, message: str, **data: Any) -> None:
        self.message = message
        self.data = data
        super().__init__(message)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"class": type(self).__name__, "kind": self.kind, "exit_code": self.exit_code,
                               "message": self.message}
        for k, v in self.data.items():
            out[k] = v.hex() if isinstance(v, bytes) else v
        return out


class UsageError(AuditFailure):
    exit_code, kind = EXIT_USAGE, "usage"


class Unreachable(AuditFailure):
    exit_code, kind = EXIT_UNREACHABLE, "unreachable"


class CheckpointSignatureError(AuditFailure):
    """The checkpoint is not signed by a trusted node key (or a signature is bad, or the origin differs)."""

    exit_code, kind = EXIT_BAD_SIGNATURE, "bad_signature"


class InconsistentLog(AuditFailure):
    """The log is not an append-only extension of what was trusted or seen elsewhere."""

    exit_code, kind = EXIT_INCONSISTENT, "inconsistent"


class RollbackDetected(InconsistentLog):
    kind = "rollback"


class ForkDetected(InconsistentLog):
    kind = "fork"


class LogMismatch(AuditFailure):
    """A leaf, the hash chain or the Merkle tree does not match what was committed to."""

    exit_code, kind = EXIT_LOG_MISMATCH, "log_mismatch"


class LeafMalformed(LogMismatch):
    kind = "leaf_malformed"


class LeafMismatch(LogMismatch):
    kind = "leaf_mismatch"


class TreeMismatch(LogMismatch):
    kind = "tree_mismatch"


class ChainMismatch(LogMismatch):
    kind = "chain_mismatch"


class LogTruncated(LogMismatch):
    kind = "truncated"


class BlockHeaderMismatch(AuditFailure):
    exit_code, kind = EXIT_BLOCK_MISMATCH, "block_header_mismatch"


class BalanceMismatch(AuditFailure):
    exit_code, kind = EXIT_BALANCE_MISMATCH, "balance_mismatch"


class PspSignatureInvalid(AuditFailure):
    exit_code, kind = EXIT_PSP_SIGNATURE, "psp_signature_invalid"


# -- the verifier -----------------------------------------------------------------------------------

# A locator names the leaves of a block that do not verify against the signed tree (online: with
# inclusion proofs from the node). Given (first index, leaf hashes of the block) it returns indexes.
Locator = Callable[[int, list[bytes]], list[int]]


@dataclass(slots=True)
class VerifyStats:
    leaves: int = 0
    blocks: int = 0
    psp_verified: int = 0
    psp_unknown: Counter[str] = field(default_factory=Counter)


class LogVerifier:
    """Feed blocks in height order with their leaves; raises a typed ``AuditFailure`` at the first problem.

    ``psp_keys``: trusted PSP verifiers (key id → verifier). ``checkpoints``: extra (size, root)
    pairs to check on the way (the auditor's last trusted checkpoint: offline consistency).
    """

    def __init__(self, psp_keys: Sequence[Verifier] = (), verify_psp: bool = True,
                 checkpoints: Iterable[tuple[int, bytes]] = (), locator: Locator | None = None) -> None:
        self.psp = {v.key_id: VerifyKey(v.public_key) for v in psp_keys}
        self.psp_names = {v.key_id: v.name for v in psp_keys}
        self.verify_psp = verify_psp
        self.locator = locator
        self.targets = dict(checkpoints)
        # running state
        self.size = 0
        self.stack: list[bytes] = []
        self.link = GENESIS_LINK
        self.last_ts = 0
        self.height = 0
        self.block_hash = ZERO32
        self.state_hash = ZERO32
        self.ruleset_hash = ZERO32
        self.next_ruleset = ZERO32
        self.head_ts = 0
        # replayed balances: id -> [balances, balances at the last state hash (None: new), id ‖ record, ts u64 LE].
        # The four u128 balances live in ONE int, in account-state order: debits_pending (bits 0-127),
        # debits_posted (128-255), credits_pending (256-383), credits_posted (384-511); so the state hash
        # encodes them with one to_bytes(64) and the hot path adds ``amount << 128`` / ``amount << 384``.
        self.accounts: dict[bytes, list[Any]] = {}
        self.pending: dict[bytes, tuple[bytes, bytes, int]] = {}  # pending id -> (debit, credit, amount)
        self._touched: set[bytes] = set()  # accounts whose balances the current block may have changed
        self.stats = VerifyStats()

    # -- tree ------------------------------------------------------------------------------------

    def root(self) -> bytes:
        stack = self.stack
        if not stack:
            return EMPTY_ROOT
        r = stack[-1]
        for h in reversed(stack[:-1]):
            r = _b3(b"\x01" + h + r).digest()
        return r

    # -- blocks ----------------------------------------------------------------------------------

    def feed_block(self, header_raw: bytes, leaves: Sequence[bytes]) -> None:
        """Verify one block header and its leaves (``leaves`` must be the header's ``leaf_count`` leaves)."""
        if len(header_raw) != BLOCK_HEADER_SIZE:
            raise BlockHeaderMismatch(
                f"block {self.height + 1}: header is {len(header_raw)} bytes, expected {BLOCK_HEADER_SIZE}",
                block=self.height + 1, field="length", expected=BLOCK_HEADER_SIZE, got=len(header_raw))
        (version, height, ts0, first, count, tree_size, prev, mroot, chain, state, ruleset) = \
            BLOCK_HEADER.unpack(header_raw)
        want_h = self.height + 1

        def hdr(field_: str, expected: Any, got: Any, extra: str = "") -> BlockHeaderMismatch:
            e, g = (ab(expected), ab(got)) if isinstance(expected, bytes) else (expected, got)
            return BlockHeaderMismatch(
                f"block {height}: {field_} mismatch: expected {e}, got {g}{extra}",
                block=height, field=field_, expected=expected, got=got)

        if version != FORMAT_VERSION:
            raise hdr("version", FORMAT_VERSION, version)
        if height != want_h:
            raise hdr("height", want_h, height, " (blocks are not consecutive)")
        if prev != self.block_hash:
            raise hdr("prev_block_hash", self.block_hash, prev, " (block hash chain broken)")
        if first != self.size:
            raise hdr("first_index", self.size, first, " (leaf range not continuous)")
        if tree_size != first + count:
            raise hdr("tree_size", first + count, tree_size, " (first_index + leaf_count)")
        if count != len(leaves):
            raise LogTruncated(
                f"block {height}: header says {count} leaves from index {first}, only {len(leaves)} were served",
                block=height, index=first + len(leaves), expected=count, got=len(leaves))
        if ts0 <= self.head_ts:
            raise hdr("timestamp_ns", f"> {self.head_ts}", ts0, " (block timestamps must increase)")
        if ruleset != self.next_ruleset:
            raise hdr("ruleset_hash", self.next_ruleset, ruleset, " (rule set deployed in the log differs)")
        self.ruleset_hash = ruleset
        # leaves, split where a trusted checkpoint's size falls inside this block
        pos = 0
        for target in sorted(t for t in self.targets if first < t <= tree_size):
            self._leaves(leaves[pos : target - first], ts0 + pos)
            pos = target - first
            self._check_target(target)
        self._leaves(leaves[pos:], ts0 + pos)
        if first == tree_size and tree_size in self.targets:
            self._check_target(tree_size)
        # header vs recomputed
        root = self.root()
        if root != mroot:
            lhs = [_b3(b"\x00" + leaf).digest() for leaf in leaves]
            suspects = self.locator(first, lhs) if self.locator and lhs else []
            where = (f"; leaf {suspects[0]}" + (f" (and {len(suspects) - 1} more: {suspects[1:6]})"
                                                  if len(suspects) > 1 else "")
                     + " does not verify against the signed tree") if suspects else ""
            raise TreeMismatch(
                f"block {height}: Merkle root at tree size {tree_size} recomputed from the leaves is {ab(root)}, "
                f"header says {ab(mroot)} (a leaf in [{first}, {tree_size}) differs from what was committed{where})",
                block=height, index=suspects[0] if suspects else None, suspects=suspects, first_index=first,
                tree_size=tree_size, expected=mroot, got=root)
        if chain != self.link:
            raise ChainMismatch(
                f"block {height}: chain head recomputed from leaves [{first}, {tree_size}) is {ab(self.link)}, "
                f"header says {ab(chain)}", block=height, expected=chain, got=self.link)
        got_state = self._state_hash()
        if got_state != state:
            raise BalanceMismatch(
                f"block {height}: state hash recomputed from replayed balances is {ab(got_state)}, header says "
                f"{ab(state)} (balances changed by leaves [{first}, {tree_size}) differ from the node's)",
                block=height, expected=state, got=got_state)
        self.state_hash = state
        self.block_hash = _b3(b"\x03" + header_raw).digest()
        self.height = height
        self.head_ts = self.last_ts if count else ts0
        self.stats.blocks += 1

    def _check_target(self, size: int) -> None:
        want = self.targets[size]
        got = self.root()
        if got != want:
            raise ForkDetected(
                f"the log's root at the trusted size {size} is {ab(got)}, the trusted checkpoint says {ab(want)}: "
                "history before the trusted checkpoint was rewritten", size=size, expected=want, got=got)

    def _state_hash(self) -> bytes:
        """BLAKE3(0x04 ‖ previous ‖ (id ‖ state) for accounts created or changed in the block, by id)."""
        accts = self.accounts
        changed = [a for a in map(accts.__getitem__, sorted(self._touched)) if a[0] != a[1]]
        try:
            # id ‖ record, the four balances as one 64-byte little-endian int, creation timestamp. A
            # negative total makes to_bytes raise; any other out-of-range field changes the state (the
            # node's never are), so it surfaces as a state hash mismatch of this block
            body = b"".join([x for a in changed for x in (a[2], a[0].to_bytes(64, "little"), a[3])])
        except OverflowError:
            self._range_problem()
            raise
        for a in changed:
            a[1] = a[0]
        self._touched = set()
        return _b3(b"\x04" + self.state_hash + body).digest()

    def _range_problem(self) -> None:
        for aid in sorted(self._touched):
            bal = self.accounts[aid][0]
            if bal < 0 or bal >> 512:
                raise BalanceMismatch(
                    f"block {self.height + 1}: replaying the recorded effects takes account "
                    f"{int.from_bytes(aid, 'little')} outside its u128 balances (a release or post of more "
                    "than was pending)",
                    block=self.height + 1, account=int.from_bytes(aid, "little"))

    # -- leaves: the hot loop --------------------------------------------------------------------

    def _leaves(self, leaves: Sequence[bytes], ts_first: int) -> None:
        """The inner loop, in passes over the block's leaves: (1) framing, sequence and effects —
        when every leaf is a 202-byte create-transfer without aux, one ``struct.iter_unpack`` over the
        joined bytes; any other leaf goes through ``_leaf``, which checks every field; (2) leaf hashes;
        (3) the hash chain; (4) the compact range (RFC 6962 right edge)."""
        if not leaves:
            return
        b3 = _b3
        accts = self.accounts
        touch = self._touched.add
        first = self.size
        i = first
        t = ts_want = ts_first
        leaf = self._leaf
        try:
            joined = b"".join(leaves)
            if len(joined) == 202 * len(leaves) and all(len(r) == 202 for r in leaves):
                for vkr, idx, ts, blen, dr, cr, lo, hi, fl, auxlen in _FAST.iter_unpack(joined):
                    # version 1, kind 2 (create transfer), result 0, in sequence, no aux, single phase
                    if vkr == 0x201 and idx == i and ts == t and blen == 176 and not auxlen and not fl & 14:
                        a = accts[dr]
                        c = accts[cr]
                        touch(dr)
                        touch(cr)
                        amt = lo | (hi << 64) if hi else lo
                        a[0] += amt << 128  # debits_posted
                        c[0] += amt << 384  # credits_posted
                    else:
                        leaf(leaves[i - first], i, t)
                    i += 1
                    t += 1
            else:
                for raw in leaves:
                    leaf(raw, i, t)
                    i += 1
                    t += 1
        except KeyError as e:
            self._unknown_account(i, e.args[0])
        lhs = [b3(b"\x00" + r).digest() for r in leaves]
        link = self.link
        for lh in lhs:
            link = b3(b"\x02" + link + lh).digest()
        self.link = link
        stack = self.stack
        push = stack.append
        pop = stack.pop
        size = first
        for lh in lhs:
            push(lh)
            j = size
            size += 1
            while j & 1:
                r = pop()
                push(b3(b"\x01" + pop() + r).digest())
                j >>= 1
        self.size = size
        self.last_ts = ts_want + len(leaves) - 1
        self.stats.leaves = size

    def _leaf(self, raw: bytes, index: int, ts_want: int) -> None:
        """Any leaf, checked field by field, and its effects when its result is ok."""
        try:
            ver, kind, result, idx, ts, blen = LEAF_HEADER.unpack_from(raw)
        except struct.error:
            raise self._malformed(index, raw, f"{len(raw)} bytes, shorter than the 24-byte header") from None
        if idx != index or ts != ts_want or ver != 1:
            self._header_problem(index, raw, ts_want)
        exp = _BODY_SIZE.get(kind)
        if exp != blen and (exp is not None or kind != 4 or blen <= _DEPLOY_HEADER):
            self._body_problem(index, kind, blen, exp)
        held = self._aux(index, raw, kind, result, blen)
        if result == 0:
            self._effect(index, ts, kind, raw, blen, held)

    # -- slow paths (rare kinds, aux, errors) ------------------------------------------------------

    def _malformed(self, index: int, raw: bytes, why: str) -> LeafMalformed:
        return LeafMalformed(f"leaf {index}: malformed: {why}", index=index, leaf=raw[:64])

    def _header_problem(self, index: int, raw: bytes, ts_want: int) -> None:
        ver, _kind, _result, idx, ts, _blen = LEAF_HEADER.unpack_from(raw)
        if ver != FORMAT_VERSION:
            raise LeafMismatch(f"leaf {index}: format version {ver}, expected {FORMAT_VERSION}",
                               index=index, field="version", expected=FORMAT_VERSION, got=ver)
        if idx != index:
            raise LeafMismatch(f"leaf {index}: index field says {idx}, expected {index} (leaves not consecutive)",
                               index=index, field="index", expected=index, got=idx)
        raise LeafMismatch(
            f"leaf {index}: timestamp_ns {ts}, expected {ts_want} (block t0 + position; timestamps must be "
            f"strictly increasing)", index=index, field="timestamp_ns", expected=ts_want, got=ts)

    def _body_problem(self, index: int, kind: int, blen: int, exp: int | None) -> None:
        if exp is None and kind != 4:
            raise LeafMismatch(f"leaf {index}: unknown event kind {kind}", index=index, field="kind", got=kind)
        raise LeafMismatch(f"leaf {index}: {EventKind(kind).name} body is {blen} bytes, expected {exp or '> 68'}",
                           index=index, field="body_len", expected=exp, got=blen)

    def _aux(self, index: int, raw: bytes, kind: int, result: int, blen: int) -> bool:
        """Validate the aux TLVs; verify a PSP signature; return True when a rule held the transfer."""
        end = LEAF_HEADER_SIZE + blen
        if len(raw) < end + 2:
            raise self._malformed(index, raw, f"leaf is {len(raw)} bytes but its body needs {blen}")
        (aux_len,) = struct.unpack_from("<H", raw, end)
        if len(raw) != end + 2 + aux_len:
            raise self._malformed(index, raw, f"length {len(raw)} does not match body {blen} + aux {aux_len}")
        held = False
        try:
            for tag, value in iter_aux(raw[end + 2 :]):
                if tag == AUX_TAG_PSP_SIGNATURE:
                    self._psp(index, raw[LEAF_HEADER_SIZE:end], value)
                elif tag == AUX_TAG_RULE_OUTCOME and value and value[0] == _ACTION_HOLD and result == 0:
                    held = True
        except EncodingError as e:
            raise self._malformed(index, raw, f"aux: {e}") from None
        return held

    def _psp(self, index: int, body: bytes, value: bytes) -> None:
        if len(value) != 4 + 64:
            raise PspSignatureInvalid(f"leaf {index}: PSP signature TLV is {len(value)} bytes, expected 68",
                                      index=index)
        kid = value[:4]
        vk = self.psp.get(kid)
        if vk is None:
            self.stats.psp_unknown[kid.hex()] += 1
            return
        if not self.verify_psp:
            return
        try:
            vk.verify(body, value[4:])
        except BadSignatureError:
            raise PspSignatureInvalid(
                f"leaf {index}: PSP signature by key {self.psp_names[kid]} ({kid.hex()}) does not verify over the "
                f"{len(body)}-byte record {ab(body[:16])}", index=index, key_id=kid, psp=self.psp_names[kid],
                signature=value[4:]) from None
        self.stats.psp_verified += 1

    def _unknown_account(self, index: int, aid: bytes) -> None:
        raise BalanceMismatch(
            f"leaf {index}: result ok but account {int.from_bytes(aid, 'little')} was never created in the log",
            index=index, account=int.from_bytes(aid, "little"))

    def _touch(self, aid: bytes, index: int) -> list[Any]:
        a = self.accounts.get(aid)
        if a is None:
            self._unknown_account(index, aid)
        assert a is not None
        self._touched.add(aid)
        return a

    def _effect(self, index: int, ts: int, kind: int, raw: bytes, blen: int, held: bool) -> None:
        """Effects of an ok entry other than the plain single-phase transfer (the hot path)."""
        body = raw[LEAF_HEADER_SIZE : LEAF_HEADER_SIZE + blen]
        if kind == EventKind.CREATE_ACCOUNT:
            if body[:16] in self.accounts:
                raise BalanceMismatch(f"leaf {index}: account {int.from_bytes(body[:16], 'little')} created twice",
                                      index=index)
            self.accounts[body[:16]] = [0, None, body[:16] + body, struct.pack("<Q", ts)]
            self._touched.add(body[:16])
        elif kind == EventKind.CREATE_TRANSFER:
            tid, dr, cr, lo, hi, pid, fl = _XFER.unpack_from(raw, LEAF_HEADER_SIZE)
            amount = lo | hi << 64
            if fl & (_F_POST | _F_VOID):
                p = self.pending.pop(pid, None)
                if p is None:
                    raise BalanceMismatch(
                        f"leaf {index}: result ok posts/voids pending transfer {int.from_bytes(pid, 'little')}, "
                        "which the log does not show as pending", index=index, pending_id=pid)
                pdr, pcr, pamt = p
                a, c = self._touch(pdr, index), self._touch(pcr, index)
                a[0] -= pamt
                c[0] -= pamt << 256
                if fl & _F_POST:
                    amt = amount or pamt
                    a[0] += amt << 128
                    c[0] += amt << 384
            elif fl & _F_PENDING or held:
                a, c = self._touch(dr, index), self._touch(cr, index)
                a[0] += amount
                c[0] += amount << 256
                self.pending[tid] = (dr, cr, amount)
            else:
                a, c = self._touch(dr, index), self._touch(cr, index)
                a[0] += amount << 128
                c[0] += amount << 384
        elif kind == EventKind.LEDGER_TRANSFER:
            tid, dr, cr, lo, hi, pid, fl = _XFER.unpack_from(raw, LEAF_HEADER_SIZE)
            a, c = self._touch(dr, index), self._touch(cr, index)
            a[0] += (lo | hi << 64) << 128
            c[0] += (lo | hi << 64) << 384
        elif kind == EventKind.EXPIRE_PENDING:
            p = self.pending.pop(body, None)
            if p is None:
                raise BalanceMismatch(f"leaf {index}: expires transfer {int.from_bytes(body, 'little')}, which the "
                                      "log does not show as pending", index=index, pending_id=body)
            a, c = self._touch(p[0], index), self._touch(p[1], index)
            a[0] -= p[2]
            c[0] -= p[2] << 256
        elif kind == EventKind.SETTLEMENT_CALLBACK:
            aux = raw[LEAF_HEADER_SIZE + blen + 2 :]
            for tag, value in iter_aux(aux):
                if tag == AUX_TAG_RECONCILE and len(value) >= 17:
                    p = self.pending.pop(value[1:17], None)
                    if p is not None:  # settlement confirms a pending transfer: posted in full
                        a, c = self._touch(p[0], index), self._touch(p[1], index)
                        a[0] += (p[2] << 128) - p[2]  # pending → posted
                        c[0] += (p[2] << 384) - (p[2] << 256)
        elif kind == EventKind.DEPLOY_RULESET:
            self.next_ruleset = _b3(_RULESET_DOMAIN + body[_DEPLOY_HEADER:]).digest()

    # -- end of log ------------------------------------------------------------------------------

    def finish(self, cp: Checkpoint) -> None:
        """Compare the recomputed head with the signed checkpoint (size, root, block, chain, time)."""
        if self.size != cp.size:
            raise LogTruncated(f"the log holds {self.size} leaves up to block {self.height}, the signed checkpoint "
                               f"says {cp.size}", expected=cp.size, got=self.size, block=self.height)
        root = self.root()
        if root != cp.root:
            raise TreeMismatch(f"Merkle root recomputed over {self.size} leaves is {ab(root)}, the signed checkpoint "
                               f"says {ab(cp.root)}", tree_size=self.size, expected=cp.root, got=root)
        block = cp.extension("block")
        if block is not None:
            h, _, bh = block.partition(" ")
            if int(h) != self.height or bytes.fromhex(bh) != self.block_hash:
                raise BlockHeaderMismatch(
                    f"signed checkpoint says block {h} with hash {ab(bytes.fromhex(bh))}, the headers chain to block "
                    f"{self.height} with hash {ab(self.block_hash)}", block=int(h), expected=bytes.fromhex(bh),
                    got=self.block_hash)
        chain = cp.extension("chain")
        if chain is not None and bytes.fromhex(chain) != self.link:
            raise ChainMismatch(f"chain head recomputed over {self.size} leaves is {ab(self.link)}, the signed "
                                f"checkpoint says {ab(bytes.fromhex(chain))}", expected=bytes.fromhex(chain),
                                got=self.link)
        t = cp.extension("time")
        if t is not None and int(t) != self.head_ts:
            raise BlockHeaderMismatch(f"signed checkpoint time {t} differs from the last timestamp {self.head_ts}",
                                      expected=int(t), got=self.head_ts)

    def account_states(self) -> dict[bytes, bytes]:
        """Replayed 136-byte account states by id (what LookupAccounts must return)."""
        m = (1 << 512) - 1
        out = {}
        for aid, a in self.accounts.items():
            out[aid] = a[2][16:] + (a[0] & m).to_bytes(64, "little") + a[3]
        return out


def compare_accounts(replayed: dict[bytes, bytes], node: dict[bytes, bytes | None], node_name: str) -> None:
    """Replayed account states vs the node's LookupAccounts answers: the first difference is an error."""
    for aid in sorted(replayed, key=lambda k: k[::-1]):
        want = replayed[aid]
        got = node.get(aid)
        acct = int.from_bytes(aid, "little")
        if got is None:
            raise BalanceMismatch(f"account {acct}: created in the log, {node_name} does not know it",
                                  account=acct, node=node_name)
        if got != want:
            w, g = decode_account_state(want), decode_account_state(got)
            diffs = [(f, getattr(w, f), getattr(g, f)) for f in
                     ("debits_pending", "debits_posted", "credits_pending", "credits_posted", "timestamp_ns")
                     if getattr(w, f) != getattr(g, f)]
            if w.account != g.account:
                diffs.append(("record", ab(want[:64]), ab(got[:64])))
            detail = ", ".join(f"{f}: replayed {x}, node {y}" for f, x, y in diffs)
            raise BalanceMismatch(f"account {acct}: {detail} ({node_name})", account=acct, node=node_name,
                                  fields=[{"field": f, "replayed": str(x), "node": str(y)} for f, x, y in diffs])


def describe_leaf(raw: bytes) -> dict[str, Any]:
    """A leaf decoded for humans (tables, fork evidence); never raises."""
    try:
        leaf = decode_leaf(raw)
    except EncodingError as e:
        return {"malformed": str(e), "bytes": ab(raw, 48), "leaf_hash": _b3(b"\x00" + raw).hexdigest()}
    try:
        result = Result(leaf.result).name.lower()
    except ValueError:
        result = str(leaf.result)
    out: dict[str, Any] = {"index": leaf.index, "kind": leaf.kind.name, "result": result,
                           "timestamp_ns": leaf.timestamp_ns, "leaf_hash": _b3(b"\x00" + raw).hexdigest()}
    body = leaf.body
    if leaf.kind in (EventKind.CREATE_TRANSFER, EventKind.LEDGER_TRANSFER):
        tid, dr, cr, lo, hi, _pid, fl = _XFER.unpack(body)
        out.update(id=int.from_bytes(tid, "little"), debit=int.from_bytes(dr, "little"),
                   credit=int.from_bytes(cr, "little"), amount=lo | hi << 64, flags=fl)
    elif leaf.kind == EventKind.CREATE_ACCOUNT:
        out.update(id=int.from_bytes(body[:16], "little"))
    elif leaf.kind == EventKind.EXPIRE_PENDING:
        out.update(id=int.from_bytes(body, "little"))
    if leaf.psp_signature:
        out["psp_key_id"] = leaf.psp_signature[0].hex()
    return out


# -- export file ------------------------------------------------------------------------------------

EXPORT_MAGIC: Final = b"SOVLEDGER-AUDIT-EXPORT v1\n"
_FRAME: Final = struct.Struct("<BI")
FRAME_META: Final = 1
FRAME_HEADER: Final = 2
FRAME_LEAF: Final = 3
FRAME_END: Final = 0xFF


def write_frame(out: IO[bytes], ftype: int, payload: bytes) -> None:
    out.write(_FRAME.pack(ftype, len(payload)))
    out.write(payload)


def write_export(out: IO[bytes], meta: dict[str, Any], headers: Iterable[bytes],
                 leaves: Iterable[bytes]) -> tuple[int, int]:
    """Magic, one META frame (JSON), every block header, every leaf, an END frame with the counts."""
    out.write(EXPORT_MAGIC)
    write_frame(out, FRAME_META, json.dumps(meta, sort_keys=True).encode())
    nh = nl = 0
    for h in headers:
        write_frame(out, FRAME_HEADER, h)
        nh += 1
    for leaf in leaves:
        write_frame(out, FRAME_LEAF, leaf)
        nl += 1
    write_frame(out, FRAME_END, json.dumps({"headers": nh, "leaves": nl}).encode())
    return nh, nl


@dataclass(slots=True)
class ExportFile:
    meta: dict[str, Any]
    headers: list[bytes]
    leaves: list[bytes]
    complete: bool  # the END frame was present and its counts matched


def read_export(data: bytes) -> ExportFile:
    if not data.startswith(EXPORT_MAGIC):
        raise UsageError(f"not a sovledger audit export (expected magic {EXPORT_MAGIC!r})")
    pos = len(EXPORT_MAGIC)
    meta: dict[str, Any] | None = None
    headers: list[bytes] = []
    leaves: list[bytes] = []
    complete = False
    unpack = _FRAME.unpack_from
    n = len(data)
    while pos < n:
        if pos + 5 > n:
            break
        ftype, length = unpack(data, pos)
        pos += 5
        payload = data[pos : pos + length]
        if len(payload) != length:
            break
        pos += length
        if ftype == FRAME_LEAF:
            leaves.append(payload)
        elif ftype == FRAME_HEADER:
            headers.append(payload)
        elif ftype == FRAME_META:
            meta = json.loads(payload)
        elif ftype == FRAME_END:
            counts = json.loads(payload)
            complete = counts == {"headers": len(headers), "leaves": len(leaves)}
            break
    if meta is None:
        raise UsageError("export file has no META frame")
    return ExportFile(meta, headers, leaves, complete)


def iter_blocks(headers: Iterable[bytes], leaves: Iterator[bytes]) -> Iterator[tuple[bytes, list[bytes]]]:
    """Pair each header with its ``leaf_count`` leaves (fewer when the leaf stream ends early)."""
    for h in headers:
        count = BLOCK_HEADER.unpack_from(h)[4] if len(h) == BLOCK_HEADER_SIZE else 0
        chunk: list[bytes] = []
        for _ in range(count):
            nxt = next(leaves, None)
            if nxt is None:
                break
            chunk.append(nxt)
        yield h, chunk


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()
