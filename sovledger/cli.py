"""The ``sovledger`` command: one entry point, a subcommand per role.

  node     run a ledger node (gRPC server over an LMDB data directory)
  keys     generate, show and rotate Ed25519 node keys (signed-note format)
  ca       the region's certificate authority: init, issue (node, operator, psp, auditor), revoke
  demo     start a local 3-node region, stream 1M payments, deploy rules, kill the leader, audit
  bench    run the single-node benchmark from a source checkout (`make bench` runs them all)
  cluster  run a local region of nodes (launcher): up, status, down, kill, restart, member
  psp      PSP load generator (`psp load`); the SDK itself is clients/sdk.py (docs/sdk.md)
  audit    verify checkpoints, proofs and the whole log; export, compare, prove; settlement batches
  rules    deploy, list, show, dry-run reconciliation rules; report
  pii      the region's personal data vault: put, get, erase (docs/privacy.md)
  backup   back up a node's store with its signed checkpoint (hot or from a stopped node); restore
  tail     print log entries as they are signed (follow stream, resumes across nodes)
  settle   run a settlement cycle across the federation's regions (docs/federation.md)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from clients.connect import add_tls_flags

EXIT_USAGE = 2


def _node(args: argparse.Namespace) -> int:
    from node.config import ConfigError, load_config
    from node.server import serve

    overrides = {
        "data_dir": args.data, "listen": args.listen, "advertise": args.advertise, "node_id": args.node_id,
        "region": args.region,
        "peers": args.peers, "map_size_bytes": args.map_size, "metrics_listen": args.metrics,
        "log_level": args.log_level, "log_format": args.log_format,
        "join": True if args.join or args.rejoin else None, "rejoin": True if args.rejoin else None,
        "rejoin_tls_config": args.rejoin_tls_config, "verify_full": True if args.verify_full else None,
        "operator_keys": args.operator_keys, "raft_log_keep_entries": args.raft_log_keep,
        "psp_verifier_keys": args.psp_keys, "peer_keys": args.peer_keys,
        "psp_require_signatures": True if args.require_psp_signatures else None,
        "insecure": True if args.insecure else None, "tls_ca": args.tls_ca, "tls_cert": args.tls_cert,
        "tls_key": args.tls_key, "tls_revoked": args.tls_revoked, "federation": args.federation,
        "witness_interval_ms": args.witness_interval_ms, "aggregate_every_ms": args.aggregate_every_ms,
        "settle_every_s": args.settle_every,
    }
    try:
        config = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"sovledger node: configuration error: {e}", file=sys.stderr)
        return EXIT_USAGE
    from node import logs
    from sovledger.selfcheck import replay_balances

    logs.setup(config.log_level, config.log_format, config.node_id, config.region)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config, replay_balances if config.verify_full else None))
    return 0


def _keys_gen(args: argparse.Namespace) -> int:
    from ledger.note import KeyFormatError
    from node.keys import KeyFileError, generate_key_file

    try:
        info = generate_key_file(Path(args.out), args.name, overwrite=args.force)
    except (KeyFileError, KeyFormatError) as e:
        print(f"sovledger keys gen: {e}", file=sys.stderr)
        return 1
    _emit(args, info, f"wrote {args.out}\nname:         {info['name']}\nkey id:       {info['key_id']}\n"
                      f"verifier key: {info['verifier_key']}")
    return 0


def _keys_show(args: argparse.Namespace) -> int:
    from node.keys import describe_key_file

    path = Path(args.key) if args.key else Path(args.data) / "node.key"
    if not path.exists():
        print(f"sovledger keys show: no key at {path} (create one with `sovledger keys gen`)", file=sys.stderr)
        return 1
    info = describe_key_file(path)
    _emit(args, info, f"name:         {info['name']}\nkey id:       {info['key_id']}\n"
                      f"verifier key: {info['verifier_key']}")
    return 0


def _keys_rotate(args: argparse.Namespace) -> int:
    """Ask a node (its leader role) to announce a new checkpoint key under its current one."""
    import grpc

    from clients.channels import open_sync_channel
    from clients.connect import TlsConfigError, tls_from_args
    from sovledger_pb import ledger_pb2 as pb
    from sovledger_pb import ledger_pb2_grpc as pb_grpc

    try:
        tls = tls_from_args(args, "operator-operator.toml")
    except TlsConfigError as e:
        print(f"sovledger keys rotate: {e}", file=sys.stderr)
        return 2
    with open_sync_channel(args.node, tls) as ch:
        try:
            resp = pb_grpc.AdminStub(ch).RotateKey(
                pb.RotateKeyRequest(effective_size=args.effective_size, node_id=args.node_id or ""),
                timeout=args.timeout)
        except grpc.RpcError as e:
            print(f"sovledger keys rotate: {args.node}: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    info = {"result": resp.result_name, "leaf_index": resp.leaf_index, "takeover_size": resp.takeover_size,
            "old_verifier_key": resp.old_verifier_key, "new_verifier_key": resp.new_verifier_key}
    _emit(args, info, f"KEY_ROTATION entry {resp.leaf_index}: {resp.result_name}\n"
                      f"old key:      {resp.old_verifier_key}\nnew key:      {resp.new_verifier_key}\n"
                      f"checkpoints of tree size >= {resp.takeover_size} are signed by the new key; auditors "
                      "follow it from the log (`audit verify --full`)")
    return 0 if resp.result == 0 else 1


def _demo(args: argparse.Namespace) -> int:
    from sovledger.demo import run_demo

    code = run_demo(transfers=args.transfers, accounts=args.accounts, data_dir=args.data,
                    keep=not args.stop, nodes=args.nodes)
    if args.no_federation:
        return code
    from sovledger.demo_federation import run_federation_demo  # docs/federation.md

    return code | run_federation_demo(data_dir=str(Path(args.data) / "federation"))


_BENCH_HELP = ("Single-node throughput and latency against a bare-components baseline; writes "
               "bench/results/*.json. Needs a source checkout (bench/ is not part of the installed "
               "package); `make bench` runs every benchmark.")


def _bench(args: argparse.Namespace) -> int:
    """Run ``python -m bench.single_node`` from a source checkout (bench/ is not installed)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "bench" / "single_node.py").is_file():
        print("sovledger bench: the benchmarks ship with the source tree, not the installed package; "
              "clone the repository and run `make bench` (or `python -m bench.single_node`) there",
              file=sys.stderr)
        return 1
    cmd = [sys.executable, "-m", "bench.single_node", *(["--quick"] if args.quick else [])]
    return subprocess.run(cmd, cwd=root, check=False).returncode


def _emit(args: argparse.Namespace, data: dict[str, object], text: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if getattr(args, "json", False) else text)


def _add_keys_rotate(ksub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``sovledger keys rotate``: an operator asks the leader to announce its next checkpoint key."""
    kr = ksub.add_parser("rotate", help="rotate a node's checkpoint signing key (operator certificate)",
                         description="The node announces a new checkpoint key in the log, signed by its current "
                         "key (a KEY_ROTATION entry); checkpoints after it are signed by the new key and auditors "
                         "follow the chain. Call the region's leader.")
    kr.add_argument("--node", required=True, help="HOST:PORT of the node (the leader) whose key to rotate")
    kr.add_argument("--node-id", default=None, help="refuse unless the node at --node is this node id")
    kr.add_argument("--effective-size", type=int, default=0,
                    help="earliest tree size the new key signs (default: right after the announcement)")
    kr.add_argument("--timeout", type=float, default=10.0, help="seconds")
    kr.add_argument("--json", action="store_true", help="machine-readable output")
    add_tls_flags(kr)
    kr.set_defaults(func=_keys_rotate)


def _add_node(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``sovledger node``: the flags of a ledger node (each one a key of node/config.py)."""
    n = sub.add_parser("node", help="run a ledger node", description="Run a ledger node: a gRPC server "
                       "keeping the region's hash-chained, signed log in LMDB under --data.")
    n.add_argument("--data", required=True, help="data directory (LMDB files, node key, signer guard)")
    n.add_argument("--listen", default=None, help="HOST:PORT to serve gRPC on (default 127.0.0.1:7100)")
    n.add_argument("--advertise", default=None,
                   help="HOST:PORT other nodes and clients reach this node at, when --listen is a wildcard "
                        "(e.g. the docker service name); default: --listen")
    n.add_argument("--config", default=None, help="TOML config file (keys as in node/config.py)")
    n.add_argument("--node-id", default=None, help="this node's id within the region (default node-1)")
    n.add_argument("--region", default=None, help="region name; the checkpoint origin is sovledger/REGION")
    n.add_argument("--peers", default=None, help="other region members: ID=HOST:PORT,... (Raft)")
    n.add_argument("--raft-log-keep", type=int, default=None,
                   help="Raft entries kept below the applied index (default 256); older ones are compacted "
                        "and lagging followers get a snapshot")
    n.add_argument("--operator-keys", default=None,
                   help="comma-separated verifier keys allowed to deploy rule sets (docs/rules.md)")
    n.add_argument("--peer-keys", default=None,
                   help="comma-separated verifier keys of the region's nodes; snapshots must be signed by one "
                        "(default: trust the sending leader's key on first use)")
    n.add_argument("--psp-keys", default=None,
                   help="comma-separated PSP verifier keys ([PSP_ID=]name+keyid+base64) whose signed batches "
                        "are accepted (docs/sdk.md)")
    n.add_argument("--require-psp-signatures", action="store_true",
                   help="refuse unsigned transfers and callbacks (PERMISSION_DENIED)")
    n.add_argument("--join", action="store_true",
                   help="join an existing region as a non-voting learner (new or wiped node); promote it "
                        "with `sovledger cluster member promote` once caught up")
    n.add_argument("--rejoin", action="store_true",
                   help="this node's store was lost but the region lists it as a voter: ask the leader to demote "
                        "it to a learner, catch up, then promote it with `sovledger cluster member promote`")
    n.add_argument("--rejoin-tls-config", default=None, metavar="FILE",
                   help="with --rejoin on a TLS node: an operator's client config (operator-NAME.toml) used once "
                        "to demote this node; membership is an operator's RPC")
    n.add_argument("--verify-full", action="store_true",
                   help="at start, verify every block, leaf, tree node and replayed balance before serving "
                        "(default: only the tail is checked)")
    n.add_argument("--map-size", type=int, default=None, help="LMDB map size in bytes (default 8 GiB)")
    n.add_argument("--metrics", default=None, help="HOST:PORT for Prometheus metrics (off by default)")
    n.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default INFO)")
    n.add_argument("--tls-ca", default=None, help="region CA certificate (PEM) that client and peer certificates "
                   "must chain to (`sovledger ca init`)")
    n.add_argument("--tls-cert", default=None, help="this node's certificate (`sovledger ca issue --role node`)")
    n.add_argument("--tls-key", default=None, help="this node's private key (PEM)")
    n.add_argument("--tls-revoked", default=None, help="revocation list: certificate serials in hex, one per line "
                   "(re-read when it changes; `sovledger ca revoke`)")
    n.add_argument("--insecure", action="store_true", help="serve plaintext gRPC with no authentication "
                   "(tests and local experiments only; warns at every start)")
    n.add_argument("--settle-every", type=float, default=None, metavar="SECONDS",
                   help="with --federation, in the config's first region: run a settlement cycle this often")
    n.add_argument("--federation", default=None, metavar="FILE",
                   help="federation config (docs/federation.md): the other regions this node witnesses")
    n.add_argument("--witness-interval-ms", type=int, default=None,
                   help="with --federation: how often the leader gathers cosignatures (default 1000)")
    n.add_argument("--aggregate-every-ms", type=int, default=None,
                   help="with --federation: how often the leader appends an AGGREGATE entry (default 10000; 0 off)")
    n.add_argument("--log-format", default=None, choices=("text", "json"),
                   help="text (default) or json: one object per line with node, region, term, block")
    n.set_defaults(func=_node)


def _add_keys(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``sovledger keys gen|show|rotate``."""
    k = sub.add_parser("keys", help="generate and show node keys",
                       description="Ed25519 node keys in C2SP signed-note format.")
    ksub = k.add_subparsers(dest="keys_command", metavar="ACTION")
    kg = ksub.add_parser("gen", help="generate a new key file")
    kg.add_argument("--out", required=True, help="key file to write (mode 0600)")
    kg.add_argument("--name", required=True, help="key name, e.g. eu-west/node-1")
    kg.add_argument("--force", action="store_true", help="overwrite an existing file")
    kg.add_argument("--json", action="store_true", help="machine-readable output")
    kg.set_defaults(func=_keys_gen)
    ks = ksub.add_parser("show", help="show a key's name, id and verifier key")
    ks.add_argument("--data", default=".", help="node data directory (reads DATA/node.key)")
    ks.add_argument("--key", default=None, help="key file (instead of --data)")
    ks.add_argument("--json", action="store_true", help="machine-readable output")
    ks.set_defaults(func=_keys_show)
    _add_keys_rotate(ksub)


# the commands whose modules register themselves (``register(sub)``), in the order ``--help`` lists them;
# a command line that names one imports only its module (the CLI starts in a fraction of the time)
_REGISTRARS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("sovledger.ca", ("ca",)), ("sovledger.cluster", ("cluster",)), ("clients.rules_cli", ("rules",)),
    ("clients.auditor.cli", ("audit",)), ("clients.psp_load", ("psp",)), ("clients.pii_cli", ("pii",)),
    ("clients.netting", ("settle",)), ("clients.tail", ("tail",)), ("sovledger.backup", ("backup", "restore")),
    ("clients.global_view", ("global",)), ("sovledger.regions", ("federation",)),
)


_BUILT_IN: frozenset[str] = frozenset(("node", "keys", "demo", "bench"))  # defined in this module


def _register_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], argv: Sequence[str] | None) -> None:
    """Register the named command's module only; every module for help, no command or an unknown one."""
    first = next(iter(argv), None) if argv is not None else None
    if first in _BUILT_IN:
        return
    named = [module for module, names in _REGISTRARS if first in names]
    for module in named or [module for module, _ in _REGISTRARS]:
        importlib.import_module(module).register(sub)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line, or (``argv`` naming one of the commands below) only that command's part."""
    p = argparse.ArgumentParser(prog="sovledger", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    _add_node(sub)
    _add_keys(sub)

    d = sub.add_parser("demo", help="local end-to-end demo",
                       description="Start a local 3-node region, stream 1M payments with a progress bar, "
                       "kill the leader mid-run, audit, print a summary table; the region keeps running.")
    d.add_argument("--transfers", type=int, default=1_000_000)
    d.add_argument("--accounts", type=int, default=10_000)
    d.add_argument("--nodes", type=int, default=3, choices=(1, 3, 5))
    d.add_argument("--data", default="demo-data", help="data directory for the demo region")
    d.add_argument("--stop", action="store_true", help="stop the region at the end (default: leave it running)")
    d.add_argument("--no-federation", action="store_true",
                   help="skip the federation part (three small regions witnessing each other, global revenue)")
    d.set_defaults(func=_demo)

    b = sub.add_parser("bench", help="run the single-node benchmark", description=_BENCH_HELP)
    b.add_argument("--quick", action="store_true", help="fewer transfers, for a smoke run")
    b.set_defaults(func=_bench)

    _register_commands(sub, argv)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    if list(sys.argv[1:2] if argv is None else argv[:1]) == ["node"]:
        from node.logs import quiet_grpc_core

        quiet_grpc_core()  # before build_parser imports gRPC: its core reads the variable once
    parser = build_parser(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
