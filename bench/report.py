"""Shared bench helpers (machine description, percentiles, result files) and a summary printer.

``python -m bench.report [--dir bench/results]`` prints the latest region, peers and scale results
as Markdown tables (what bench/README.md quotes); ``--issue`` prints the one table of issue #13 —
every target beside this run's figure (the last thing ``make bench`` prints). The helpers here are
used by bench/region.py, bench/peers.py, bench/scale.py and bench/plot.py.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of ``values`` (nan when empty)."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What the numbers were measured on: cpu count and model, python, kernel, load at the time."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": cpu_model(), "python": sys.version.split()[0],
            "implementation": platform.python_implementation(), "kernel": platform.release(),
            "platform": platform.platform(), "mem_bytes": mem, "loadavg_at_start": load,
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def results_dir(path: str | Path | None) -> Path:
    d = Path(path) if path else RESULTS
    d.mkdir(parents=True, exist_ok=True)
    return d


def write_results(kind: str, data: dict[str, Any], directory: str | Path | None = None) -> Path:
    """``DIR/KIND-YYYYmmddTHHMMSS.json``; nan/inf become null so the file is strict JSON."""
    out = results_dir(directory) / f"{kind}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(_clean(data), indent=2, allow_nan=False, default=str))
    return out


def latest(kind: str, directory: str | Path | None = None) -> Path | None:
    d = Path(directory) if directory else RESULTS
    files = sorted(d.glob(f"{kind}-*.json"))
    return files[-1] if files else None


def load(path: Path | None) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path else None


def _clean(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "–"
    return f"{a / b:.2f}×"


def fmt_rate(x: float | None) -> str:
    return "–" if x is None else f"{x:,.0f}"


def fmt_ms(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}"


# -- markdown summary -------------------------------------------------------------------------------


def _md(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def summarize(directory: str | Path | None = None) -> str:
    parts: list[str] = []
    reg = load(latest("region", directory))
    if reg:
        rows = []
        for s, r in zip(reg["single"], reg["region"], strict=False):
            rows.append([str(s["batch"]), fmt_rate(s["tx_per_s"]), f"{fmt_ms(s['p50_ms'])} / {fmt_ms(s['p99_ms'])}",
                         fmt_rate(r["tx_per_s"]), f"{fmt_ms(r['p50_ms'])} / {fmt_ms(r['p99_ms'])}",
                         ratio(r["tx_per_s"], s["tx_per_s"])])
        for h in reg.get("half_rate", []):
            rows.append([f"{h['batch']} @ {h['target_rate']:,.0f}/s ({h['setup']})", "", "",
                         fmt_rate(h["tx_per_s"]), f"{fmt_ms(h['p50_ms'])} / {fmt_ms(h['p99_ms'])}", ""])
        parts.append(f"### region ({reg['machine']['cpus']} cpus, {reg['machine']['cpu_model']})\n\n" + _md(
            ["batch", "1 node tx/s", "1 node p50/p99 ms", "region tx/s", "region p50/p99 ms", "region ÷ 1 node"],
            rows))
    peers = load(latest("peers", directory))
    if peers:
        rows = []
        for sys_name, res in peers["systems"].items():
            if res.get("skipped"):
                rows.append([sys_name, "skipped", res["skipped"], "", ""])
                continue
            for r in res["rows"]:
                rows.append([sys_name, str(r["batch"]), fmt_rate(r["tx_per_s"]),
                             fmt_ms(r.get("p99_ms")), ratio(r["tx_per_s"], peers["baseline_tx_per_s"])])
        parts.append("### peers\n\n" + _md(["system", "batch", "tx/s", "p99 ms", "÷ sovledger 1 node @8189"], rows))
    sc = load(latest("scale", directory))
    if sc:
        rows = [[str(m["million"]), f"{m['transfers']:,}", fmt_rate(m["tx_per_s"]), fmt_ms(m["p99_ms"]),
                 f"{m['disk_bytes_per_transfer']:.0f}", f"{m.get('probe_ratio') or 0:.3f}",
                 _rss({"node": m["rss_mib"]}) if m.get("rss_mib") else "–"] for m in sc["chunks"]]
        parts.append("### scale\n\n" + _md(["chunk", "transfers", "tx/s", "p99 ms", "disk B/transfer",
                                             "tx/s ÷ probe", "RSS"], rows)
                     + f"\n\ndegradation first→last (negative = faster): raw {sc['degradation_raw_pct']:.1f}%, "
                       f"probe-normalised {sc['degradation_normalised_pct']:.1f}%, "
                       f"linear trend {sc.get('trend_pct_per_million', 0):+.2f}% per million")
    return "\n\n".join(parts) if parts else "no results found"


# -- the issue #13 table: one row per target, from the latest single_node, region and peers results -----


def _us(cpu: dict[str, Any] | None) -> str:
    if not cpu:
        return "–"
    per = {k: v for k, v in cpu["us_per_transfer"].items() if k != "client"}
    return " / ".join(f"{k} {v:.0f}" for k, v in per.items()) + f" (Σ {sum(per.values()):.0f}) µs"


def _rss(rss: dict[str, Any] | None) -> str:
    if not rss:
        return "–"
    return " / ".join(f"{k} {v['rss']:.0f} (anon {v['anon']:.0f})" for k, v in rss.items()) + " MiB"


def _issue_rows(single: dict[str, Any] | None, reg: dict[str, Any] | None,
                peers: dict[str, Any] | None) -> list[list[str]]:
    rows: list[list[str]] = []
    if single:
        top, bare = single["rows"][-1], single["bare_baseline"]
        rows.append([f"1 node, batch {top['batch']}", f"{fmt_rate(top['tx_per_s'])} tx/s, "
                     f"{ratio(top['tx_per_s'], bare['tx_per_s'])} the bare baseline ({fmt_rate(bare['tx_per_s'])})",
                     "≥ 250k tx/s, ≥ 0.3× bare"])
    if reg:
        by = {r["batch"]: r for r in reg["region"]}
        rows.append(["region (3 nodes), batch 8189 / 1000 / 100",
                     " / ".join(fmt_rate(by[b]["tx_per_s"]) if b in by else "–" for b in (8189, 1000, 100)),
                     "≥ 80k / 70k / 35k"])
        st = {h["setup"]: h for h in reg.get("streams", [])}
        r = st.get("region")
        rows.append(["region, 64 streams × 1 payment per request",
                     f"{fmt_rate(r['tx_per_s'])} payments/s (p99 {fmt_ms(r['p99_ms'])} ms)" if r else "–",
                     "≥ 5k payments/s"])
        half = {(h["setup"], h["batch"]): h for h in reg.get("half_rate", [])}
        h = half.get(("region", 1000))
        rows.append([f"region p99 ack at half the max rate ({fmt_rate(reg.get('half_rate_target'))}/s), batch 1000",
                     f"{fmt_ms(h['p99_ms'])} ms" if h else "–", "≤ 50 ms"])
        last = reg["region"][-1] if reg["region"] else {}
        rows.append([f"region CPU per transfer per replica (batch {last.get('batch', '–')})", _us(last.get("cpu")),
                     "3 replicas fit 2 cores"])
        rows.append(["RSS per node after the region steps", _rss(last.get("rss_mib")), "≤ 1 GiB, flat"])
        s_last = reg["single"][-1] if reg["single"] else {}
        rows.append(["RSS, single node after its steps", _rss(s_last.get("rss_mib")), "≤ 1 GiB, flat"])
    if peers:
        cells = [f"{b}: {peers['ratios'][b]['sovledger-1/postgres']:.2f}×" for b in peers.get("ratios", {})
                 if peers["ratios"][b].get("sovledger-1/postgres")]
        rows.append(["1 node ÷ PostgreSQL DIY ledger, per batch size", ", ".join(cells) or "– (skipped)", "≥ 5×"])
    return rows


def issue_table(directory: str | Path | None = None) -> str:
    """The table of issue #13 ("where it stands") from the newest results: `make bench` prints it last."""
    single, reg, peers = (load(latest(k, directory)) for k in ("single_node", "region", "peers"))
    rows = _issue_rows(single, reg, peers)
    if not rows:
        return "no results found"
    when = {k: (d or {}).get("machine", {}).get("when", "–") for k, d in
            (("single_node", single), ("region", reg), ("peers", peers))}
    return ("| | this run | target |\n|---|---:|---|\n" + "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
            + "\n\nfrom: " + ", ".join(f"{k} {v}" for k, v in when.items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=None, help="results directory (default bench/results)")
    ap.add_argument("--issue", action="store_true", help="the issue #13 table (targets) instead of the summaries")
    args = ap.parse_args(argv)
    print(issue_table(args.dir) if args.issue else summarize(args.dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
