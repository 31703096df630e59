"""Full-log replay: the verifier that re-derives every leaf hash, chain link, tree root, block header
and balance from canonical bytes (docs/auditor.md, "What each check proves").

Pure: no I/O. Everything is recomputed from ``ledger.codec`` layouts, ``ledger.hashing`` domains and
``ledger.merkle``'s compact range. Per block: leaf framing and index/timestamp continuity → leaf
hashes → hash chain → RFC 6962 tree (compact range) → the block header (chaining, continuity,
merkle root, chain head, state hash, rule set hash, block hash) → balances replayed from the
*recorded results* (effects only, never decisions) → at the end the signed checkpoint (size, root,
``block``/``chain``/``time`` lines).
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Final

import blake3
import numpy as np
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from clients.auditor.balances import Balances, OutOfRange
from clients.auditor.effects import CREDITS_POSTED, DEBITS_POSTED, TRANSFER_HEAD, Effects, unknown_account
from clients.auditor.failures import (
    AuditFailure,
    BalanceMismatch,
    BlockHeaderMismatch,
    ChainMismatch,
    ForkDetected,
    LeafMalformed,
    LeafMismatch,
    LogTruncated,
    PspSignatureInvalid,
    TreeMismatch,
    ab,
)
from clients.auditor.psp_groups import check_leaf_group
from clients.auditor.tree import extend
from ledger import native
from ledger.codec import (
    AGGREGATE_BYTES_MAX,
    AUX_LEN,
    AUX_TAG_PSP_SIGNATURE,
    AUX_TAG_RULE_OUTCOME,
    BLOCK_HEADER,
    BLOCK_HEADER_SIZE,
    DEPLOY_HEADER_SIZE,
    FORMAT_VERSION,
    KEY_ID_SIZE,
    LEAF_BODY_SIZE,
    LEAF_HEADER,
    LEAF_HEADER_SIZE,
    SIGNATURE_SIZE,
    TRANSFER_SIZE,
    ZERO32,
    EncodingError,
    iter_aux,
)
from ledger.hashing import GENESIS_LINK, LEAF_DOMAIN, STATE_DOMAIN, block_hash, ruleset_hash
from ledger.merkle import CompactRange
from ledger.netting import SETTLEMENT_BYTES_MAX
from ledger.note import Checkpoint, Verifier
from ledger.psp_group import AUX_TAG_PSP_GROUP
from ledger.rules.model import Action
from ledger.types import EventKind, Result, TransferFlags

_b3 = blake3.blake3
_NO_NODES: Final = 64  # min_level for the engine's append: the replay needs the range, not the completed nodes

_F_TWO_PHASE: Final = int(TransferFlags.PENDING | TransferFlags.POST_PENDING_TRANSFER
                          | TransferFlags.VOID_PENDING_TRANSFER)
_ACTION_HOLD: Final = int(Action.HOLD)
_PSP_TLV_SIZE: Final = KEY_ID_SIZE + SIGNATURE_SIZE

# The whole leaf of a create-transfer without aux, in one unpack: version|kind|result (LEAF_HEADER's first
# three fields as one u32), index, timestamp, body_len, then the _XFER fields without id and pending id
# (debit, credit, amount lo/hi, flags), then the aux length.
_PLAIN: Final = struct.Struct("<IQQI16x16s16sQQ16x94xHH")
_PLAIN_SIZE: Final = LEAF_HEADER_SIZE + TRANSFER_SIZE + AUX_LEN.size  # 202
_VARIABLE: Final = frozenset({EventKind.DEPLOY_RULESET, EventKind.SETTLEMENT, EventKind.AGGREGATE})  # no fixed size
_PLAIN_TAG: Final = FORMAT_VERSION | EventKind.CREATE_TRANSFER << 8 | Result.OK << 16
_NO_RESULT: Final = np.uint32(0xFFFF)  # the tag without its result (u16 at bits 16-31)
# The same layout as a numpy record, for checking and applying a block of plain transfers at once.
_PLAIN_NP: Final = np.dtype({
    "names": ["tag", "idx", "ts", "blen", "dr", "cr", "lo", "hi", "flags", "aux"],
    "formats": ["<u4", "<u8", "<u8", "<u4", "V16", "V16", "<u8", "<u8", "<u2", "<u2"],
    "offsets": [0, 4, 12, 20, 40, 56, 72, 80, 198, 200], "itemsize": _PLAIN_SIZE})
if _PLAIN.size != _PLAIN_SIZE or TRANSFER_HEAD.size != TRANSFER_SIZE:  # the layouts above must follow ledger.codec
    raise ImportError("clients.auditor.replay: leaf layouts disagree with ledger.codec")


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
        self.range = CompactRange()
        self.link = GENESIS_LINK
        self.last_ts = 0
        self.height = 0
        self.block_hash = ZERO32
        self.state_hash = ZERO32
        self.ruleset_hash = ZERO32
        self.next_ruleset = ZERO32
        self.head_ts = 0
        self.balances = Balances()  # replayed from the recorded effects (clients.auditor.balances)
        self.effects = Effects(self.balances)
        self.stats = VerifyStats()
        self.rotations: list[tuple[int, bytes]] = []  # KEY_ROTATION entries with result ok: (leaf index, body)

    # -- tree ------------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Leaves verified so far (the tree size)."""
        return self.range.size

    def root(self) -> bytes:
        return self.range.root()

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
        range_before = self.range.copy()
        try:
            self._block_leaves(first, tree_size, ts0, leaves)
        except _NAMES_ITS_LEAF:
            raise  # the failure already names the leaf whose own bytes are wrong
        except AuditFailure as semantic:  # an odd effect is often a changed byte: blame the changed leaf first
            self._blame_changed_leaf(height, first, leaves, mroot, range_before, semantic)
            raise
        self._check_recomputed(height, first, leaves, mroot, chain, state)
        self.state_hash = state
        self.block_hash = block_hash(header_raw)
        self.height = height
        self.head_ts = self.last_ts if count else ts0
        self.stats.blocks += 1

    def _block_leaves(self, first: int, tree_size: int, ts0: int, leaves: Sequence[bytes]) -> None:
        """The block's leaves, split where a trusted checkpoint's size falls inside the block."""
        pos = 0
        for target in sorted(t for t in self.targets if first < t <= tree_size):
            self._leaves(leaves[pos : target - first], ts0 + pos)
            pos = target - first
            self._check_target(target)
        self._leaves(leaves[pos:], ts0 + pos)
        if first == tree_size and tree_size in self.targets:
            self._check_target(tree_size)

    def _blame_changed_leaf(self, height: int, first: int, leaves: Sequence[bytes], mroot: bytes,
                            range_before: CompactRange, semantic: AuditFailure) -> None:
        """When replaying a block's effects failed, check first whether its leaves are the ones the header
        committed to: a changed leaf is the cause to report (named by the locator), not its consequence."""
        tree = range_before.copy()
        tree.append_many([_b3(LEAF_DOMAIN + leaf).digest() for leaf in leaves])
        if tree.root() == mroot:
            return
        lhs = [_b3(LEAF_DOMAIN + leaf).digest() for leaf in leaves]
        suspects = self.locator(first, lhs) if self.locator and lhs else []
        where = f"; leaf {suspects[0]} does not verify against the signed tree" if suspects else ""
        raise TreeMismatch(
            f"block {height}: Merkle root at tree size {first + len(leaves)} recomputed from the leaves is "
            f"{ab(tree.root())}, header says {ab(mroot)} (a leaf in [{first}, {first + len(leaves)}) differs from "
            f"what was committed{where}; replaying it failed too: {semantic})",
            block=height, index=suspects[0] if suspects else None, suspects=suspects, first_index=first,
            tree_size=first + len(leaves), expected=mroot, got=tree.root()) from semantic

    def _check_recomputed(self, height: int, first: int, leaves: Sequence[bytes], mroot: bytes, chain: bytes,
                          state: bytes) -> None:
        """The block header's root, chain head and state hash against what the leaves recompute."""
        tree_size = first + len(leaves)
        root = self.root()
        if root != mroot:
            lhs = [_b3(LEAF_DOMAIN + leaf).digest() for leaf in leaves]
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

    def _check_target(self, size: int) -> None:
        want = self.targets[size]
        got = self.root()
        if got != want:
            raise ForkDetected(
                f"the log's root at the trusted size {size} is {ab(got)}, the trusted checkpoint says {ab(want)}: "
                "history before the trusted checkpoint was rewritten", size=size, expected=want, got=got)

    def _state_hash(self) -> bytes:
        """BLAKE3(0x04 ‖ previous ‖ (id ‖ state) for accounts created or changed in the block, by id)."""
        try:
            body = self.balances.settle()
        except OutOfRange as e:
            acct = int.from_bytes(e.account, "little")
            raise BalanceMismatch(
                f"block {self.height + 1}: replaying the recorded effects takes account {acct} outside its u128 "
                "balances (a release or post of more than was pending)", block=self.height + 1, account=acct) from None
        return _b3(STATE_DOMAIN + self.state_hash + body).digest()

    # -- leaves: the hot loop --------------------------------------------------------------------

    def _leaves(self, leaves: Sequence[bytes], ts_first: int) -> None:
        """The inner loop, in passes over the block's leaves: (1) framing, sequence and effects — a run
        of plain transfers (``_plain_run``) in bulk, anything else entry by entry (``_exact``); (2) leaf
        hashes; (3) the hash chain; (4) the compact range (RFC 6962 right edge, ``ledger.merkle``)."""
        if not leaves:
            return
        first = self.size
        joined = b"".join(leaves)
        plain = len(joined) == _PLAIN_SIZE * len(leaves) and all(map(_PLAIN_SIZE.__eq__, map(len, leaves)))
        if not (plain and self._plain_run(joined, first, ts_first)):
            self._exact(leaves, joined if plain else None, first, ts_first)
        lhs, self.link = native.hash_and_chain(self.link, leaves if isinstance(leaves, list) else list(leaves))
        if native.active() == "native":  # the compiled engine (tests/engine: byte-identical to the reference)
            native.append_many(self.range, lhs, _NO_NODES)
        else:
            extend(self.range, lhs)
        self.last_ts = ts_first + len(leaves) - 1
        self.stats.leaves = self.range.size

    def _plain_run(self, joined: bytes, first: int, ts_first: int) -> bool:
        """Every leaf a create-transfer of the current format without aux, in sequence; those with
        result ok single phase between known accounts (the others failed: no effect). Then apply them
        in bulk and return True; otherwise change nothing and return False (the exact path then
        names the first problem)."""
        arr = np.frombuffer(joined, _PLAIN_NP)
        seq = np.arange(len(arr), dtype=np.uint64)
        tag = arr["tag"]
        ok = tag == _PLAIN_TAG
        if not (((tag & _NO_RESULT) == _PLAIN_TAG).all() and (arr["blen"] == TRANSFER_SIZE).all()
                and not arr["aux"].any() and not (arr["flags"][ok] & _F_TWO_PHASE).any()
                and np.array_equal(arr["idx"], seq + np.uint64(first))
                and np.array_equal(arr["ts"], seq + np.uint64(ts_first))):
            return False
        if not ok.all():
            arr = arr[ok]
            if not len(arr):
                return True
        bal = self.balances
        debit, credit = bal.rows_of(arr["dr"]), bal.rows_of(arr["cr"])
        if debit is None or credit is None:
            get = bal.index.__getitem__
            try:
                debit = np.fromiter(map(get, arr["dr"].tolist()), np.intp, len(arr))
                credit = np.fromiter(map(get, arr["cr"].tolist()), np.intp, len(arr))
            except KeyError:
                return False
        bal.add_posted(debit, credit, arr["lo"], arr["hi"])
        return True

    def _exact(self, leaves: Sequence[bytes], joined: bytes | None, first: int, ts_first: int) -> None:
        """Entry by entry, in order; ``joined``: the leaves' bytes when all are 202 bytes long."""
        i, t = first, ts_first
        leaf = self._leaf
        index = self.balances.index
        add = self.balances.add_packed
        try:
            if joined is None:
                for raw in leaves:
                    leaf(raw, i, t)
                    i += 1
                    t += 1
                return
            for vkr, idx, ts, blen, dr, cr, lo, hi, fl, auxlen in _PLAIN.iter_unpack(joined):
                if vkr == _PLAIN_TAG and idx == i and ts == t and blen == TRANSFER_SIZE and not auxlen \
                        and not fl & _F_TWO_PHASE:
                    d, c = index[dr], index[cr]
                    amt = lo | hi << 64
                    add(d, amt << DEBITS_POSTED)
                    add(c, amt << CREDITS_POSTED)
                else:
                    leaf(leaves[i - first], i, t)
                i += 1
                t += 1
        except KeyError as e:
            raise unknown_account(i, e.args[0]) from None

    def _leaf(self, raw: bytes, index: int, ts_want: int) -> None:
        """Any leaf, checked field by field, and its effects when its result is ok."""
        try:
            ver, kind, result, idx, ts, blen = LEAF_HEADER.unpack_from(raw)
        except struct.error:
            raise self._malformed(index, raw, f"{len(raw)} bytes, shorter than the 24-byte header") from None
        if idx != index or ts != ts_want or ver != FORMAT_VERSION:
            self._header_problem(index, raw, ts_want)
        exp = LEAF_BODY_SIZE.get(kind)
        if exp != blen and (exp is not None or not _variable_body_ok(kind, blen)):
            self._body_problem(index, kind, blen, exp)
        held = self._aux(index, raw, kind, result, blen)
        if result == Result.OK:
            if kind == EventKind.DEPLOY_RULESET:
                self.next_ruleset = ruleset_hash(raw[LEAF_HEADER_SIZE + DEPLOY_HEADER_SIZE : LEAF_HEADER_SIZE + blen])
            elif kind == EventKind.KEY_ROTATION:  # the chain of checkpoint keys (checks.verify_chained)
                self.rotations.append((index, raw[LEAF_HEADER_SIZE : LEAF_HEADER_SIZE + blen]))
            else:
                self.effects.apply(index, ts, kind, raw, blen, held)

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
        if exp is None and kind not in _VARIABLE:
            raise LeafMismatch(f"leaf {index}: unknown event kind {kind}", index=index, field="kind", got=kind)
        raise LeafMismatch(f"leaf {index}: {EventKind(kind).name} body is {blen} bytes, "
                           f"expected {exp or f'> {DEPLOY_HEADER_SIZE}'}",
                           index=index, field="body_len", expected=exp, got=blen)

    def _aux(self, index: int, raw: bytes, kind: int, result: int, blen: int) -> bool:
        """Validate the aux TLVs; verify a PSP signature; return True when a rule held the transfer."""
        end = LEAF_HEADER_SIZE + blen
        if len(raw) < end + AUX_LEN.size:
            raise self._malformed(index, raw, f"leaf is {len(raw)} bytes but its body needs {blen}")
        (aux_len,) = AUX_LEN.unpack_from(raw, end)
        if len(raw) != end + AUX_LEN.size + aux_len:
            raise self._malformed(index, raw, f"length {len(raw)} does not match body {blen} + aux {aux_len}")
        held = False
        try:
            for tag, value in iter_aux(raw[end + AUX_LEN.size :]):
                if tag == AUX_TAG_PSP_SIGNATURE:
                    self._psp(index, raw[LEAF_HEADER_SIZE:end], value)
                elif tag == AUX_TAG_PSP_GROUP:
                    self.stats.psp_verified += check_leaf_group(index, kind, raw[LEAF_HEADER_SIZE:end], value,
                                                                self.psp, self.psp_names, self.stats.psp_unknown,
                                                                self.verify_psp)
                elif tag == AUX_TAG_RULE_OUTCOME and value and value[0] == _ACTION_HOLD and result == 0:
                    held = True
        except EncodingError as e:
            raise self._malformed(index, raw, f"aux: {e}") from None
        return held

    def _psp(self, index: int, body: bytes, value: bytes) -> None:
        if len(value) != _PSP_TLV_SIZE:
            raise PspSignatureInvalid(
                f"leaf {index}: PSP signature TLV is {len(value)} bytes, expected {_PSP_TLV_SIZE}", index=index)
        kid = value[:KEY_ID_SIZE]
        vk = self.psp.get(kid)
        if vk is None:
            self.stats.psp_unknown[kid.hex()] += 1
            return
        if not self.verify_psp:
            return
        try:
            vk.verify(body, value[KEY_ID_SIZE:])
        except BadSignatureError:
            raise PspSignatureInvalid(
                f"leaf {index}: PSP signature by key {self.psp_names[kid]} ({kid.hex()}) does not verify over the "
                f"{len(body)}-byte record {ab(body[:16])}", index=index, key_id=kid, psp=self.psp_names[kid],
                signature=value[KEY_ID_SIZE:]) from None
        self.stats.psp_verified += 1

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
        return self.balances.states()


#: Failures about one leaf's own bytes (framing, its PSP signature): reported as they are.
_NAMES_ITS_LEAF: Final = (LeafMalformed, LeafMismatch, PspSignatureInvalid, ForkDetected)


def iter_blocks(headers: Iterable[bytes], leaves: Iterator[bytes]) -> Iterator[tuple[bytes, list[bytes]]]:
    """Pair each header with its ``leaf_count`` leaves (fewer when the leaf stream ends early)."""
    for h in headers:
        count = BLOCK_HEADER.unpack_from(h)[4] if len(h) == BLOCK_HEADER_SIZE else 0
        yield h, list(islice(leaves, count))


def _variable_body_ok(kind: int, blen: int) -> bool:
    """Body length of a variable-length kind: a rule set deploy, or an aggregate (ledger/aggregates.py)."""
    if kind == EventKind.DEPLOY_RULESET:
        return blen > DEPLOY_HEADER_SIZE
    if kind == EventKind.SETTLEMENT:  # a settlement batch (ledger/netting.py)
        return 0 < blen <= SETTLEMENT_BYTES_MAX
    return kind == EventKind.AGGREGATE and 0 < blen <= AGGREGATE_BYTES_MAX
