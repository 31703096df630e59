"""``sovledger ca``: the region's certificate authority (X.509, ECDSA P-256, `cryptography`).

  sovledger ca init  --dir DIR --region NAME
  sovledger ca issue --dir DIR --role node|operator|psp|auditor --name NAME [--san HOST ...] [--days N]
  sovledger ca revoke --dir DIR (--cert FILE | --serial HEX)

Identity is in the subject: ``OU`` = role, ``CN`` = name (a node id like ``node-2``; a PSP's decimal
psp_id; any label for operators and auditors), ``O`` = ``sovledger region NAME``. Node certificates
carry SANs for the addresses they serve (default ``localhost`` and ``127.0.0.1``). Each issued
certificate comes with ``ROLE-NAME.toml``, the one client config file (``--tls-config``) naming the
CA, the certificate and the key. Layout and rules: docs/security.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROLES = ("node", "operator", "psp", "auditor")
CA_CERT = "ca.pem"
CA_KEY = "ca.key"
REVOKED = "revoked.txt"
DEFAULT_SANS = ("localhost", "127.0.0.1")


class CaError(Exception):
    """A CA command cannot proceed; the message says why and what to do."""


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.replace(tmp, path)  # atomic: a node reloading on change never reads half a key


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def init_ca(directory: Path, region: str, days: int = 3650, force: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / CA_KEY).exists() and not force:
        raise CaError(f"{directory / CA_KEY} exists; a region has one CA (use --force to replace it)")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"sovledger region {region}"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"sovledger {region} CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256()))
    _write_key(directory / CA_KEY, key)
    _write(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
    (directory / REVOKED).touch()
    return directory / CA_CERT


def _load_ca(directory: Path) -> tuple[x509.Certificate, Any]:
    try:
        cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), None)
    except FileNotFoundError as e:
        raise CaError(f"no CA under {directory}: run `sovledger ca init --dir {directory}` first") from e
    return cert, key


def _san(values: tuple[str, ...]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for v in values:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(v)))
        except ValueError:
            names.append(x509.DNSName(v))
    return x509.SubjectAlternativeName(names)


def _check_name(role: str, name: str) -> None:
    if role not in ROLES:
        raise CaError(f"role {role!r} is not one of {', '.join(ROLES)}")
    if role == "psp" and not (name.isdigit() and 0 < int(name) < 1 << 32):
        raise CaError(f"a PSP certificate's name is its psp_id, a number in [1, 2^32); got {name!r}")
    if role == "node" and not (name.rsplit("-", 1)[-1].isdigit() and int(name.rsplit("-", 1)[-1]) > 0):
        raise CaError(f"a node certificate's name is its node id ending in a positive number (node-1); got {name!r}")
    if not name or any(c in name for c in "/\\ \n") or name.startswith("."):
        raise CaError(f"name {name!r} must be non-empty without spaces or slashes")


def issue(directory: Path, role: str, name: str, sans: tuple[str, ...] = (), days: int = 365,
          out: Path | None = None) -> tuple[Path, Path, Path]:
    """Issue a certificate; returns (certificate, key, client config) paths."""
    _check_name(role, name)
    ca_cert, ca_key = _load_ca(directory)
    region = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if role == "node" else [])
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, str(region)),
                                        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                                        x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
    if role == "node":
        builder = builder.add_extension(_san(sans or DEFAULT_SANS), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    out = out or directory
    out.mkdir(parents=True, exist_ok=True)
    base = out / f"{role}-{name}"
    cert_path, key_path, conf = base.with_suffix(".pem"), base.with_suffix(".key"), base.with_suffix(".toml")
    _write_key(key_path, key)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    ca_path = (directory / CA_CERT).resolve()
    _write(conf, (f'# client TLS config for {role} {name} (--tls-config)\n[tls]\nca = "{ca_path}"\n'
                  f'cert = "{cert_path.resolve()}"\nkey = "{key_path.resolve()}"\n').encode())
    return cert_path, key_path, conf


def revoke(directory: Path, serial: int) -> Path:
    """Append a serial to the region's revocation list (nodes re-read it when it changes)."""
    path = directory / REVOKED
    with open(path, "a") as f:
        f.write(f"{serial:x}\n")
    return path


def serial_of(cert_file: Path) -> int:
    return int(x509.load_pem_x509_certificate(cert_file.read_bytes()).serial_number)


def _cmd_init(args: argparse.Namespace) -> int:
    path = init_ca(Path(args.dir), args.region, force=args.force)
    print(f"region CA for {args.region}: {path} (key {Path(args.dir) / CA_KEY}, keep it offline)")
    return 0


def _cmd_issue(args: argparse.Namespace) -> int:
    cert, key, conf = issue(Path(args.dir), args.role, args.name, tuple(args.san or ()), args.days,
                            Path(args.out) if args.out else None)
    print(f"{args.role} {args.name}: certificate {cert}\n  key {key}\n  client config {conf} "
          f"(serial {serial_of(cert):x})")
    return 0


def _cmd_revoke(args: argparse.Namespace) -> int:
    serial = serial_of(Path(args.cert)) if args.cert else int(args.serial, 16)
    path = revoke(Path(args.dir), serial)
    print(f"revoked serial {serial:x} in {path}; nodes started with --tls-revoked {path} refuse it from now on")
    return 0


def _run(func: Any) -> Any:
    def wrapped(args: argparse.Namespace) -> int:
        try:
            rc: int = func(args)
            return rc
        except CaError as e:
            print(f"sovledger ca: {e}", file=sys.stderr)
            return 1
    return wrapped


def register(sub: Any) -> None:
    c = sub.add_parser("ca", help="the region's certificate authority",
                       description="Region CA: X.509 certificates for nodes, operators, PSPs and auditors.")
    csub = c.add_subparsers(dest="ca_command", metavar="ACTION")
    i = csub.add_parser("init", help="create the region CA (ca.pem, ca.key, revoked.txt)")
    i.add_argument("--region", required=True)
    i.add_argument("--force", action="store_true", help="replace an existing CA")
    i.set_defaults(func=_run(_cmd_init))
    s = csub.add_parser("issue", help="issue a certificate + key + client config")
    s.add_argument("--role", required=True, choices=ROLES)
    s.add_argument("--name", required=True, help="node id (node-1), psp_id (7), or a label for operator/auditor")
    s.add_argument("--san", action="append", help="node only: DNS name or IP it serves on (repeat; default "
                   "localhost and 127.0.0.1)")
    s.add_argument("--days", type=int, default=365)
    s.add_argument("--out", default=None, help="directory for the files (default: the CA directory)")
    s.set_defaults(func=_run(_cmd_issue))
    r = csub.add_parser("revoke", help="add a certificate's serial to the revocation list")
    g = r.add_mutually_exclusive_group(required=True)
    g.add_argument("--cert", help="certificate file to revoke")
    g.add_argument("--serial", help="serial (hex) to revoke")
    r.set_defaults(func=_run(_cmd_revoke))
    for p in (i, s, r):
        p.add_argument("--dir", default=".sovledger/ca", help="CA directory (default .sovledger/ca)")
