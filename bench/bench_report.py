"""Summaries of benchmark samples: medians, ranges, ratios, the printed table and the JSON."""

from __future__ import annotations

import statistics
from typing import Any

# metric name -> (sample key, divisor to the unit shown)
METRICS = {
    "wall_ms": ("wall_ns", 1e6),
    "cpu_ms": ("cpu_ns", 1e6),
    "cli_rss_mb": ("rss_kb", 1024.0),
    "ctr_rss_mb": ("ctr_rss_kb", 1024.0),
    "ctr_pss_mb": ("ctr_pss_kb", 1024.0),
}
BASELINE = "python -c pass"


def spread(values: list[float]) -> dict[str, float] | None:
    """Median, min and max of values, or None when there are none."""
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-metric spread over samples; negative values (not measured) are left out."""
    out: dict[str, Any] = {"n": len(samples)}
    for name, (key, div) in METRICS.items():
        vals = [s[key] / div for s in samples if s.get(key, -1) >= 0]
        out[name] = spread(vals)
    return out


def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None, metric: str) -> float | None:
    """median(a) / median(b) of metric, or None when either is missing."""
    if not a or not b or not a.get(metric) or not b.get(metric):
        return None
    den = b[metric]["median"]
    return a[metric]["median"] / den if den else None


def group_ratios(rows: dict[str, dict[str, Any]], subject: str = "pyouki") -> dict[str, dict[str, float | None]]:
    """Ratios of subject's medians to every other runtime in the group (wall, cpu, cli rss)."""
    mine = rows.get(subject)
    out: dict[str, dict[str, float | None]] = {}
    if not mine or mine.get("error"):
        return out
    for other, row in rows.items():
        if other == subject or row.get("error"):
            continue
        out[f"{subject}/{other}"] = {m: ratio(mine, row, m) for m in ("wall_ms", "cpu_ms", "cli_rss_mb")}
    return out


def fmt_spread(s: dict[str, float] | None, digits: int = 1) -> str:
    """'median (min–max)' or '-'."""
    if not s:
        return "-"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


def fmt_med(s: dict[str, float] | None, digits: int = 1) -> str:
    """'median' or '-'."""
    return f"{s['median']:.{digits}f}" if s else "-"


def fmt_ratio(x: float | None) -> str:
    """A ratio with two decimals, or '-'."""
    return "-" if x is None else f"{x:.2f}"


def table(groups: dict[str, dict[str, Any]]) -> str:
    """The human-readable table: one line per runtime and case, then its ratio lines."""
    head = f"{'case':<26} {'runtime':<22} {'n':>3}  {'wall ms med (min–max)':<24} {'cpu ms':>7} "
    head += f"{'cli rss MB':>10} {'ctr rss/pss MB':>14}"
    lines = [head, "-" * len(head)]
    for gname, g in groups.items():
        label = gname
        for rname, row in g["runtimes"].items():
            if row.get("error"):
                lines.append(f"{label:<26} {rname:<22} {row['n']:>3}  FAILED {row['error']}")
            else:
                ctr = "-"
                if row.get("ctr_rss_mb"):
                    ctr = f"{fmt_med(row['ctr_rss_mb'])}/{fmt_med(row.get('ctr_pss_mb'))}"
                lines.append(
                    f"{label:<26} {rname:<22} {row['n']:>3}  {fmt_spread(row['wall_ms']):<24} "
                    f"{fmt_med(row['cpu_ms']):>7} {fmt_med(row['cli_rss_mb']):>10} {ctr:>14}"
                )
            label = ""
        for rname, r in g.get("ratios", {}).items():
            cells = ["" if r[m] is None else "x " + fmt_ratio(r[m]) for m in ("wall_ms", "cpu_ms", "cli_rss_mb")]
            line = f"{'':<26} {rname:<22} {'':>3}  {cells[0]:<24} {cells[1]:>7} {cells[2]:>10}"
            lines.append(line.rstrip())
        if g.get("note"):
            lines.append(f"{'':<26} note: {g['note']}")
    return "\n".join(lines)
