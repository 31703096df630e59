"""`sovledger audit`: argument parsing and dispatch (docs/auditor.md).

    audit trust init   --node HOST:PORT --trust FILE [--key VKEY …] [--psp-key VKEY …]
    audit trust show   --trust FILE
    audit trust add-key --trust FILE (--node-key VKEY | --psp-key VKEY)
    audit verify       (--node HOST:PORT | --file EXPORT) --trust FILE [--full] [--json]
    audit prove        TRANSFER_ID --node HOST:PORT [--trust FILE] [--json]
    audit compare      --nodes A,B,C [--trust FILE] [--json]
    audit export       --node HOST:PORT --out FILE [--trust FILE]
    audit witness      --federation FILE --region NAME --witnesses K-of-N [--evidence-out FILE]

Verification is local: the node only supplies bytes (signed notes, proofs, leaves, headers); every
hash, proof and balance is recomputed here with the pure ledger modules. Each failure class has its
own exit code (``clients.auditor.failures.EXIT_*``). Run it as ``sovledger audit …`` or
``python -m clients.auditor …``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from clients.auditor.commands import cmd_export, cmd_prove, cmd_trust_add_key, cmd_trust_init, cmd_trust_show
from clients.auditor.compare import cmd_compare
from clients.auditor.failures import AuditFailure
from clients.auditor.output import Out
from clients.auditor.verify import cmd_verify
from clients.connect import TlsConfigError, add_tls_flags


def _run(fn: Callable[[argparse.Namespace, Out], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        out = Out(getattr(args, "json", False))
        try:
            return fn(args, out)
        except AuditFailure as e:
            return out.failure(e)
        except TlsConfigError as e:
            print(f"sovledger audit: {e}", file=sys.stderr)
            return 2

    return run


def _common(p: argparse.ArgumentParser, node: bool = True) -> None:
    if node:
        p.add_argument("--node", help="HOST:PORT of a node")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--timeout", type=float, default=30.0, help="per-call timeout, seconds")
    add_tls_flags(p)


def _help_only(p: argparse.ArgumentParser) -> None:
    """A command group given without an action prints its help and exits 2 (usage)."""

    def no_action(args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=no_action)


def _add_verify(sub: Any) -> None:
    v = sub.add_parser("verify", help="verify the latest checkpoint (and with --full, the whole log)")
    _common(v)
    v.add_argument("--trust", required=True, help="trust store file")
    v.add_argument("--file", help="verify an export file instead of a node (no network)")
    v.add_argument("--full", action="store_true", help="stream and re-verify every entry and block header")
    v.add_argument("--no-update", action="store_true", help="do not advance the trust store")
    v.add_argument("--no-psp", action="store_true", help="skip PSP signature verification")
    v.add_argument("--witnesses", default="", metavar="K-of-N",
                   help="verify the region's cosigned checkpoint and refuse it (exit 16) unless K distinct "
                   "witnesses of other regions cosigned it (needs --federation; docs/federation.md)")
    v.add_argument("--federation", default="", help="federation config naming the witness keys")
    v.set_defaults(func=_run(cmd_verify))


def _add_trust(sub: Any) -> None:
    t = sub.add_parser("trust", help="manage the local trust store")
    tsub = t.add_subparsers(dest="trust_command", metavar="ACTION")
    ti = tsub.add_parser("init", help="create a trust store (TOFU from the node, or explicit --key)")
    _common(ti)
    ti.add_argument("--trust", required=True)
    ti.add_argument("--key", action="append", help="trusted node verifier key (repeatable); default: TOFU")
    ti.add_argument("--psp-key", action="append", help="trusted PSP verifier key (repeatable)")
    ti.add_argument("--force", action="store_true", help="replace an existing trust file")
    ti.set_defaults(func=_run(cmd_trust_init))
    ts = tsub.add_parser("show", help="print the trust store")
    _common(ts, node=False)
    ts.add_argument("--trust", required=True)
    ts.set_defaults(func=_run(cmd_trust_show))
    tk = tsub.add_parser("add-key", help="trust another node or PSP key")
    _common(tk, node=False)
    tk.add_argument("--trust", required=True)
    tk.add_argument("--node-key", action="append")
    tk.add_argument("--psp-key", action="append")
    tk.set_defaults(func=_run(cmd_trust_add_key))
    _help_only(t)


def _add_node_commands(sub: Any) -> None:
    p = sub.add_parser("prove", help="inclusion proof of a transfer against a signed checkpoint")
    _common(p)
    p.add_argument("transfer_id", help="decimal or 0x-hex u128")
    p.add_argument("--trust", help="trust store (default: the node's advertised key, with a warning)")
    p.set_defaults(func=_run(cmd_prove))
    c = sub.add_parser("compare", help="check that replicas agree; print fork evidence if not")
    _common(c, node=False)
    c.add_argument("--nodes", required=True, help="HOST:PORT,HOST:PORT,…")
    c.add_argument("--trust", help="trust store (default: each node's advertised key, with a warning)")
    c.add_argument("--quick", action="store_true",
                   help="compare signed checkpoints and consistency proofs only, not every leaf served")
    c.set_defaults(func=_run(cmd_compare))
    e = sub.add_parser("export", help="write a self-contained file for offline verification")
    _common(e)
    e.add_argument("--out", required=True)
    e.add_argument("--trust", help="check the checkpoint against this trust store before exporting")
    e.set_defaults(func=_run(cmd_export))


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``audit`` command tree to an argparse subparsers object."""
    a: argparse.ArgumentParser = subparsers.add_parser(
        "audit", help="verify checkpoints, proofs and the whole log",
        description="The auditor's tool: verifies signed checkpoints, consistency with a "
        "local trust store, inclusion proofs, and the whole log offline or online. Exit "
        "codes: 0 ok, 2 usage, 3 unreachable, 10 bad signature, 11 inconsistent/fork/"
        "rollback, 12 leaf/chain/tree mismatch, 13 block header mismatch, 14 balance "
        "mismatch, 15 PSP signature invalid, 16 witness policy unmet, 17 split view "
        "(evidence file written) (docs/auditor.md).")
    sub = a.add_subparsers(dest="audit_command", metavar="ACTION")
    from clients.netting import register_audit as add_settlement_parser  # `audit settlement` (docs/federation.md)
    from clients.pii_disclose import add_disclose_parser  # `audit disclose` (docs/privacy.md)

    for add in (_add_verify, _add_trust, _add_node_commands, add_disclose_parser, add_settlement_parser):
        add(sub)
    from clients.auditor.witnessed import add_witness_parser, cmd_witness  # docs/federation.md

    add_witness_parser(sub)
    sub.choices["witness"].set_defaults(func=_run(cmd_witness))
    _help_only(a)
    return a


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sovledger")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["audit", *(sys.argv[1:] if argv is None else argv)])
    if (args.audit_command in ("verify", "prove", "export") or getattr(args, "trust_command", None) == "init") \
            and not args.node and not getattr(args, "file", None):
        parser.error("--node HOST:PORT is required")
    result: int = args.func(args)
    return result
