"""``python -m tests.sim --seeds N [--start S] [--nodes 3|5] [--steps K] [--ledger]`` runs a swarm and
prints the first failing seed; ``--seed X`` replays one seed exactly (same trace hash every time).
``--ledger`` replicates the real ledger state machine (tests/sim/ledger_app.py) instead of the toy."""

from __future__ import annotations

import argparse
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tests.sim.simulator import Options, SafetyViolation, run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.sim", description="Raft simulator swarm")
    ap.add_argument("--seeds", type=int, default=100, help="how many seeds to run")
    ap.add_argument("--start", type=int, default=0, help="first seed")
    ap.add_argument("--seed", type=int, default=None, help="replay this one seed (verbose)")
    ap.add_argument("--nodes", type=int, default=3, choices=(3, 5))
    ap.add_argument("--steps", type=int, default=600, help="steps of the faulty (safety) phase")
    ap.add_argument("--no-liveness", action="store_true", help="skip the heal-then-progress phase")
    ap.add_argument("--bug-send-before-sync", action="store_true",
                    help="run a broken driver that sends before fsync (the checkers should catch it)")
    ap.add_argument("--ledger", action="store_true",
                    help="replicate the real ledger (LedgerState over a MemoryStore) and propose real blocks")
    ap.add_argument("--bug-ledger-clock", type=int, default=0, metavar="NODE",
                    help="with --ledger: NODE applies blocks with its own clock (the checkers should catch it)")
    args = ap.parse_args(argv)
    if args.bug_ledger_clock and not (args.ledger and 1 <= args.bug_ledger_clock <= args.nodes):
        ap.error("--bug-ledger-clock needs --ledger and a node id between 1 and --nodes")
    opts = Options(nodes=args.nodes, steps=args.steps, bug_send_before_sync=args.bug_send_before_sync,
                   ledger=args.ledger, bug_ledger_clock_node=args.bug_ledger_clock)
    seeds = [args.seed] if args.seed is not None else list(range(args.start, args.start + args.seeds))
    started = time.perf_counter()
    with Progress(TextColumn("[bold]sim[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), disable=args.seed is not None or not sys.stderr.isatty(),
                  console=Console(stderr=True)) as progress:
        mode = ", ledger" if args.ledger else ""
        task = progress.add_task(f"{args.nodes} nodes{mode}, seeds from {seeds[0]}", total=len(seeds))
        for s in seeds:
            try:
                sim = run(s, opts, liveness=not args.no_liveness)
            except SafetyViolation as e:
                progress.stop()
                print(f"FAIL {e}", file=sys.stderr)
                return 1
            progress.advance(task)
            if args.seed is not None:
                print(f"seed {s}: ok, trace {sim.trace.hexdigest()[:16]}, applied "
                      f"{max(n.app.applied for n in sim.nodes.values())}, stats {sim.stats}")
    elapsed = time.perf_counter() - started
    print(f"{len(seeds)} seeds ok ({args.nodes} nodes, {args.steps} steps{mode}) in {elapsed:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
