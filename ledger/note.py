"""C2SP signed notes, tlog checkpoints and timestamped cosignatures, with Ed25519 (PyNaCl).

Formats (C2SP signed-note, tlog-checkpoint, tlog-cosignature; docs/formats.md has the bytes):

- note text: UTF-8 lines ending in "\\n"; the signed body ends with "\\n"; then one blank line and
  one signature line per signature: "— <key name> <base64(key id ‖ signature)>\\n" (U+2014).
- Ed25519 key id: first 4 bytes of SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key).
- verifier key string: "<name>+<key id, 8 hex>+<base64(0x01 ‖ public key)>".
- signer key string:   "PRIVATE+KEY+<name>+<key id, 8 hex>+<base64(0x01 ‖ seed)>".
- checkpoint body: origin, tree size (decimal), base64 root hash, then extension lines.
- cosignature v1: key id from SHA-256(name ‖ 0x0A ‖ 0x04 ‖ public key); signs
  "cosignature/v1\\ntime <unix seconds>\\n" ‖ checkpoint body; line value key id ‖ u64 BE time ‖ sig.

Pure: the auditor imports this.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

ALG_ED25519 = 0x01
ALG_COSIGNATURE_V1 = 0x04
SIG_PREFIX = "\u2014 "
MAX_NOTE_BYTES = 1 << 20


class NoteError(Exception):
    """Base class: a note, key or checkpoint could not be accepted."""


class NoteFormatError(NoteError):
    def __init__(self, message: str, line: int | None = None) -> None:
        self.line = line
        super().__init__(f"line {line}: {message}" if line is not None else message)


class KeyFormatError(NoteError):
    pass


class UnknownKey(NoteError):
    def __init__(self, name: str, key_id: bytes) -> None:
        self.name, self.key_id = name, key_id
        super().__init__(f"signature by unknown key {name}+{key_id.hex()}")


class BadSignature(NoteError):
    def __init__(self, name: str, key_id: bytes) -> None:
        self.name, self.key_id = name, key_id
        super().__init__(f"signature by {name}+{key_id.hex()} does not verify over the note body")


class NoTrustedSignature(NoteError):
    def __init__(self, known: list[str]) -> None:
        super().__init__("note carries no signature by a trusted key"
                         + (f" (trusted: {', '.join(known)})" if known else ""))


def key_id(name: str, alg: int, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes((alg,)) + public_key).digest()[:4]


def _check_name(name: str) -> None:
    if not name or any(c.isspace() for c in name) or "+" in name:
        raise KeyFormatError(f"key name {name!r} must be non-empty, without spaces or '+'")


@dataclass(frozen=True, slots=True)
class Verifier:
    name: str
    public_key: bytes
    alg: int = ALG_ED25519

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.alg, self.public_key)

    def to_string(self) -> str:
        blob = base64.b64encode(bytes((self.alg,)) + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{blob}"

    @staticmethod
    def parse(text: str) -> Verifier:
        parts = text.strip().split("+", 2)
        if len(parts) != 3:
            raise KeyFormatError(f"verifier key must be NAME+KEYID+KEY, got {text!r}")
        name, hex_id, blob = parts
        _check_name(name)
        try:
            raw = base64.b64decode(blob, validate=True)
            want = bytes.fromhex(hex_id)
        except (binascii.Error, ValueError) as e:
            raise KeyFormatError(f"verifier key {name}: bad encoding ({e})") from None
        if len(raw) != 33 or raw[0] not in (ALG_ED25519, ALG_COSIGNATURE_V1):
            raise KeyFormatError(f"verifier key {name}: expected an Ed25519 key (0x01 or 0x04 + 32 bytes)")
        v = Verifier(name, raw[1:], raw[0])
        if v.key_id != want:
            raise KeyFormatError(f"verifier key {name}: key id {hex_id} does not match the key")
        return v

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            VerifyKey(self.public_key).verify(message, signature)
        except (BadSignatureError, ValueError):
            return False
        return True


@dataclass(frozen=True, slots=True)
class Signer:
    name: str
    seed: bytes

    @staticmethod
    def generate(name: str) -> Signer:
        _check_name(name)
        return Signer(name, bytes(SigningKey.generate()))

    @property
    def verifier(self) -> Verifier:
        return Verifier(self.name, bytes(SigningKey(self.seed).verify_key))

    @property
    def key_id(self) -> bytes:
        return self.verifier.key_id

    def sign(self, message: bytes) -> bytes:
        return SigningKey(self.seed).sign(message).signature

    def to_string(self) -> str:
        blob = base64.b64encode(bytes((ALG_ED25519,)) + self.seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.key_id.hex()}+{blob}"

    @staticmethod
    def parse(text: str) -> Signer:
        parts = text.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise KeyFormatError("signer key must be PRIVATE+KEY+NAME+KEYID+KEY")
        name, hex_id, blob = parts[2:]
        _check_name(name)
        try:
            raw = base64.b64decode(blob, validate=True)
        except binascii.Error as e:
            raise KeyFormatError(f"signer key {name}: bad base64 ({e})") from None
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise KeyFormatError(f"signer key {name}: expected 0x01 + 32-byte Ed25519 seed")
        s = Signer(name, raw[1:])
        if s.key_id.hex() != hex_id.lower():
            raise KeyFormatError(f"signer key {name}: key id {hex_id} does not match the key")
        return s


# -- checkpoints ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def to_body(self) -> bytes:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode(), *self.extensions]
        return ("\n".join(lines) + "\n").encode()

    @staticmethod
    def parse(body: bytes) -> Checkpoint:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise NoteFormatError("checkpoint body is not UTF-8") from None
        if not text.endswith("\n"):
            raise NoteFormatError("checkpoint body must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise NoteFormatError(f"checkpoint needs origin, size and root lines, got {len(lines)} lines")
        origin, size_s, root_s, *ext = lines
        if not origin:
            raise NoteFormatError("empty origin", 1)
        if not size_s.isdigit() or (size_s != "0" and size_s.startswith("0")):
            raise NoteFormatError(f"tree size {size_s!r} is not a decimal number", 2)
        try:
            root = base64.b64decode(root_s, validate=True)
        except binascii.Error:
            raise NoteFormatError(f"root hash {root_s!r} is not base64", 3) from None
        if len(root) != 32:
            raise NoteFormatError(f"root hash is {len(root)} bytes, expected 32", 3)
        for i, e in enumerate(ext, start=4):
            if not e:
                raise NoteFormatError("empty extension line", i)
        return Checkpoint(origin, int(size_s), root, tuple(ext))

    def extension(self, key: str) -> str | None:
        """Value of an extension line "<key> <value>", if present."""
        for e in self.extensions:
            k, _, v = e.partition(" ")
            if k == key:
                return v
        return None


# -- signed notes -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NoteSignature:
    name: str
    key_id: bytes
    signature: bytes  # for cosignatures: u64 BE timestamp ‖ signature

    def line(self) -> str:
        return f"{SIG_PREFIX}{self.name} {base64.b64encode(self.key_id + self.signature).decode()}\n"


@dataclass(frozen=True, slots=True)
class SignedNote:
    body: bytes
    verified: tuple[NoteSignature, ...]
    unknown: tuple[NoteSignature, ...]

    @property
    def text(self) -> str:
        return self.body.decode()


def sign_note(body: bytes, *signers: Signer) -> str:
    if not body.endswith(b"\n"):
        raise NoteFormatError("note body must end with a newline")
    sigs = "".join(NoteSignature(s.name, s.key_id, s.sign(body)).line() for s in signers)
    return body.decode() + "\n" + sigs


def add_signature(note: str, signature_line: str) -> str:
    if not note.endswith("\n") or not signature_line.startswith(SIG_PREFIX):
        raise NoteFormatError("malformed note or signature line")
    return note + signature_line if signature_line.endswith("\n") else note + signature_line + "\n"


def split_note(text: str) -> tuple[bytes, list[NoteSignature]]:
    if len(text.encode()) > MAX_NOTE_BYTES:
        raise NoteFormatError(f"note larger than {MAX_NOTE_BYTES} bytes")
    if not text.endswith("\n"):
        raise NoteFormatError("note must end with a newline")
    cut = text.rfind("\n\n")
    if cut < 0:
        raise NoteFormatError("note has no blank line before its signatures")
    body = text[: cut + 1]
    sig_lines = text[cut + 2 :].split("\n")[:-1]
    if not sig_lines:
        raise NoteFormatError("note has no signature lines")
    sigs = []
    first_line = body.count("\n") + 2
    for n, line in enumerate(sig_lines, start=first_line):
        if not line.startswith(SIG_PREFIX):
            raise NoteFormatError(f"signature line must start with '— ', got {line[:20]!r}", n)
        name, sep, blob = line[len(SIG_PREFIX) :].rpartition(" ")
        if not sep or not name:
            raise NoteFormatError("signature line must be '— NAME BASE64'", n)
        try:
            raw = base64.b64decode(blob, validate=True)
        except binascii.Error:
            raise NoteFormatError("signature is not base64", n) from None
        if len(raw) < 5:
            raise NoteFormatError("signature too short", n)
        sig = NoteSignature(name, raw[:4], raw[4:])
        if sig in sigs:
            raise NoteFormatError(f"duplicate signature by {name}", n)
        sigs.append(sig)
    return body.encode(), sigs


def open_note(text: str, verifiers: list[Verifier]) -> SignedNote:
    """Verify a note; require at least one good signature by a known key; any bad one is an error."""
    body, sigs = split_note(text)
    known = {(v.name, v.key_id): v for v in verifiers}
    good, unknown = [], []
    for sig in sigs:
        v = known.get((sig.name, sig.key_id))
        if v is None:
            unknown.append(sig)
            continue
        message = body
        signature = sig.signature
        if v.alg == ALG_COSIGNATURE_V1:
            if len(signature) != 8 + 64:
                raise BadSignature(sig.name, sig.key_id)
            (ts,) = struct.unpack(">Q", signature[:8])
            message = cosignature_message(body, ts)
            signature = signature[8:]
        if not v.verify(message, signature):
            raise BadSignature(sig.name, sig.key_id)
        good.append(sig)
    if not good:
        raise NoTrustedSignature([v.name for v in verifiers])
    return SignedNote(body, tuple(good), tuple(unknown))


# -- cosignatures (witnesses in other regions) -------------------------------------------------


def cosignature_message(checkpoint_body: bytes, timestamp_s: int) -> bytes:
    return b"cosignature/v1\ntime " + str(timestamp_s).encode() + b"\n" + checkpoint_body


def cosigner_verifier(signer: Signer) -> Verifier:
    return Verifier(signer.name, signer.verifier.public_key, ALG_COSIGNATURE_V1)


def cosign(checkpoint_body: bytes, witness: Signer, timestamp_s: int) -> str:
    """A witness's timestamped cosignature line over a checkpoint body."""
    sig = witness.sign(cosignature_message(checkpoint_body, timestamp_s))
    kid = cosigner_verifier(witness).key_id
    return NoteSignature(witness.name, kid, struct.pack(">Q", timestamp_s) + sig).line()
