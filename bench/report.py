"""Shared bench helpers (machine description, percentiles, result files) and a summary printer.

``python -m bench.report [--dir bench/results]`` prints the latest region, peers and scale results
as Markdown tables (what bench/README.md quotes). The helpers here are used by bench/region.py,
bench/peers.py, bench/scale.py and bench/plot.py.
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
                 f"{m['disk_bytes_per_transfer']:.0f}", f"{m.get('probe_ratio') or 0:.3f}"] for m in sc["chunks"]]
        parts.append("### scale\n\n" + _md(["chunk", "transfers", "tx/s", "p99 ms", "disk B/transfer",
                                             "tx/s ÷ probe"], rows)
                     + f"\n\ndegradation first→last (negative = faster): raw {sc['degradation_raw_pct']:.1f}%, "
                       f"probe-normalised {sc['degradation_normalised_pct']:.1f}%, "
                       f"linear trend {sc.get('trend_pct_per_million', 0):+.2f}% per million")
    return "\n\n".join(parts) if parts else "no results found"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=None, help="results directory (default bench/results)")
    args = ap.parse_args(argv)
    print(summarize(args.dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
