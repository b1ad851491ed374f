#!/usr/bin/env python3
"""Turns the JSON of scripts/load-bench.sh (docs/load.json) into docs/LOAD.md and docs/load.svg.

Usage: scripts/load-report.py LOAD.json [--md docs/LOAD.md] [--svg docs/load.svg]

Every number in the outputs comes from the JSON; the only figures written here are the
project's targets for `wasmux serve` under load, checked pair by pair:

- wasmux with no filter against nginx as a reverse proxy: req/s ratio >= 0.9;
- the headers fixture on wasmtime against no filter: req/s ratio >= 0.85, and p99 at most
  100 us more.

Per-engine headers ratios and the callout ratio are shown without a target. A target whose
runs had errors or non-2xx responses is not checked. Standard library only; the SVG is written
by hand (no plotting library).
"""

import argparse
import html
import json
import os
import sys

# (id, label, kind of value, bound, comparison) for the checked measures.
TARGETS = [
    ("plain_vs_nginx", "wasmux no filter ÷ nginx, req/s", "ratio", 0.9, "ge"),
    ("headers_vs_plain", "headers (wasmtime) ÷ wasmux no filter, req/s", "ratio", 0.85, "ge"),
    ("headers_p99_delta", "headers (wasmtime) p99 − wasmux no filter p99", "us", 100.0, "le"),
]

COLORS = {"upstream": "#9d9d9d", "nginx": "#59a14f", "plain": "#4e79a7", "headers": "#f28e2b", "callout": "#b07aa1"}


def num(value, digits=0):
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def find(targets, kind, engine=None):
    for t in targets:
        if t.get("kind") == kind and (engine is None or t.get("engine") == engine):
            return t
    return None


def trouble(*ts):
    """Why these runs cannot be compared, or None."""
    for t in ts:
        if t is None:
            return "not measured"
        if t.get("error"):
            return f"`{t['id']}` failed"
        if t.get("req_s") is None:
            return f"`{t['id']}` has no result"
        if t.get("non_2xx"):
            return f"`{t['id']}` had {t['non_2xx']:,} non-2xx responses"
    return None


def ratio(a, b, key="req_s"):
    if trouble(a, b) or not b.get(key):
        return None
    return a[key] / b[key]


def measures(targets):
    """Rows: (label, value text, target text, verdict)."""
    nginx, plain = find(targets, "nginx"), find(targets, "plain")
    wt = find(targets, "headers", "wasmtime")
    rows = []
    values = {
        "plain_vs_nginx": (ratio(plain, nginx), trouble(plain, nginx)),
        "headers_vs_plain": (ratio(wt, plain), trouble(wt, plain)),
        "headers_p99_delta": (
            None if trouble(wt, plain) or wt.get("p99_us") is None or plain.get("p99_us") is None
            else wt["p99_us"] - plain["p99_us"],
            trouble(wt, plain),
        ),
    }
    for mid, label, kind, bound, cmp in TARGETS:
        value, why = values[mid]
        if kind == "ratio":
            shown = "—" if value is None else f"{value:.3f}"
            target = f"≥ {bound:.2f}" if cmp == "ge" else f"≤ {bound:.2f}"
        else:
            shown = "—" if value is None else f"{value:+,.0f} µs"
            target = f"≤ {bound:,.0f} µs" if cmp == "le" else f"≥ {bound:,.0f} µs"
        if value is None:
            verdict = f"not checked: {why or 'no value'}"
        else:
            ok = value >= bound if cmp == "ge" else value <= bound
            verdict = "**PASS**" if ok else "**FAIL**"
        rows.append((label, shown, target, verdict))
    # Informational: every engine's headers run, and the callout, against no filter.
    for t in targets:
        if t.get("kind") == "headers":
            label = f"headers ({t.get('engine')}) ÷ wasmux no filter, req/s"
        elif t.get("kind") == "callout":
            label = f"callout ({t.get('engine')}) ÷ wasmux no filter, req/s"
        else:
            continue
        value = ratio(t, plain)
        why = trouble(t, plain)
        rows.append((label, "—" if value is None else f"{value:.3f}", "—", f"({why})" if value is None and why else ""))
    return rows


def notes(t):
    if t.get("error"):
        return "failed: " + t["error"]
    parts = []
    if t.get("non_2xx"):
        parts.append(f"{t['non_2xx']:,} non-2xx responses")
    errs = t.get("socket_errors") or {}
    if any(errs.values()):
        parts.append("socket errors: " + ", ".join(f"{k} {v}" for k, v in errs.items() if v))
    if t.get("requests") is not None:
        parts.append(f"{t['requests']:,} requests")
    if t.get("log_lines"):
        parts.append(f"{t['log_lines']:,} log lines (stderr and error log, warm-up included)")
    return "; ".join(parts)


def machine_line(report):
    m = report.get("machine", {})
    mem = m.get("memory_kib")
    mem_text = f", {mem / 1048576:.1f} GiB" if mem else ""
    return (f"{m.get('cpu', '?')}, nproc {m.get('nproc', '?')}{mem_text}, {m.get('os', '?')}, "
            f"kernel {m.get('kernel', '?')} ({m.get('arch', '?')})")


def markdown(report, json_path, svg_name):
    targets = report.get("targets", [])
    s = report.get("settings", {})
    cmds = report.get("commands", {})
    v = report.get("versions", {})
    out = []
    out.append("# Load benchmark: `wasmux serve` against nginx")
    out.append("")
    out.append("Generated by `scripts/load-report.py` from the JSON of one `scripts/load-bench.sh` run; "
               "do not edit by hand, rerun instead:")
    out.append("")
    out.append("```sh")
    out.append(cmds.get("bench", "scripts/load-bench.sh"))
    out.append(f"python3 scripts/load-report.py {json_path}  # the script runs this itself")
    out.append("```")
    out.append("")
    out.append(f"- **Date:** {report.get('date', '?')} (UTC)")
    out.append(f"- **Machine:** {machine_line(report)}")
    la = report.get("load_average", {})
    if la:
        start = ", ".join(f"{x:.2f}" for x in la.get("start", []))
        end = ", ".join(f"{x:.2f}" for x in la.get("end", []))
        out.append(f"- **Load average (1, 5, 15 min):** {start} at the start, {end} at the end")
    out.append(
        f"- **Method:** one target at a time on 127.0.0.1, {s.get('warmup_seconds', '?')} s of warm-up, then "
        f"`wrk -t{s.get('wrk_threads', '?')} -c{s.get('connections', '?')} -d{s.get('seconds', '?')}s --latency` "
        f"on `/`; wasmux `workers: {s.get('workers', '?')}`, nginx `worker_processes {s.get('workers', '?')}`, "
        f"the upstream nginx `worker_processes {s.get('upstream_workers', 1)}`; RSS is the peak VmRSS sampled "
        "every 0.5 s during the run (nginx: master + workers). The client, the proxy and the upstream share "
        "the machine's cores."
    )
    out.append(f"- **Build:** `{cmds.get('build', '?')}`; `WASMUX_LOG={s.get('wasmux_log', '?')}`")
    out.append(f"- **Versions:** wasmux {v.get('wasmux_commit', '?')}; {v.get('nginx', '?')}; {v.get('wrk', '?')}")
    out.append("")
    out.append(f"![Requests per second per target]({svg_name})")
    out.append("")
    out.append("| target | req/s | p50 µs | p99 µs | RSS MiB | notes |")
    out.append("|---|--:|--:|--:|--:|---|")
    for t in targets:
        rss = t.get("rss_kib")
        out.append(
            f"| {t.get('name', t.get('id'))} | {num(t.get('req_s'))} | {num(t.get('p50_us'))} | "
            f"{num(t.get('p99_us'))} | {num(rss / 1024 if rss else None, 1)} | {notes(t)} |"
        )
    out.append("")
    out.append("## Measures")
    out.append("")
    out.append("| measure | value | target | |")
    out.append("|---|--:|--:|---|")
    for label, shown, target, verdict in measures(targets):
        out.append(f"| {label} | {shown} | {target} | {verdict} |")
    out.append("")
    out.append("## Targets")
    out.append("")
    out.append("- `upstream`: nginx answering `200 ok` itself, measured directly (no proxy): the ceiling.")
    out.append("- `nginx`: nginx as a plain reverse proxy (`proxy_pass`, HTTP/1.1 keepalive connections to "
               "the upstream, `reuseport` listener).")
    out.append("- `wasmux`: `wasmux serve`, one route to the upstream, no filter.")
    out.append("- `wasmux-headers-ENGINE`: the headers fixture (`conformance/fixtures/wasm/headers.wasip1.wasm`) "
               "on every request: reads `:path`, adds, replaces and removes request headers, edits response "
               "headers, logs.")
    out.append("- `wasmux-callout-wasmtime`: the callout fixture (`callout.wasip1.wasm`): every request pauses "
               "for an HTTP callout to cluster `auth-cluster` (the upstream's `/check`), then resumes with a "
               "header added; two upstream requests per client request.")
    out.append("")
    out.append("## Commands")
    out.append("")
    out.append("```sh")
    out.append(f"{cmds.get('build', '')}")
    for t in targets:
        out.append(f"# {t.get('id')}")
        if t.get("command"):
            out.append(t["command"])
        if t.get("wrk"):
            out.append(t["wrk"])
    out.append(cmds.get("report", ""))
    out.append("```")
    out.append("")
    configs = [t for t in targets if t.get("config")]
    if configs:
        out.append("Configurations (ports and the temporary directory change from run to run):")
        out.append("")
        for t in configs:
            lang = "yaml" if t.get("kind") not in ("upstream", "nginx") else "nginx"
            out.append(f"<details><summary><code>{html.escape(t.get('id', ''))}</code></summary>")
            out.append("")
            out.append(f"```{lang}")
            out.append(t["config"].rstrip("\n"))
            out.append("```")
            out.append("")
            out.append("</details>")
            out.append("")
    return "\n".join(out)


def svg(report):
    """One horizontal bar per target: req/s, with p99 beside it."""
    targets = report.get("targets", [])
    label_w, bar_w, value_w = 250, 440, 230
    row_h, top, margin = 28, 62, 16
    width = margin + label_w + bar_w + value_w + margin
    height = top + row_h * max(1, len(targets)) + 36
    scale = max([t.get("req_s") or 0 for t in targets] + [1e-9])
    m = report.get("machine", {})
    out = []
    out.append(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
               f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" font-size="12">')
    out.append(f'<rect width="{width}" height="{height}" fill="#ffffff"/>')
    title = "wasmux serve under load: requests per second (higher is better)"
    out.append(f'<text x="{margin}" y="24" font-size="16" font-weight="bold">{html.escape(title)}</text>')
    s = report.get("settings", {})
    sub = (f"{report.get('date', '')}, {m.get('cpu', '?')}, nproc {m.get('nproc', '?')}; "
           f"wrk -t{s.get('wrk_threads', '?')} -c{s.get('connections', '?')} -d{s.get('seconds', '?')}s, "
           f"{s.get('workers', '?')} proxy workers")
    out.append(f'<text x="{margin}" y="44" fill="#555555" font-size="11">{html.escape(sub)}</text>')
    x0 = margin + label_w
    for i, t in enumerate(targets):
        y = top + i * row_h
        name = t.get("name", t.get("id", ""))
        out.append(f'<text x="{x0 - 8}" y="{y + 15}" text-anchor="end">{html.escape(name)}</text>')
        v = t.get("req_s")
        if v is None or t.get("error"):
            out.append(f'<text x="{x0}" y="{y + 15}" fill="#d62728">failed</text>')
            continue
        w = max(1.0, bar_w * v / scale)
        color = COLORS.get(t.get("kind"), "#76b7b2")
        out.append(f'<rect x="{x0}" y="{y + 2}" width="{w:.1f}" height="{row_h - 8}" fill="{color}"/>')
        text = f"{v:,.0f} req/s, p99 {num(t.get('p99_us'))} µs"
        if t.get("non_2xx"):
            text += f", {t['non_2xx']:,} non-2xx"
        out.append(f'<text x="{x0 + w + 6:.1f}" y="{y + 15}" font-size="11">{html.escape(text)}</text>')
    axis_y = top + row_h * len(targets) + 4
    out.append(f'<line x1="{x0}" y1="{top - 4}" x2="{x0}" y2="{axis_y}" stroke="#333333"/>')
    out.append(f'<text x="{x0}" y="{axis_y + 16}" fill="#555555" font-size="11">0</text>')
    out.append(f'<text x="{x0 + bar_w}" y="{axis_y + 16}" fill="#555555" font-size="11" text-anchor="end">'
               f'{scale:,.0f} req/s</text>')
    out.append(f'<line x1="{x0 + bar_w}" y1="{top - 4}" x2="{x0 + bar_w}" y2="{axis_y}" stroke="#dddddd" '
               'stroke-dasharray="3,3"/>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="output of scripts/load-bench.sh (docs/load.json)")
    parser.add_argument("--md", default="docs/LOAD.md")
    parser.add_argument("--svg", default="docs/load.svg")
    args = parser.parse_args()
    with open(args.json, encoding="utf-8") as f:
        report = json.load(f)
    if not report.get("targets"):
        sys.exit("no targets in the report")
    for path in (args.md, args.svg):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    svg_rel = os.path.relpath(args.svg, os.path.dirname(args.md) or ".")
    with open(args.md, "w", encoding="utf-8") as f:
        f.write(markdown(report, args.json, svg_rel))
    with open(args.svg, "w", encoding="utf-8") as f:
        f.write(svg(report))
    for label, shown, target, verdict in measures(report["targets"]):
        print(f"{label:<52} {shown:>10}  {target:>10}  {verdict.replace('**', '')}")
    print(f"wrote {args.md} and {args.svg}")


if __name__ == "__main__":
    main()
