"""``sovledger global revenue``: one table of every region's newest aggregates, each proven.

For every region of the federation config: fetch its cosigned checkpoint and newest AGGREGATE entry
(``Witness.GetAggregates``), check the checkpoint's signature with the region's checkpoint keys,
the witness policy (``--witnesses K-of-N``, default: at least one witness of another region), the
entry's inclusion proof against that checkpoint, and that the entry is an ok AGGREGATE; then print
one row per (region, ledger, psp) and the totals per ledger across regions. Only aggregates cross
the border: no account id, transfer or personal data is fetched. A region that fails a check is
reported and the exit code is 1 (2 for usage errors); ``--json`` prints the same data.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from clients.connect import TlsConfigError, add_tls_flags, tls_from_args
from clients.federation import FederationClient
from ledger.aggregates import Aggregate, AggregateError, AggregateRow
from ledger.codec import EncodingError, decode_leaf
from ledger.federation import FederationError, Region
from ledger.merkle import ProofError, verify_leaf_inclusion
from ledger.note import Checkpoint, NoteError, open_note, split_note
from ledger.types import EventKind, Result
from ledger.witness import Policy, check_policy


@dataclass(frozen=True, slots=True)
class RegionView:
    region: str
    ok: bool
    problem: str = ""
    tree_size: int = 0
    cosigned_by: tuple[str, ...] = ()
    leaf_index: int = -1
    aggregate: Aggregate | None = None


def _policy(arg: str, region: Region, client: FederationClient) -> Policy:
    witnesses = client.fed.witnesses_of(region.origin)
    return Policy.parse(arg) if arg else Policy(1, max(1, len(witnesses)))


def region_view(client: FederationClient, region: Region, policy_arg: str) -> RegionView:
    """Fetch and verify one region's newest aggregate (never raises for a region's fault)."""
    resp = client.aggregates(region)
    if resp is None:
        return RegionView(region.name, False, "no node answered with a checkpoint")
    try:
        open_note(resp.note, list(region.checkpoint_keys))
        cp = Checkpoint.parse(split_note(resp.note)[0])
        if cp.origin != region.origin:
            return RegionView(region.name, False, f"checkpoint of {cp.origin}, expected {region.origin}")
        verdict = check_policy(resp.note, client.fed.witnesses_of(region.origin), _policy(policy_arg, region, client))
        if not verdict.met:
            return RegionView(region.name, False, f"witness policy not met: {verdict.reason}", cp.size)
        if not resp.entries:
            return RegionView(region.name, True, "no aggregate entry yet", cp.size, verdict.cosigned_by)
        e = resp.entries[0]
        verify_leaf_inclusion(e.leaf, e.leaf_index, cp.size, list(e.proof), cp.root)
        leaf = decode_leaf(e.leaf)
        if leaf.kind != EventKind.AGGREGATE or leaf.result != Result.OK:
            return RegionView(region.name, False, f"entry {e.leaf_index} is not an ok AGGREGATE", cp.size)
        return RegionView(region.name, True, "", cp.size, verdict.cosigned_by, e.leaf_index,
                          Aggregate.decode(leaf.body))
    except (NoteError, ProofError, EncodingError, AggregateError, ValueError) as err:
        return RegionView(region.name, False, f"{type(err).__name__}: {err}")


def _totals(views: list[RegionView]) -> dict[int, AggregateRow]:
    out: dict[int, AggregateRow] = {}
    for v in views:
        for r in v.aggregate.rows if v.aggregate else ():
            t = out.get(r.ledger, AggregateRow(r.ledger, 0))
            out[r.ledger] = AggregateRow(r.ledger, 0, t.transfers + r.transfers, t.volume + r.volume,
                                         t.fees + r.fees, t.residuals + r.residuals, t.exceptions + r.exceptions)
    return dict(sorted(out.items()))


def _json(views: list[RegionView]) -> dict[str, Any]:
    def view(v: RegionView) -> dict[str, Any]:
        agg = v.aggregate
        return {"region": v.region, "ok": v.ok, "problem": v.problem, "tree_size": v.tree_size,
                "cosigned_by": list(v.cosigned_by), "leaf_index": v.leaf_index,
                "as_of_ns": agg.as_of_ns if agg else None, "covers_leaves": agg.to_index if agg else 0,
                "rows": [asdict(r) for r in agg.rows] if agg else []}

    return {"regions": [view(v) for v in views],
            "totals": [{k: v for k, v in asdict(r).items() if k != "psp_id"} for r in _totals(views).values()]}


def _table(views: list[RegionView]) -> Table:
    t = Table(title="global revenue (minor units; proven against witnessed checkpoints)")
    for col in ("region", "ledger", "psp", "transfers", "volume", "fees", "residuals", "exceptions"):
        t.add_column(col, justify="left" if col == "region" else "right")
    for v in views:
        if not v.ok or v.aggregate is None:
            t.add_row(v.region, "", "", "", "", "", "", "", style="red" if not v.ok else "dim")
            t.add_row(f"  {v.problem or 'no aggregate yet'}", "", "", "", "", "", "", "")
            continue
        for r in v.aggregate.rows:
            t.add_row(v.region, str(r.ledger), str(r.psp_id), f"{r.transfers:,}", f"{r.volume:,}", f"{r.fees:,}",
                      f"{r.residuals:,}", f"{r.exceptions:,}")
    for r in _totals(views).values():
        t.add_row("[bold]all regions[/bold]", str(r.ledger), "", f"{r.transfers:,}", f"{r.volume:,}",
                  f"{r.fees:,}", f"{r.residuals:,}", f"{r.exceptions:,}")
    return t


def cmd_revenue(args: argparse.Namespace) -> int:
    try:
        client = FederationClient(args.federation, tls_from_args(args, "auditor-auditor.toml"), args.timeout)
        if args.witnesses:
            Policy.parse(args.witnesses)
    except (OSError, FederationError, TlsConfigError, ValueError) as e:
        print(f"sovledger global revenue: {e}", file=sys.stderr)
        return 2
    views = [region_view(client, r, args.witnesses) for r in client.fed.regions]
    if args.json:
        print(json.dumps(_json(views), indent=2))
    else:
        console = Console()
        console.print(_table(views))
        for v in views:
            if v.ok and v.aggregate is not None:
                console.print(f"{v.region}: entry {v.leaf_index} in checkpoint {v.tree_size:,}, cosigned by "
                              f"{', '.join(v.cosigned_by)}")
    return 0 if all(v.ok for v in views) else 1


def register(sub: Any) -> None:
    g = sub.add_parser("global", help="views across the regions of a federation (aggregates only)")
    gsub = g.add_subparsers(dest="global_command", metavar="VIEW")
    r = gsub.add_parser("revenue", help="every region's newest aggregates, proven, in one table")
    r.add_argument("--federation", required=True, help="federation config (docs/federation.md)")
    r.add_argument("--witnesses", default="", metavar="K-of-N",
                   help="witness policy per region (default: 1 of the other regions' witnesses)")
    r.add_argument("--json", action="store_true", help="machine-readable output")
    r.add_argument("--timeout", type=float, default=10.0, help="per-call timeout, seconds")
    add_tls_flags(r)
    r.set_defaults(func=cmd_revenue)

    def no_view(args: argparse.Namespace) -> int:
        g.print_help()
        return 2

    g.set_defaults(func=no_view)
