"""A local federation: ``sovledger cluster up --regions eu-west,us-east,ap-south --nodes 3``.

Each region is an ordinary launcher region under ``DATA/NAME`` (its own CA, keys, ``cluster.json``);
``DATA/federation.json`` (``ledger/federation.py``, docs/federation.md) names them all and is passed
to every node with ``--federation``. Node checkpoint keys (``node.key``) and witness keys
(``witness.key``) are made here before the first start so the config can list them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rich.console import Console

from ledger.federation import (
    Federation,
    FederationError,
    dump_federation,
    parse_federation,
    valid_region_name,
)
from ledger.note import Signer, cosigner_verifier
from node.keys import write_key_file
from sovledger.cluster import Cluster, _alive, _status_table, prepare_region, print_started, start_all

FEDERATION_FILE = "federation.json"
WITNESS_KEY_FILE = "witness.key"
REGION_PORT_STRIDE = 10  # with --port P: region i's node-1 listens on P + 10·i


def witness_key_name(region: str, node_id: str) -> str:
    return f"{region}/{node_id}/witness"


def is_federation(data: Path) -> bool:
    return (data / FEDERATION_FILE).exists() and not (data / "cluster.json").exists()


def load(data: Path) -> Federation:
    return parse_federation((data / FEDERATION_FILE).read_bytes())


def region_clusters(data: Path) -> list[Cluster]:
    """The launcher state of every region of the federation under ``data``, in config order."""
    return [Cluster(data / name) for name in load(data).names if (data / name / "cluster.json").exists()]


def parse_region_names(spec: str) -> list[str]:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    bad = [n for n in names if not valid_region_name(n)]
    if bad or not names:
        raise FederationError(f"--regions {spec!r}: names must be alphanumeric with - or _ ({', '.join(bad)})")
    if len(set(names)) != len(names):
        raise FederationError(f"--regions {spec!r} repeats a region")
    return names


def _node_keys(cluster: Cluster) -> tuple[list[str], list[str]]:
    """Make every node's checkpoint and witness key; returns their verifier strings."""
    ckeys, wkeys = [], []
    for n in cluster.nodes:
        signer = Signer.generate(f"{cluster.region}/{n.node_id}")
        write_key_file(Path(n.data_dir) / "node.key", signer, overwrite=True)
        witness = Signer.generate(witness_key_name(cluster.region, n.node_id))
        write_key_file(Path(n.data_dir) / WITNESS_KEY_FILE, witness, overwrite=True)
        ckeys.append(signer.verifier.to_string())
        wkeys.append(cosigner_verifier(witness).to_string())
    return ckeys, wkeys


def _region_entry(cluster: Cluster, data: Path) -> dict[str, object]:
    ckeys, wkeys = _node_keys(cluster)
    entry: dict[str, object] = {"name": cluster.region, "checkpoint_keys": ckeys, "witness_keys": wkeys,
                                "nodes": [{"id": n.node_id, "address": n.target} for n in cluster.nodes]}
    if cluster.tls:
        entry["ca"] = str((cluster.ca_dir / "ca.pem").relative_to(data.absolute()))
    return entry


def create_federation(data: Path, names: list[str], nodes: int, tls: bool, first_port: int = 0,
                      aggregate_every_ms: int = 5000) -> list[Cluster]:
    """Prepare every region and write ``DATA/federation.json`` (nothing started yet)."""
    fed_path = (data / FEDERATION_FILE).absolute()
    flags = ("--federation", str(fed_path), "--aggregate-every-ms", str(aggregate_every_ms))
    clusters, entries = [], []
    for i, name in enumerate(names):
        port = first_port + REGION_PORT_STRIDE * i if first_port else 0
        c = prepare_region(data / name, name, nodes, tls, port, flags)
        entries.append(_region_entry(c, data))
        clusters.append(c)
    raw = json.dumps({"format": "sovledger-federation/1", "regions": entries}).encode()
    fed = parse_federation(raw)  # validate what we are about to hand every node
    data.mkdir(parents=True, exist_ok=True)
    fed_path.write_bytes(dump_federation(fed))
    return clusters


def up_regions(args: argparse.Namespace, console: Console) -> int:
    data = Path(args.data)
    if (data / FEDERATION_FILE).exists() and any(_alive(n.pid) for c in region_clusters(data) for n in c.nodes):
        console.print(f"[yellow]a federation is already running under {data}; `sovledger cluster down` first[/yellow]")
        return 1
    try:
        names = parse_region_names(args.regions)
    except FederationError as e:
        console.print(f"[red]{e}[/red]")
        return 2
    clusters = create_federation(data, names, args.nodes, tls=not args.insecure, first_port=args.port,
                                 aggregate_every_ms=args.aggregate_every_ms)
    for c in clusters:
        start_all(c)
    leaders: dict[str, str] = {}
    for c in clusters:
        try:
            leader, took = c.wait_leader(args.timeout)
        except TimeoutError as e:
            console.print(f"[red]region {c.region}: {e}[/red]")
            return 1
        print_started(console, c, leader, took)
        leaders[c.region] = leader.target
    fed = load(data)
    left = wait_witnessed(clusters, fed, args.timeout)
    if left:
        console.print(f"[red]not cosigned by every other region within {args.timeout:.0f}s: {', '.join(left)} "
                      "(the witness gatherer logs why in the region leader's node.log)[/red]")
        return 1
    console.print(f"every region's checkpoint is cosigned by all {len(clusters) - 1} other region(s)")
    console.print(f"federation config: {data / FEDERATION_FILE}; stop with: sovledger cluster down --data {data}")
    if args.json:
        print(json.dumps({"federation": str(data / FEDERATION_FILE), "leaders": leaders,
                          "regions": {c.region: [n.target for n in c.nodes] for c in clusters}}))
    return 0


def wait_witnessed(clusters: list[Cluster], fed: Federation, timeout_s: float) -> list[str]:
    """Wait until each region's leader serves a checkpoint cosigned by every witness of the other regions
    (its gatherer's first round, node/witness.py), so the federation a command line just started is
    usable at once; the regions still short of that after ``timeout_s``."""
    from ledger.witness import Policy, check_policy
    from sovledger_pb import witness_pb2 as wpb
    from sovledger_pb import witness_pb2_grpc as wpb_grpc

    def cosigned(c: Cluster) -> bool:
        keys = fed.witnesses_of(fed.region(c.region).origin)
        leader = c.leader()
        note = c._ask(leader, lambda ch: wpb_grpc.WitnessStub(ch).GetRegionCheckpoint(
            wpb.RegionCheckpointRequest(), timeout=2.0).note) if leader is not None else None
        return bool(note) and check_policy(str(note), keys, Policy(len(keys), len(keys))).met

    deadline = time.monotonic() + timeout_s
    waiting = list(clusters)
    while waiting:
        waiting = [c for c in waiting if not cosigned(c)]
        if not waiting or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return [c.region for c in waiting]


def status_regions(args: argparse.Namespace) -> int:
    clusters = region_clusters(Path(args.data))
    if not clusters:
        print(f"no regions under {args.data}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"regions": {c.region: c.rows() for c in clusters}}, indent=2))
        return 0
    console = Console()
    for c in clusters:
        console.print(_status_table(c))
    return 0


def down_regions(args: argparse.Namespace) -> int:
    clusters = region_clusters(Path(args.data))
    for c in clusters:
        c.stop_all()
    print(f"stopped {sum(len(c.nodes) for c in clusters)} node(s) in {len(clusters)} region(s); "
          f"data kept under {args.data}")
    return 0


# -- `sovledger federation add-region`: the config for hand-made or container deployments --------


def _node_spec(spec: str) -> tuple[str, str, Path]:
    node_id, address, data = [*spec.split("=", 2), "", ""][:3]
    if not node_id or not address or not data:
        raise FederationError(f"--node {spec!r} must be NODE_ID=HOST:PORT=DATA_DIR")
    return node_id, address, Path(data)


def _key_of(path: Path, name: str) -> Signer:
    from node.keys import load_key_file

    if not path.exists():
        write_key_file(path, Signer.generate(name))
    signer = load_key_file(path)
    if signer.name != name:
        raise FederationError(f"{path} holds key {signer.name!r}, expected {name!r}")
    return signer


def add_region(config: Path, region: str, node_specs: list[str], ca: str = "") -> Federation:
    """Add (or replace) ``region`` in the config file: each node's checkpoint and witness keys are read
    from its data directory (made there first if missing, as the node itself would)."""
    nodes: list[dict[str, str]] = []
    ckeys: list[str] = []
    wkeys: list[str] = []
    for spec in node_specs:
        node_id, address, data = _node_spec(spec)
        data.mkdir(parents=True, exist_ok=True)
        nodes.append({"id": node_id, "address": address})
        ckeys.append(_key_of(data / "node.key", f"{region}/{node_id}").verifier.to_string())
        witness = _key_of(data / WITNESS_KEY_FILE, witness_key_name(region, node_id))
        wkeys.append(cosigner_verifier(witness).to_string())
    entry: dict[str, object] = {"name": region, "nodes": nodes, "checkpoint_keys": ckeys, "witness_keys": wkeys}
    if ca:
        entry["ca"] = ca
    regions = json.loads(dump_federation(parse_federation(config.read_bytes())))["regions"] if config.exists() else []
    regions = [r for r in regions if r["name"] != region] + [entry]
    fed = parse_federation(json.dumps({"format": "sovledger-federation/1", "regions": regions}).encode())
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_bytes(dump_federation(fed))
    return fed


def _cmd_add_region(args: argparse.Namespace) -> int:
    try:
        fed = add_region(Path(args.config), args.region, args.node, args.ca)
    except (FederationError, OSError) as e:
        print(f"sovledger federation add-region: {e}", file=sys.stderr)
        return 2
    print(f"{args.config}: regions {', '.join(fed.names)}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    f = sub.add_parser("federation", help="the federation config (docs/federation.md)")
    fsub = f.add_subparsers(dest="federation_command", metavar="ACTION")
    a = fsub.add_parser("add-region", help="add a region to a federation config, reading its nodes' keys")
    a.add_argument("--config", required=True, help="federation.json to create or update")
    a.add_argument("--region", required=True)
    a.add_argument("--node", action="append", required=True, metavar="NODE_ID=HOST:PORT=DATA_DIR",
                   help="a node of the region and its data directory (keys are read, or made, there); repeat")
    a.add_argument("--ca", default="", help="the region CA certificate, relative to the config's directory")
    a.set_defaults(func=_cmd_add_region)

    def usage(args: argparse.Namespace) -> int:
        f.print_help()
        return 2

    f.set_defaults(func=usage)
