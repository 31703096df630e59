"""``sovledger tail``: print a region's log entries as they are signed (one line per entry).

    sovledger tail [--target HOST:PORT,…] [--from N] [--count K] [--json]

Uses the follow stream (clients/follow.py): resumes on another node when one goes away, never
prints an entry twice or skips one. ``--json`` prints one JSON object per line.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from clients.channels import open_sync_channel
from clients.connect import TlsConfigError, add_tls_flags, tls_from_args
from clients.follow import FollowError, follow
from clients.targets import default_targets
from ledger.codec import ACCOUNT_SIZE, TRANSFER_SIZE, EncodingError, decode_account, decode_leaf, decode_transfer
from ledger.types import EventKind


def describe_leaf(index: int, raw: bytes) -> dict[str, Any]:
    """A leaf as plain JSON values (ids and amounts as decimal integers, the raw leaf in hex)."""
    try:
        leaf = decode_leaf(raw)
    except EncodingError as e:
        return {"index": index, "error": str(e), "leaf_hex": raw.hex()}
    out: dict[str, Any] = {"index": index, "kind": EventKind(leaf.kind).name, "result": leaf.result,
                           "timestamp_ns": leaf.timestamp_ns}
    if len(leaf.body) == TRANSFER_SIZE and leaf.kind in (EventKind.CREATE_TRANSFER, EventKind.LEDGER_TRANSFER):
        t = decode_transfer(leaf.body)
        out.update(id=t.id, debit_account_id=t.debit_account_id, credit_account_id=t.credit_account_id,
                   amount=t.amount, ledger=t.ledger, code=t.code, flags=t.flags, psp_id=t.psp_id)
        if t.pending_id:
            out["pending_id"] = t.pending_id
    elif len(leaf.body) == ACCOUNT_SIZE and leaf.kind == EventKind.CREATE_ACCOUNT:
        a = decode_account(leaf.body)
        out.update(id=a.id, ledger=a.ledger, code=a.code, flags=a.flags)
    elif len(leaf.body) >= 16:
        out["id"] = int.from_bytes(leaf.body[:16], "little")
    out["leaf_hex"] = raw.hex()
    return out


def _text(d: dict[str, Any]) -> str:
    head = f"#{d['index']:<8} {d.get('kind', '?'):<19} result {d.get('result', '?'):<4}"
    rest = " ".join(f"{k}={d[k]}" for k in ("id", "debit_account_id", "credit_account_id", "amount", "pending_id")
                    if k in d)
    return f"{head} {rest}".rstrip()


def run_tail(args: argparse.Namespace) -> int:
    end = args.start + args.count if args.count else 0
    try:
        tls = tls_from_args(args, "auditor-auditor.toml")
    except TlsConfigError as e:
        print(f"sovledger tail: {e}", file=sys.stderr)
        return 2
    try:
        for entry in follow(args.target, args.start, end=end, give_up_after_s=args.give_up,
                            channel_factory=lambda target: open_sync_channel(target, tls)):
            d = describe_leaf(entry.index, entry.leaf)
            print(json.dumps(d, sort_keys=True) if args.json else _text(d), flush=True)
    except FollowError as e:
        print(f"sovledger tail: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


def register(sub: Any) -> None:
    t = sub.add_parser("tail", help="print log entries as they are signed (follow stream)",
                       description="Follow the region's log from an index on, resuming on another node "
                                   "when one goes away (no gaps, no duplicates).")
    t.add_argument("--target", default=default_targets(),
                   help="node(s) HOST:PORT,… — any member will do (default: the nodes of `sovledger cluster up` "
                        "run from this directory, else 127.0.0.1:7100; now %(default)s)")
    t.add_argument("--from", dest="start", type=int, default=0, help="first leaf index (default 0)")
    t.add_argument("--count", type=int, default=0, help="stop after this many entries (default: follow for ever)")
    t.add_argument("--json", action="store_true", help="one JSON object per line")
    t.add_argument("--give-up", type=float, default=60.0,
                   help="seconds without any reachable node before giving up (default %(default)s)")
    add_tls_flags(t)
    t.set_defaults(func=run_tail)
