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


def add_tls_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls-config", default=None,
                        help=f"client TLS config file from `sovledger ca issue` (or ${TLS_CONFIG_ENV})")
    parser.add_argument("--tls-ca", default=None, help="region CA certificate (PEM)")
    parser.add_argument("--tls-cert", default=None, help="your client certificate (PEM)")
    parser.add_argument("--tls-key", default=None, help="your client key (PEM)")
    parser.add_argument("--insecure", action="store_true",
                        help="plaintext, no certificate (only for nodes started with --insecure)")


def tls_from_args(args: argparse.Namespace) -> ClientTls | None:
    """The TLS settings named by ``add_tls_flags`` flags; None when --insecure."""
    if getattr(args, "insecure", False):
        return None
    flags = (getattr(args, "tls_ca", None), getattr(args, "tls_cert", None), getattr(args, "tls_key", None))
    if all(flags):
        return ClientTls(*flags)  # type: ignore[arg-type]
    path = getattr(args, "tls_config", None) or os.environ.get(TLS_CONFIG_ENV)
    if path:
        return ClientTls.from_file(path)
    raise TlsConfigError("nodes speak TLS: pass --tls-config FILE (from `sovledger ca issue`), or --tls-ca, "
                         f"--tls-cert and --tls-key, or set ${TLS_CONFIG_ENV}; --insecure for a plaintext node")
