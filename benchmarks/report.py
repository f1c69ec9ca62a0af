"""Render ``bench_ops`` JSON as a Markdown table (for docs/performance.md).

Usage: ``python -m benchmarks.report [benchmarks/results/bench_ops.json]``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DEFAULT = Path(__file__).resolve().parent / "results" / "bench_ops.json"


def _f(x, spec):
    return "-" if x is None else format(x, spec)


def markdown(rows: list[dict]) -> str:
    head = ("| memory | agg | T | C | fwd ms | fwd tok/s | fwd GFLOP/s (% mm) | f+b ms | f+b tok/s "
            "| f+b GFLOP/s (% mm) | fwd / f+b MiB | f+b KiB per cached memory | largest buffer / (H T^2) | checked |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in rows:
        f, fb = r.get("forward") or {}, r.get("fwd_bwd") or {}

        def phase(p):
            if p.get("skipped"):
                return "skipped", "-", "-"
            ms = None if p.get("median_s") is None else 1e3 * p["median_s"]
            gf = "-" if p.get("gflops") is None else f"{p['gflops']:.1f} ({p['pct_of_dense']:.0f}%)"
            return _f(ms, ".0f"), _f(p.get("tokens_per_s"), ",.0f"), gf

        mib = lambda p: "-" if not p.get("memory") else f"{p['memory']['peak_bytes'] / 2**20:.0f}"
        per = fb.get("peak_bytes_per_cached_memory")
        ratios = [p["largest_buffer"]["elements_per_head_TxT"] for p in (f, fb) if p.get("largest_buffer")]
        status = "yes" if r.get("checked") else "no"
        if "error" in r:
            status += f" (error: {r['error'][:80]})"
        lines.append("| " + " | ".join([
            r["memory"], r["aggregation"], str(r["T"]), str(r["segment_size"]), *phase(f), *phase(fb),
            f"{mib(f)} / {mib(fb)}", _f(None if per is None else per / 1024, ".0f"),
            _f(max(ratios) if ratios else None, ".3f"), status]) + " |")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    data = json.loads(Path(argv[0] if argv else DEFAULT).read_text())
    rows = sorted(data["results"], key=lambda r: (r["T"], r["segment_size"], r["memory"], r["aggregation"]))
    print(markdown(rows))


if __name__ == "__main__":
    main()
