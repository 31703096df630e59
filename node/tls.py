"""TLS for the node: server credentials that reload on file change, peer channels, caller identity.

Identity lives in the client certificate's subject, issued by the region CA (`sovledger ca`,
docs/security.md): ``OU`` is the role (node, operator, psp, auditor) and ``CN`` the name (a node
id such as ``node-2``, or a PSP's decimal ``psp_id``). Nothing a caller types into a request
decides who it is.

Rotation without downtime: the server asks for its certificate configuration on every new
handshake and gets a new one whenever a file's modification time changed; outbound peer channels
re-read the files each time they reconnect. Revocation: a text file of certificate serials (hex,
one per line) that the operator edits; it is re-read when it changes and checked on every call.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

log = logging.getLogger("sovledger.tls")

ROLES = ("node", "operator", "psp", "auditor")
FEDERATION_ROLE = "federation"  # any certificate issued by another region's CA (node/authz.py)
_IDENTITY_CACHE_MAX = 1024


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM paths: the region CA certificate, this party's certificate and key, the revocation list."""

    ca: str
    cert: str
    key: str
    revoked: str = ""
    # other regions' CA certificates (region name, PEM path): trusted at the handshake, and a
    # certificate they issued is the `federation` role whatever its subject says (docs/federation.md)
    federation_cas: tuple[tuple[str, str], ...] = ()

    def roots(self) -> bytes:
        """The root certificates a server accepts client certificates from: own CA first."""
        return b"".join([_read(self.ca), *(_read(path) for _, path in self.federation_cas)])


@dataclass(frozen=True, slots=True)
class Identity:
    role: str
    name: str
    serial: int

    @property
    def psp_id(self) -> int:
        """The PSP's numeric id (only meaningful for role ``psp``; the CA refuses non-numeric names)."""
        return int(self.name) if self.role == "psp" and self.name.isdigit() else -1

    def __str__(self) -> str:
        return f"{self.role} {self.name} (certificate serial {self.serial:x})"


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def _mtimes(files: TlsFiles) -> tuple[int, ...]:
    return tuple(os.stat(p).st_mtime_ns for p in (files.ca, files.cert, files.key))


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """mTLS server credentials: a client certificate signed by the region CA is required at the
    handshake; the files are re-read (on the next handshake) whenever one of them changes."""
    lock = threading.Lock()
    seen = [_mtimes(files)]

    def config() -> Any:
        return grpc.ssl_server_certificate_configuration(
            [(_read(files.key), _read(files.cert))], root_certificates=files.roots())

    def fetch() -> Any:
        with lock:
            try:
                now = _mtimes(files)
                if now == seen[0]:
                    return None
                fresh = config()
            except OSError as e:  # a half-written rotation: keep serving with the current files
                log.warning("tls: cannot reload certificates yet: %s", e)
                return None
            seen[0] = now
            log.info("tls: reloaded server certificate %s", files.cert)
            return fresh

    return grpc.dynamic_ssl_server_credentials(config(), fetch, require_client_authentication=True)


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    """Client side of mTLS (peers, and any client holding a region certificate)."""
    return grpc.ssl_channel_credentials(root_certificates=_read(files.ca), private_key=_read(files.key),
                                        certificate_chain=_read(files.cert))


class RevocationList:
    """Serials the operator revoked (``sovledger ca revoke`` appends to this file)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._mtime = -1
        self._serials: frozenset[int] = frozenset()

    def revoked(self, serial: int) -> bool:
        if not self._path:
            return False
        try:
            mtime = os.stat(self._path).st_mtime_ns
        except FileNotFoundError:
            return False
        if mtime != self._mtime:
            self._serials = parse_serials(Path(self._path).read_text())
            self._mtime = mtime
        return serial in self._serials


def parse_serials(text: str) -> frozenset[int]:
    out = set()
    for line in text.splitlines():
        word = line.split("#", 1)[0].strip()
        if word:
            out.add(int(word, 16))
    return frozenset(out)


class IdentityCache:
    """Certificate PEM → Identity, parsed once (a bounded LRU: the handshake already verified it)."""

    def __init__(self) -> None:
        self._cache: OrderedDict[bytes, Identity | None] = OrderedDict()
        self._lock = threading.Lock()
        self._own_ca: x509.Certificate | None = None
        self._foreign: tuple[tuple[str, x509.Certificate], ...] = ()

    def trust_federation(self, files: TlsFiles) -> None:
        """Tell own-region certificates from other regions' (which only ever get the federation role)."""
        self._own_ca = x509.load_pem_x509_certificate(_read(files.ca))
        self._foreign = tuple((region, x509.load_pem_x509_certificate(_read(path)))
                              for region, path in files.federation_cas)
        with self._lock:
            self._cache.clear()

    def identity(self, auth_context: dict[str, list[bytes]]) -> Identity | None:
        pems = auth_context.get("x509_pem_cert") or []
        if not pems:
            return None
        pem = pems[0]
        with self._lock:
            if pem in self._cache:
                self._cache.move_to_end(pem)
                return self._cache[pem]
        ident = identity_from_pem(pem, self._own_ca, self._foreign)
        with self._lock:
            self._cache[pem] = ident
            while len(self._cache) > _IDENTITY_CACHE_MAX:
                self._cache.popitem(last=False)
        return ident


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def identity_from_pem(pem: bytes, own_ca: x509.Certificate | None = None,
                      foreign: tuple[tuple[str, x509.Certificate], ...] = ()) -> Identity | None:
    """The caller's identity. With federation CAs configured, a certificate not issued by the own
    CA is ``federation REGION/ROLE-NAME`` when another region's CA issued it, else nobody."""
    cert = x509.load_pem_x509_certificate(pem)
    if own_ca is not None and foreign and not _issued_by(cert, own_ca):
        region = next((r for r, ca in foreign if _issued_by(cert, ca)), None)
        if region is None:
            return None
        ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        label = "-".join(str(a[0].value) for a in (ou, cn) if a)
        return Identity(FEDERATION_ROLE, f"{region}/{label}", cert.serial_number)
    roles = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(roles) != 1 or len(names) != 1 or roles[0].value not in ROLES:
        return None
    return Identity(str(roles[0].value), str(names[0].value), cert.serial_number)


def blocking_channel(address: str, files: TlsFiles | None) -> grpc.Channel:
    """A blocking channel for the few start-up calls a node makes to its peers (status, checkpoint
    floor, --rejoin): mTLS with ``files``; plaintext when the node runs --insecure (files None)."""
    if files is None:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, channel_credentials(files))


def client_files(config_path: str) -> TlsFiles:
    """The CA/cert/key paths of a client TLS config file (``ROLE-NAME.toml`` from `sovledger ca issue`)."""
    import tomllib

    with open(config_path, "rb") as f:
        tls = tomllib.load(f).get("tls", {})
    missing = [k for k in ("ca", "cert", "key") if not tls.get(k)]
    if missing:
        raise ValueError(f"{config_path}: [tls] lacks {', '.join(missing)}")
    return TlsFiles(str(tls["ca"]), str(tls["cert"]), str(tls["key"]))


def peer_channel(address: str, files: TlsFiles | None, options: list[tuple[str, Any]]) -> grpc.aio.Channel:
    """An outbound channel to another region member: mTLS with this node's certificate (files are
    read now, so a reconnect after rotation presents the new certificate); plaintext when --insecure."""
    if files is None:
        return grpc.aio.insecure_channel(address, options=options)
    return grpc.aio.secure_channel(address, channel_credentials(files), options=options)
