"""docs/formats.md recomputed from first principles (blake3, hashlib, struct, PyNaCl only)."""

from __future__ import annotations

import base64
import hashlib
import struct

import blake3
from nacl.signing import SigningKey

from ledger.codec import BlockHeader, encode_leaf, encode_transfer
from ledger.hashing import block_hash, chain_link, leaf_hash
from ledger.merkle import CompactRange
from ledger.note import Checkpoint, Signer, Verifier, open_note, sign_note
from ledger.state import LedgerState
from ledger.store import MemoryStore
from ledger.types import EventKind, Transfer


def b3(data: bytes) -> bytes:
    return blake3.blake3(data).digest()


def test_three_leaf_tree_example() -> None:
    ha, hb, hc = (b3(b"\x00" + x) for x in (b"a", b"b", b"c"))
    root = b3(b"\x01" + b3(b"\x01" + ha + hb) + hc)
    cr = CompactRange()
    cr.append_many([leaf_hash(b"a"), leaf_hash(b"b"), leaf_hash(b"c")])
    assert cr.root() == root
    assert CompactRange().root() == b3(b"")


def test_transfer_leaf_and_chain_link() -> None:
    t = Transfer(id=7, debit_account_id=1, credit_account_id=2, amount=250, ledger=840, code=1, psp_id=3)
    rec = encode_transfer(t)
    expected_rec = (
        (7).to_bytes(16, "little") + (1).to_bytes(16, "little") + (2).to_bytes(16, "little")
        + (250).to_bytes(16, "little") + bytes(16) + bytes(16) + bytes(32) + bytes(32)
        + struct.pack("<IIIHH", 840, 3, 0, 1, 0)
    )
    assert rec == expected_rec
    leaf = encode_leaf(EventKind.CREATE_TRANSFER, 0, 41, 1_700_000_000_000_000_000, rec)
    assert leaf == struct.pack("<BBHQQI", 1, 2, 0, 41, 1_700_000_000_000_000_000, 176) + rec + b"\x00\x00"
    prev = bytes(32)
    assert chain_link(prev, leaf_hash(leaf)) == b3(b"\x02" + prev + b3(b"\x00" + leaf))


def test_block_header_hash_and_state_hash_from_a_real_block() -> None:
    from ledger.codec import Batch, Proposal, encode_account
    from ledger.types import Account

    state = LedgerState(MemoryStore())
    accts = [Account(i, 840, 1) for i in (1, 2)]
    out = state.apply_block(Proposal(10**18, (Batch(EventKind.CREATE_ACCOUNT,
                                                     b"".join(encode_account(a) for a in accts)),)))
    h = out.header
    raw = h.encode()
    assert len(raw) == 197 and raw[0] == 1
    assert struct.unpack_from("<QQQIQ", raw, 1) == (1, 10**18, 0, 2, 2)
    assert out.block_hash == b3(b"\x03" + raw) == block_hash(raw)
    assert BlockHeader.decode(raw) == h
    # state hash: previous (zeros) then (id ‖ 136-byte state) for each new account, sorted by id
    states = []
    for i, a in enumerate(accts):
        rec = encode_account(a)
        ts = 10**18 + i
        states.append(a.id.to_bytes(16, "little") + rec + bytes(64) + struct.pack("<Q", ts))
    assert h.state_hash == b3(b"\x04" + bytes(32) + b"".join(sorted(states)))
    # chain head and root from the two leaves
    link = bytes(32)
    hashes = []
    for i, a in enumerate(accts):
        leaf = struct.pack("<BBHQQI", 1, 1, 0, i, 10**18 + i, 64) + encode_account(a) + b"\x00\x00"
        hashes.append(b3(b"\x00" + leaf))
        link = b3(b"\x02" + link + hashes[-1])
    assert h.chain_head == link
    assert h.merkle_root == b3(b"\x01" + hashes[0] + hashes[1])


def test_signed_checkpoint_from_first_principles() -> None:
    seed = b"\x01" * 32
    name = "example/node-1"
    pub = bytes(SigningKey(seed).verify_key)
    kid = hashlib.sha256(name.encode() + b"\n\x01" + pub).digest()[:4]
    signer = Signer(name, seed)
    assert signer.key_id == kid
    blob = base64.b64encode(b"\x01" + pub).decode()
    vkey = f"{name}+{kid.hex()}+{blob}"
    assert signer.verifier.to_string() == vkey
    root = b3(b"")
    body = Checkpoint("sovledger/example", 0, root, ("block 0 " + "00" * 32,)).to_body()
    assert body == f"sovledger/example\n0\n{base64.b64encode(root).decode()}\nblock 0 {'00' * 32}\n".encode()
    note = sign_note(body, signer)
    sig = SigningKey(seed).sign(body).signature
    assert note == body.decode() + "\n" + f"\u2014 {name} {base64.b64encode(kid + sig).decode()}\n"
    assert open_note(note, [Verifier.parse(vkey)]).body == body
