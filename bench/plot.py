"""Plots of the benchmark results (matplotlib, Agg backend): PNGs beside the JSON in bench/results/.

``python -m bench.plot`` plots the latest ``region-*.json`` and ``peers-*.json`` into
``bench-<timestamp>.png`` (and a combined ``bench-<timestamp>.json`` holding both plus the machine):

* throughput vs batch size — sovledger 1 node, 3-node region, PostgreSQL DIY ledger, etcd;
* acknowledgement latency p50/p99 vs batch size for 1 node and the region, plus the half-rate runs;
* ratios sovledger ÷ peer per batch size.

``plot_scale`` draws the scale run (bench/scale.py calls it): transfers/s per chunk (raw and
probe-normalised), p99 per chunk, disk bytes per transfer, node RSS (total/anonymous/file-backed).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.report import latest, load, machine, results_dir, write_results

COLORS = {"sovledger-1": "#1f77b4", "sovledger-3": "#d62728", "postgres": "#2ca02c", "etcd": "#9467bd"}
LABELS = {"sovledger-1": "sovledger 1 node", "sovledger-3": "sovledger 3-node region",
          "postgres": "PostgreSQL DIY ledger (1 node)", "etcd": "etcd 3 members (raw puts)"}


def _machine_line(m: dict[str, Any] | None) -> str:
    if not m:
        return ""
    return (f"{m.get('cpus')} CPUs · {m.get('cpu_model', m.get('processor', '?'))} · Python {m.get('python')} · "
            f"kernel {m.get('kernel', m.get('platform', '?'))} · load at start {m.get('loadavg_at_start', '?')} · "
            "shared machine: compare ratios")


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = sorted((r["batch"], r[key]) for r in rows if r.get(key) is not None)
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_bench(region: dict[str, Any] | None, peers: dict[str, Any] | None, out_png: Path) -> Path:
    fig, axes = plt.subplots(1, 3, figsize=(18, 7.2))
    ax_tp, ax_lat, ax_ratio = axes

    # throughput vs batch size: prefer the peers run (all systems in one run); region run as dashed
    drawn = False
    if peers:
        for name, res in peers["systems"].items():
            if res.get("skipped") or not res.get("rows"):
                continue
            xs, ys = _series(res["rows"], "tx_per_s")
            ax_tp.plot(xs, ys, "o-", color=COLORS.get(name), label=LABELS.get(name, name), lw=2)
            drawn = True
    if region:
        for key, name in (("single", "sovledger-1"), ("region", "sovledger-3")):
            xs, ys = _series(region[key], "tx_per_s")
            ax_tp.plot(xs, ys, "s--", color=COLORS[name], alpha=0.55, label=f"{LABELS[name]} (region run)")
            drawn = True
    ax_tp.axhline(60_000, color="grey", ls=":", lw=1)
    ax_tp.annotate("region target 60k/s @ 8189", (1.0, 60_000), xycoords=("axes fraction", "data"),
                   xytext=(-4, 3), textcoords="offset points", ha="right", color="grey", fontsize=8)
    ax_tp.set(xscale="log", xlabel="transfers per batch (log)", ylabel="transfers (puts) per second",
              title="Throughput vs batch size")
    ax_tp.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / 1000:.0f}k"))
    ax_tp.set_ylim(bottom=0)
    if drawn:
        ax_tp.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    ax_tp.grid(alpha=0.3)

    # latency percentiles: 1 node vs region
    if region:
        for key, name in (("single", "sovledger-1"), ("region", "sovledger-3")):
            for pct, style in (("p50_ms", "o-"), ("p99_ms", "^--")):
                xs, ys = _series(region[key], pct)
                ax_lat.plot(xs, ys, style, color=COLORS[name], label=f"{LABELS[name]} {pct[:3]}")
        for h in region.get("half_rate", []):
            name = "sovledger-3" if h["setup"] == "region" else "sovledger-1"
            ax_lat.plot([h["batch"]], [h["p99_ms"]], "*", ms=14, color=COLORS[name], mec="black",
                        label=f"{LABELS[name]} p99 @ {h['target_rate']:,.0f} tx/s (≈ half region max)")
        ax_lat.axhline(50, color="grey", ls=":", lw=1)
        ax_lat.annotate("p99 target 50 ms @ half rate", (1.0, 50), xycoords=("axes fraction", "data"),
                        xytext=(-4, 3), textcoords="offset points", ha="right", color="grey", fontsize=8)
        handles, labels = ax_lat.get_legend_handles_labels()
        uniq = dict(zip(labels, handles, strict=True))
        ax_lat.legend(uniq.values(), uniq.keys(), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13),
                      ncol=2)
    ax_lat.set(xscale="log", yscale="log", xlabel="transfers per batch (log)",
               ylabel="batch ack latency, ms (log)", title="Ack latency (saturated; ★ = rate-limited)")
    ax_lat.grid(alpha=0.3, which="both")

    # ratios sovledger ÷ peer
    if peers and peers.get("ratios"):
        batches = sorted(peers["ratios"], key=int)
        keys = [k for k in ("sovledger-1/postgres", "sovledger-3/postgres", "sovledger-1/etcd", "sovledger-3/etcd")
                if any(peers["ratios"][b].get(k) for b in batches)]
        width = 0.8 / max(1, len(keys))
        for i, k in enumerate(keys):
            vals = [peers["ratios"][b].get(k) or 0 for b in batches]
            pos = [j + i * width for j in range(len(batches))]
            bars = ax_ratio.bar(pos, vals, width, label=k.replace("sovledger-1", "1 node").replace(
                "sovledger-3", "region").replace("/", " ÷ "),
                color=COLORS["sovledger-1" if k.startswith("sovledger-1") else "sovledger-3"],
                alpha=0.9 if k.endswith("postgres") else 0.5, hatch="" if k.endswith("postgres") else "//")
            ax_ratio.bar_label(bars, fmt="%.2f", fontsize=7)
        ax_ratio.set_xticks([j + width * (len(keys) - 1) / 2 for j in range(len(batches))], batches)
        ax_ratio.axhline(1, color="black", lw=1)
        if keys:
            ax_ratio.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    ax_ratio.set(xlabel="transfers per batch", ylabel="sovledger ÷ peer (× throughput)",
                 title="Ratios, same run (>1: sovledger faster)")
    ax_ratio.grid(alpha=0.3, axis="y")

    fig.suptitle("sovledger benchmarks — 10k debit-limited accounts, uniform random transfers, all on 127.0.0.1",
                 fontsize=13)
    fig.text(0.5, 0.01, _machine_line((peers or region or {}).get("machine")), ha="center", fontsize=8,
             color="dimgrey")
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def _plot_rss(ax: Any, x: list[float], rows: list[dict[str, Any]]) -> None:
    """Resident memory of the node after each chunk: total, anonymous, file-backed (the LMDB map)."""
    pts = [(xx, r["rss_mib"]) for xx, r in zip(x, rows, strict=True) if r.get("rss_mib")]
    for key, style, label in (("rss", "o-", "RSS"), ("anon", "s--", "anonymous"), ("file", "x:", "file-backed")):
        ax.plot([p[0] for p in pts], [p[1][key] for p in pts], style, label=label)
    ax.axhline(1024, color="crimson", ls=":", lw=1, label="1 GiB")
    ax.set(xlabel="transfers in the ledger (millions)", ylabel="MiB", title="Node memory after each chunk")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def plot_scale(scale: dict[str, Any], out_png: Path) -> Path:
    rows = scale["chunks"]
    x = [r["total"] / 1e6 for r in rows]
    fig, (a, b, c, d) = plt.subplots(1, 4, figsize=(22, 5))
    a.plot(x, [r["tx_per_s"] for r in rows], "o-", color=COLORS["sovledger-1"], label="transfers/s (raw)")
    a.set(xlabel="transfers in the ledger (millions)", ylabel="transfers/s", title="Throughput per chunk")
    a.set_ylim(bottom=0)
    a.grid(alpha=0.3)
    a2 = a.twinx()
    first = rows[0]["probe_ratio"] or 1
    a2.plot(x, [100 * (r["probe_ratio"] or 0) / first for r in rows], "s--", color="darkorange",
            label="÷ probe, % of chunk 1")
    a2.axhline(90, color="grey", ls=":", lw=1)
    a2.set_ylabel("probe-normalised, % of chunk 1")
    a2.set_ylim(0, 130)
    h1, l1 = a.get_legend_handles_labels()
    h2, l2 = a2.get_legend_handles_labels()
    a.legend(h1 + h2, l1 + l2, fontsize=8, loc="lower left")
    b.plot(x, [r["p50_ms"] for r in rows], "o-", label="p50")
    b.plot(x, [r["p99_ms"] for r in rows], "^-", color="crimson", label="p99")
    b.set(xlabel="transfers in the ledger (millions)", ylabel="batch ack latency, ms",
          title=f"Latency per chunk (batches of {scale['batch']})")
    b.set_ylim(bottom=0)
    b.legend(fontsize=8)
    b.grid(alpha=0.3)
    c.plot(x, [r["disk_bytes_per_transfer"] for r in rows], "o-", color="teal", label="cumulative")
    c.plot(x, [r["chunk_disk_bytes_per_transfer"] for r in rows], "x--", color="grey", label="this chunk")
    c.set(xlabel="transfers in the ledger (millions)", ylabel="disk bytes per transfer",
          title="Disk bytes per transfer (allocated)")
    top = max(max(r["disk_bytes_per_transfer"], r["chunk_disk_bytes_per_transfer"]) for r in rows)
    c.set_ylim(0, top * 1.2 or 1)
    for r, xx in zip(rows, x, strict=True):
        c.annotate(f"{r['disk_bytes_per_transfer']:.0f}", (xx, r["disk_bytes_per_transfer"]), xytext=(0, 6),
                   textcoords="offset points", ha="center", fontsize=7)
    c.legend(fontsize=8, loc="lower right")
    c.grid(alpha=0.3)
    _plot_rss(d, x, rows)
    fig.suptitle(f"sovledger scale: one node, {rows[-1]['total']:,} transfers — degradation first→last chunk: "
                 f"raw {scale['degradation_raw_pct']:.1f}%, probe-normalised "
                 f"{scale['degradation_normalised_pct']:.1f}% (target ≤ 10%; negative = faster)", fontsize=12)
    fig.text(0.5, 0.01, _machine_line(scale.get("machine")), ha="center", fontsize=8, color="dimgrey")
    fig.tight_layout(rect=(0, 0.03, 1, 0.94))
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=None, help="results directory (default bench/results)")
    ap.add_argument("--region", type=Path, default=None, help="region JSON (default: latest)")
    ap.add_argument("--peers", type=Path, default=None, help="peers JSON (default: latest)")
    ap.add_argument("--scale", type=Path, default=None, help="also plot this scale JSON")
    args = ap.parse_args(argv)
    region = load(args.region or latest("region", args.dir))
    peers = load(args.peers or latest("peers", args.dir))
    if not region and not peers and not args.scale:
        print("no region-*.json or peers-*.json found: run `python -m bench.region` / `python -m bench.peers` first",
              file=sys.stderr)
        return 1
    if region or peers:
        combined = write_results("bench", {"machine": machine(), "region": region, "peers": peers}, args.dir)
        png = plot_bench(region, peers, combined.with_suffix(".png"))
        print(f"wrote {combined} and {png}")
    if args.scale:
        data = load(args.scale)
        assert data is not None
        png = plot_scale(data, results_dir(args.dir) / f"scale-{time.strftime('%Y%m%dT%H%M%S')}.png")
        print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
