"""`sovledger pii put|get|erase`: the region's personal data vault from the command line.

  put SUBJECT --field name=VALUE …                PSP: store a subject; prints the commitment and salt
  get SUBJECT [--out FILE]                        PSP (own subjects), auditor, operator: disclose
                                                  (writes a file for `audit disclose --pii`)
  erase SUBJECT --reason CODE                     operator: log an erasure, shred every replica's copy

TLS as for every client (--tls-config FILE, --tls-ca/--tls-cert/--tls-key, $SOVLEDGER_TLS_CONFIG,
--insecure): the certificate is the role, and a PSP's psp_id comes from its certificate. Where
`sovledger cluster up` ran, put/get default to the local PSP 1 certificate, erase to the operator's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from clients.connect import TlsConfigError, add_tls_flags, tls_from_args
from clients.pii import PiiVault, VaultCallError, write_pii_file
from ledger.pii import ErasureReason, PiiError


def _subject(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"subject {text!r} must be a decimal or 0x-hex u128") from None
    if not 0 < value < 1 << 128:
        raise argparse.ArgumentTypeError("subject must be in 1..2^128-1")
    return value


def _reason(text: str) -> ErasureReason:
    try:
        return ErasureReason(int(text)) if text.isdigit() else ErasureReason[text.upper().replace("-", "_")]
    except (KeyError, ValueError):
        names = ", ".join(r.name.lower() for r in ErasureReason)
        raise argparse.ArgumentTypeError(f"reason {text!r} is unknown; use one of: {names}") from None


def _fields(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs:
        name, sep, value = p.partition("=")
        if not sep:
            raise PiiError(f"--field {p!r} must look like NAME=VALUE")
        out[name] = value
    return out


def _emit(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False) if args.json else text)


#: the local cluster's certificate each action falls back to (clients.connect.tls_from_args)
_LOCAL_DEFAULT = {"put": "psp-1.toml", "get": "psp-1.toml", "erase": "operator-operator.toml"}


def _vault(args: argparse.Namespace) -> PiiVault:
    return PiiVault(args.node, args.timeout, tls_from_args(args, _LOCAL_DEFAULT[args.pii_command]))


def cmd_put(args: argparse.Namespace) -> int:
    with _vault(args) as v:
        r = v.put(args.subject, _fields(args.field or []), args.psp_id)
    _emit(args, {"subject_id": str(args.subject), "commitment": r.commitment.hex(), "salt": r.salt.hex(),
                 "created": r.created, "copies": r.copies},
          f"subject {args.subject:#x} {'stored' if r.created else 'already stored'} on {r.copies} replica(s)\n"
          f"pii_commitment: {r.commitment.hex()}")
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    with _vault(args) as v:
        d = v.get(args.subject, args.psp_id)
    if args.out:
        write_pii_file(Path(args.out), d)
    text = "\n".join([f"subject {args.subject:#x} (psp {d.psp_id})"]
                     + [f"  {k}: {val}" for k, val in sorted(d.record.fields.items())]
                     + [f"pii_commitment: {d.commitment.hex()}"] + ([f"written to {args.out}"] if args.out else []))
    _emit(args, d.to_json(), text)
    return 0


def cmd_erase(args: argparse.Namespace) -> int:
    with _vault(args) as v:
        r = v.erase(args.subject, args.reason)
    _emit(args, {"subject_id": str(args.subject), "commitment": r.commitment.hex(), "log_index": r.log_index,
                 "block": r.block, "result": r.result, "reason": args.reason.name.lower()},
          f"subject {args.subject:#x} erased ({args.reason.name.lower()}): erasure event at log entry "
          f"{r.log_index}, block {r.block} (result {r.result}); data key and records destroyed on every replica")
    return 0


def _guarded(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(fn(args))
        except VaultCallError as e:
            hint = f" (leader: {e.leader})" if e.leader else ""
            print(f"sovledger pii {args.pii_command}: {e.code.name}: {e}{hint}", file=sys.stderr)
            return 1
        except (PiiError, TlsConfigError) as e:
            print(f"sovledger pii {args.pii_command}: {e}", file=sys.stderr)
            return 2
    return run


def register(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "pii", help="the region's personal data vault: put, get, erase",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="pii_command", metavar="ACTION")

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("subject", type=_subject, help="subject id: decimal or 0x-hex u128 (a pseudonym)")
        q.add_argument("--node", default="127.0.0.1:7100", help="HOST:PORT of a node of the region")
        q.add_argument("--json", action="store_true", help="machine-readable output")
        q.add_argument("--timeout", type=float, default=30.0)
        add_tls_flags(q)

    put = sub.add_parser("put", help="store a subject's personal data (PSP)")
    common(put)
    put.add_argument("--field", action="append", help="NAME=VALUE (repeatable): name, email, country …")
    put.add_argument("--psp-id", type=int, default=0,
                     help="the PSP that owns the subject: with TLS it is your certificate's (default); "
                          "an --insecure node needs it")
    put.set_defaults(func=_guarded(cmd_put))
    get = sub.add_parser("get", help="disclose a subject's data and salt (PSP: own subjects; auditor)")
    common(get)
    get.add_argument("--psp-id", type=int, default=0,
                     help="only if the subject belongs to this PSP (a PSP certificate always reads its own only)")
    get.add_argument("--out", help="write a disclosure file (mode 0600) for `sovledger audit disclose --pii`")
    get.set_defaults(func=_guarded(cmd_get))
    er = sub.add_parser("erase", help="erase a subject in the whole region (operator)")
    common(er)
    er.add_argument("--reason", type=_reason, required=True,
                    help="subject_request, consent_withdrawn, retention_expired, unlawful_processing, legal_order")
    er.set_defaults(func=_guarded(cmd_erase))

    def no_action(args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=no_action)
    return p
