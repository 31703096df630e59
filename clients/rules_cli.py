"""`sovledger rules …`: deploy, list, show, dry-run rule sets and report reconciliation.

    rules deploy FILE --key KEYFILE [--target HOST:PORT]   validate locally, sign, submit (a ledger entry)
    rules validate FILE                                     check a rule set without a node
    rules list [--target]                                   deployed rule sets, the active one marked
    rules show HASH|active [--target]                       canonical JSON of a deployed rule set
    rules test FILE|active --transfer JSON [--target]       dry run against the node's committed state
    rules report [--json] [--target]                        rounding accounts per day, open exceptions

FILE is a JSON (or TOML, by extension) rule set document (docs/rules.md, docs/examples/ruleset.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

import grpc

from clients.channels import open_sync_channel
from clients.connect import TlsConfigError, add_tls_flags, tls_from_args
from clients.targets import default_targets
from ledger.codec import encode_deploy, encode_transfer
from ledger.note import Signer
from ledger.rules import RuleSetError, signing_message, validate
from ledger.types import Result, Transfer
from sovledger_pb import ledger_pb2 as pb
from sovledger_pb import ledger_pb2_grpc as pb_grpc

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
DEFAULT_TARGET = "127.0.0.1:7100"


def _first(targets: str) -> str:
    return targets.split(",")[0]


def load_document(path: str) -> Any:
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith(".toml"):
        return tomllib.loads(text)
    return json.loads(text)


def _channel(args: argparse.Namespace, target: str | None = None) -> grpc.Channel:
    """TLS with the caller's certificate (operator, or auditor for list/show/report); --insecure: plaintext.
    ``target``: one node; default the first of ``--target``."""
    try:
        return open_sync_channel(target or _first(args.target), tls_from_args(args, "operator-operator.toml"))
    except TlsConfigError as e:
        raise SystemExit(f"sovledger rules: {e}") from e


def _problems(e: RuleSetError) -> int:
    print(f"rule set refused: {Result(e.result).name.lower()}", file=sys.stderr)
    for p in e.problems:
        print(f"  - {p}", file=sys.stderr)
    return EXIT_FAIL


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        compiled = validate(load_document(args.file))
    except RuleSetError as e:
        return _problems(e)
    print(f"ok: {compiled.ruleset.name} v{compiled.ruleset.version}, {len(compiled.rules)} rules, "
          f"hash {compiled.hash.hex()}")
    return EXIT_OK


def _submit_to_leader(args: argparse.Namespace, req: pb.SubmitRequest) -> pb.SubmitResponse:
    """Submit one batch to the first of ``--target`` (comma-separated) that leads, following leader hints."""
    queue = [t for t in args.target.split(",") if t]
    tried: set[str] = set()
    resp = pb.SubmitResponse()
    while queue:
        target = queue.pop(0)
        if target in tried:
            continue
        tried.add(target)
        try:
            (resp,) = list(pb_grpc.LedgerStub(_channel(args, target)).Submit(iter([req]), timeout=args.timeout))
        except grpc.RpcError:
            if not queue:
                raise
            continue
        if resp.status.code and resp.status.leader_hint:
            queue.insert(0, resp.status.leader_hint)
            continue
        return resp
    return resp


def cmd_deploy(args: argparse.Namespace) -> int:
    try:
        compiled = validate(load_document(args.file))
    except RuleSetError as e:
        return _problems(e)
    signer = Signer.parse(Path(args.key).read_text())
    record = encode_deploy(signer.key_id, signer.sign(signing_message(compiled.canonical)), compiled.canonical)
    resp = _submit_to_leader(args, pb.SubmitRequest(batch_id=1, kind=pb.DEPLOY_RULESET, records=record))
    if resp.status.code:
        print(f"batch refused: {resp.status.message}", file=sys.stderr)
        return EXIT_FAIL
    code = Result(resp.results[0])
    print(f"{code.name.lower()}: {compiled.ruleset.name} v{compiled.ruleset.version} hash {compiled.hash.hex()} "
          f"(entry {resp.log_indexes[0]}, block {resp.blocks[0]}; effective from block {resp.blocks[0] + 1})")
    return EXIT_OK if code == Result.OK else EXIT_FAIL


def cmd_list(args: argparse.Namespace) -> int:
    resp = pb_grpc.RulesStub(_channel(args)).ListRuleSets(pb.ListRuleSetsRequest(), timeout=args.timeout)
    if args.json:
        print(json.dumps([{"hash": i.hash.hex(), "name": i.name, "version": i.version, "active": i.active,
                           "rules": i.rule_count, "deploy_index": i.deploy_index,
                           "effective_height": i.effective_height} for i in resp.rulesets], indent=2))
        return EXIT_OK
    print(f"{'':2}{'hash':16}  {'name':20} {'version':>7} {'rules':>5} {'entry':>8} {'from block':>10}")
    for i in resp.rulesets:
        print(f"{'*' if i.active else ' ':2}{i.hash.hex()[:16]}  {i.name:20} {i.version:>7} {i.rule_count:>5} "
              f"{i.deploy_index:>8} {i.effective_height:>10}")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    want = b"" if args.hash == "active" else bytes.fromhex(args.hash)
    try:
        resp = pb_grpc.RulesStub(_channel(args)).ShowRuleSet(pb.ShowRuleSetRequest(hash=want),
                                                                   timeout=args.timeout)
    except grpc.RpcError as e:
        print(f"{e.code().name}: {e.details()}", file=sys.stderr)
        return EXIT_FAIL
    print(json.dumps(json.loads(resp.canonical), indent=2, ensure_ascii=False))
    return EXIT_OK


def transfer_from_json(text: str) -> bytes:
    obj = json.loads(text)
    ref = obj.pop("external_ref", "")
    obj.setdefault("id", 1)
    return encode_transfer(Transfer(external_ref=ref.encode() if isinstance(ref, str) else bytes(ref), **obj))


def cmd_test(args: argparse.Namespace) -> int:
    document = b""
    if args.file != "active":
        try:
            document = json.dumps(load_document(args.file)).encode()
        except (OSError, ValueError) as e:
            print(f"cannot read {args.file}: {e}", file=sys.stderr)
            return EXIT_USAGE
    try:
        record = transfer_from_json(args.transfer)
    except (TypeError, ValueError) as e:
        print(f"--transfer: {e}", file=sys.stderr)
        return EXIT_USAGE
    resp = pb_grpc.RulesStub(_channel(args)).DryRun(pb.DryRunRequest(document=document, transfer=record),
                                                           timeout=args.timeout)
    if not resp.ok:
        print("dry run refused:", file=sys.stderr)
        for p in resp.problems:
            print(f"  - {p}", file=sys.stderr)
        return EXIT_FAIL
    out = {"action": resp.action, "rule_id": resp.rule_id, "rule_code": resp.rule_code, "message": resp.message,
           "result": Result(resp.result).name.lower(), "activation": json.loads(resp.activation_json)}
    print(json.dumps(out, indent=2))
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    resp = pb_grpc.RulesStub(_channel(args)).Report(pb.RulesReportRequest(), timeout=args.timeout)
    rep = json.loads(resp.json)
    if args.json:
        print(json.dumps(rep, indent=2))
        return EXIT_OK
    print("rounding accounts (per day, leader time)")
    print(f"  {'account':>12} {'day':>8} {'debits':>14} {'credits':>14} {'net':>12} {'count':>7}")
    for r in rep["rounding"]:
        print(f"  {r['account_id']:>12} {r['day']:>8} {r['debits']:>14} {r['credits']:>14} {r['net']:>12} "
              f"{r['count']:>7}")
    for acct, net in rep["rounding_totals"].items():
        print(f"  total {acct}: net {net}{'  (nets out)' if net == '0' else ''}")
    print(f"open exceptions: {len(rep['open_exceptions'])}")
    print(f"  {'entry':>8} {'kind':22} {'transfer':>12} {'expected':>12} {'observed':>12} rule")
    for e in rep["open_exceptions"]:
        print(f"  {e['leaf_index']:>8} {e['kind']:22} {e['transfer_id']:>12} {e['expected']:>12} "
              f"{e['observed']:>12} {e['rule_id']}")
    return EXIT_OK


def register(subparsers: Any) -> None:
    r = subparsers.add_parser("rules", help="deploy, list and dry-run rules; reconciliation report",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = r.add_subparsers(dest="rules_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser, target: bool = True) -> None:
        if target:
            p.add_argument("--target", default=default_targets(),
                           help="node HOST:PORT[,…] (default: the nodes of `sovledger cluster up` run from this "
                                "directory, else 127.0.0.1:7100; now %(default)s)")
            p.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
            add_tls_flags(p)

    p = sub.add_parser("deploy", help="validate, sign with an operator key and submit a rule set")
    p.add_argument("file")
    p.add_argument("--key", required=True, help="operator signer key file (PRIVATE+KEY+…)")
    common(p)
    p.set_defaults(func=cmd_deploy)
    p = sub.add_parser("validate", help="check a rule set locally (no node)")
    p.add_argument("file")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("list", help="deployed rule sets")
    p.add_argument("--json", action="store_true")
    common(p)
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("show", help="show a deployed rule set")
    p.add_argument("hash", help="hex hash, or 'active'")
    common(p)
    p.set_defaults(func=cmd_show)
    p = sub.add_parser("test", help="dry-run a transfer against the node's committed state")
    p.add_argument("file", help="rule set file, or 'active'")
    p.add_argument("--transfer", required=True, help='JSON, e.g. {"debit_account_id":1,"credit_account_id":2,'
                   '"amount":100,"ledger":1,"code":1}')
    common(p)
    p.set_defaults(func=cmd_test)
    p = sub.add_parser("report", help="rounding accounts per period and open exceptions")
    p.add_argument("--json", action="store_true")
    common(p)
    p.set_defaults(func=cmd_report)
