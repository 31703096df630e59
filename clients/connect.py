"""Client TLS settings: which certificate a client presents (clients/channels.py opens the channels).
Plaintext only when asked for (``--insecure``).

Paths come from flags (``--tls-ca``, ``--tls-cert``, ``--tls-key``) or from one config file
(``--tls-config FILE``, written by ``sovledger ca issue``)::

    [tls]
    ca = "/path/ca.pem"
    cert = "/path/psp-7.pem"
    key = "/path/psp-7.key"

The environment variable ``SOVLEDGER_TLS_CONFIG`` names that file when no flag does.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

import grpc

TLS_CONFIG_ENV = "SOVLEDGER_TLS_CONFIG"


class TlsConfigError(ValueError):
    """The client's TLS settings are incomplete or unreadable; the message says what to pass."""


@dataclass(frozen=True, slots=True)
class ClientTls:
    ca: str
    cert: str
    key: str

    def credentials(self) -> grpc.ChannelCredentials:
        try:
            return grpc.ssl_channel_credentials(
                root_certificates=Path(self.ca).read_bytes(), private_key=Path(self.key).read_bytes(),
                certificate_chain=Path(self.cert).read_bytes())
        except OSError as e:
            raise TlsConfigError(f"cannot read TLS file: {e}") from e

    @staticmethod
    def from_file(path: str) -> ClientTls:
        try:
            raw = tomllib.loads(Path(path).read_text()).get("tls", {})
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise TlsConfigError(f"cannot read TLS config {path}: {e}") from e
        missing = [k for k in ("ca", "cert", "key") if not raw.get(k)]
        if missing:
            raise TlsConfigError(f"TLS config {path} lacks {', '.join(missing)} under [tls]")
        return ClientTls(str(raw["ca"]), str(raw["cert"]), str(raw["key"]))

    def identity(self) -> tuple[str, str]:
        """(role, name) from this certificate's subject (OU, CN), as the node will read them."""
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        cert = x509.load_pem_x509_certificate(Path(self.cert).read_bytes())
        ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return (str(ou[0].value) if ou else "", str(cn[0].value) if cn else "")

    def psp_id(self) -> int:
        role, name = self.identity()
        if role != "psp" or not name.isdigit():
            raise TlsConfigError(f"{self.cert} is a {role or 'role-less'} certificate, not a PSP's")
        return int(name)


def add_tls_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls-config", default=None,
                        help=f"client TLS config file from `sovledger ca issue` (or ${TLS_CONFIG_ENV})")
    parser.add_argument("--tls-ca", default=None, help="region CA certificate (PEM)")
    parser.add_argument("--tls-cert", default=None, help="your client certificate (PEM)")
    parser.add_argument("--tls-key", default=None, help="your client key (PEM)")
    parser.add_argument("--insecure", action="store_true",
                        help="plaintext, no certificate (only for nodes started with --insecure)")


#: where `sovledger cluster up` (default --data) leaves its client configs: the CLIs fall back to them
LOCAL_CLUSTER_CA = Path(".sovledger/cluster/ca")


def tls_from_args(args: argparse.Namespace, local_default: str = "") -> ClientTls | None:
    """The TLS settings named by ``add_tls_flags`` flags; None when --insecure. Without flags:
    ``$SOVLEDGER_TLS_CONFIG``, else the local cluster's ``LOCAL_CLUSTER_CA/<local_default>`` if it exists."""
    if getattr(args, "insecure", False):
        return None
    flags = (getattr(args, "tls_ca", None), getattr(args, "tls_cert", None), getattr(args, "tls_key", None))
    if all(flags):
        return ClientTls(*flags)  # type: ignore[arg-type]
    path = getattr(args, "tls_config", None) or os.environ.get(TLS_CONFIG_ENV)
    if not path and local_default and (LOCAL_CLUSTER_CA / local_default).exists():
        path = str(LOCAL_CLUSTER_CA / local_default)
    if path:
        return ClientTls.from_file(path)
    raise TlsConfigError("nodes speak TLS: pass --tls-config FILE (from `sovledger ca issue`), or --tls-ca, "
                         f"--tls-cert and --tls-key, or set ${TLS_CONFIG_ENV}; --insecure for a plaintext node")
