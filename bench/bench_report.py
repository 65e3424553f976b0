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


FLOOR = "python -I -S -c pass"
README_ROWS = (("create+start+delete", "create+start+delete of `true`"), ("run", "`run` to completion"),
               ("create", "`create`"), ("exec", "`exec true`"), ("state", "`state`"), ("start", "`start`"),
               ("kill", "`kill`"), ("delete", "`delete`"), ("podman run --rm", "`podman run --rm IMAGE true`"))


def readme(doc: dict[str, Any], command: str) -> str:
    """The README's performance table for one run: wall medians, ×runc, and the hot commands
    against the launcher's own interpreter floor (`python -I -S -c pass`), with the date, the
    machine and the command that made it, so the table says where it came from."""
    groups = doc["groups"]
    m = doc.get("machine", {})
    floor = (groups.get("interpreter start", {}).get("runtimes", {}).get(FLOOR) or {}).get("wall_ms")
    lines = [f"{doc['mode']}, {doc['date']}, {m.get('os', '')}, {m.get('cpus')} cpus {m.get('cpu', '')}, kernel "
             f"{m.get('kernel')}; `{command}` ({doc['runs']} interleaved rounds, wall medians)", "",
             "| case | pyouki | runc | ×runc | over the `-I -S` floor |", "|---|---|---|---|---|"]
    for key, label in README_ROWS:
        rows = groups.get(key, {}).get("runtimes", {})
        p, r = rows.get("pyouki") or {}, rows.get("runc") or {}
        if not p or p.get("error") or not p.get("wall_ms"):
            continue
        pw = p["wall_ms"]["median"]
        rw = r["wall_ms"]["median"] if r.get("wall_ms") and not r.get("error") else None
        over = f"{pw - floor['median']:+.1f} ms" if floor and key in ("state", "start", "kill", "delete") else ""
        lines.append(f"| {label} | {pw:.1f} ms | {'-' if rw is None else f'{rw:.1f} ms'} | "
                     f"{'-' if rw is None else fmt_ratio(pw / rw)} | {over} |")
    if floor:
        lines.append(f"| `{FLOOR}` (the launcher's interpreter, the floor) | {floor['median']:.1f} ms | | | |")
    return "\n".join(lines)
