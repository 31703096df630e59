"""Per-stage latency of a traced region run (``SOVLEDGER_BLOCK_TRACE``, node/blocktrace.py).

``python -m bench.blocktrace_report DIR``: lines up each block's stages on the leader (the process
that proposed it) and on its followers, and prints p50/p99/max of every stage's time since the
block was proposed, and of the step from the previous stage. A follower stage is taken from the
first follower to reach it (with 3 nodes, the one that completes the quorum). Per process it also
lists garbage-collector pauses and event-loop stalls (lines ``... gc pause`` / ``... stall pause``).
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

from bench.report import percentile

LEADER = ("proposed", "persisted", "sent", "committed", "apply_start", "applied", "answered")
FOLLOWER = ("received", "persisted", "acked", "committed", "apply_start", "applied")


PAUSES = ("gc", "stall")


def load(directory: Path) -> tuple[dict[str, dict[int, dict[str, float]]], dict[tuple[str, str], list[float]]]:
    """file name → Raft index → stage → first time seen; and (file name, gc|stall) → pauses (s)."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    pauses: dict[tuple[str, str], list[float]] = defaultdict(list)
    for path in sorted(directory.glob("trace-*.txt")):
        per: dict[int, dict[str, float]] = defaultdict(dict)
        for line in path.read_text().splitlines():
            i, stage, t = line.split()
            if stage in PAUSES:
                pauses[(path.name, stage)].append(int(i) / 1e6)  # the index field holds µs
            else:
                per[int(i)].setdefault(stage, float(t))
        out[path.name] = per
    return out, pauses


def report(directory: Path) -> list[str]:
    nodes, pauses = load(directory)
    leaders = {n for n, per in nodes.items() if any("proposed" in st for st in per.values())}
    rows: dict[str, list[float]] = defaultdict(list)
    for name in leaders:
        for index, st in nodes[name].items():
            if "proposed" not in st or "answered" not in st:
                continue
            t0 = st["proposed"]
            prev = t0
            for stage in LEADER[1:]:
                if stage in st:
                    rows[f"leader {stage}"].append(st[stage] - t0)
                    rows[f"  step → {stage}"].append(st[stage] - prev)
                    prev = st[stage]
            for stage in FOLLOWER:
                seen = [p[index][stage] for n, p in nodes.items() if n != name and stage in p.get(index, {})]
                if seen:
                    rows[f"follower {stage}"].append(min(seen) - t0)
    for (name, stage), secs in sorted(pauses.items()):
        role = "leader" if name in leaders else "follower"
        rows[f"{role} {name[6:-4]} {stage} pause"] = secs
    lines = [f"{'stage (ms since proposed)':32} {'n':>6} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}"]
    for key, vals in rows.items():
        ms = [v * 1000 for v in vals]
        lines.append(f"{key:32} {len(ms):6d} {percentile(ms, 50):8.2f} {percentile(ms, 90):8.2f} "
                     f"{percentile(ms, 99):8.2f} {max(ms):8.2f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__)
        return 2
    print("\n".join(report(Path(args[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
