#!/usr/bin/env python3
"""Turns the JSON of scripts/load-bench.sh (docs/load.json) into docs/LOAD.md and docs/load.svg.

Usage: scripts/load-report.py LOAD.json [--md docs/LOAD.md] [--svg docs/load.svg]

Every number in the outputs comes from the JSON; the only figures written here are the
project's targets for `wasmux serve` under load, checked pair by pair:

- wasmux with no filter against nginx as a reverse proxy: req/s ratio >= 0.9, at saturation
  (wrk, closed loop);
- the headers fixture on wasmtime against no filter: req/s ratio >= 0.85 at saturation, and p99
  at most 100 us more at the fixed request rate (h2load, open loop, the same rate for every
  target). At saturation latency is about connections / throughput, so a p99 difference there
  mostly restates the req/s difference; it is shown, without a target.

Shown without a target: the Pingora baseline (Pingora's own Server and an empty ProxyHttp)
against nginx and against wasmux with no filter, which splits the gap to nginx into Pingora's
share and wasmux's; per-engine headers ratios; the callout ratio. The fixed-rate table has
the achieved rate, p50/p90/p99/p99.9 and errors of every proxy. A measure is not checked when
one of its runs failed or had errors or non-2xx responses, or, at the fixed rate, did not reach
95 % of the rate asked for. With several rounds (WASMUX_BENCH_ROUNDS), every figure is the
median of its rounds, and the notes give the spread. Standard library only; the SVG is written
by hand (no plotting library).
"""

import argparse
import html
import json
import os
import sys

# (id, label, kind of value, bound, comparison) for the checked measures; the label of
# headers_p99_delta gets the rate from the JSON.
TARGETS = [
    ("plain_vs_nginx", "wasmux no filter ÷ nginx, req/s", "ratio", 0.9, "ge"),
    ("headers_vs_plain", "headers (wasmtime) ÷ wasmux no filter, req/s", "ratio", 0.85, "ge"),
    ("headers_p99_delta", "headers (wasmtime) p99 − wasmux no filter p99, at a fixed rate", "us", 100.0, "le"),
]

# Below this share of the rate asked for, a fixed-rate run does not count.
RATE_REACHED = 0.95

COLORS = {
    "upstream": "#9d9d9d",
    "nginx": "#59a14f",
    "pingora": "#edc948",
    "plain": "#4e79a7",
    "headers": "#f28e2b",
    "callout": "#b07aa1",
}


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


def rate_missed(fr):
    """Whether a fixed-rate run stayed below RATE_REACHED of the rate asked for."""
    return fr.get("achieved_rps") is not None and fr["achieved_rps"] < RATE_REACHED * fr.get("target_rps", 0)


def rate_trouble(*ts):
    """Why the fixed-rate runs of these targets cannot be compared, or None."""
    for t in ts:
        if t is None:
            return "not measured"
        fr = t.get("fixed_rate")
        if not fr:
            return f"`{t['id']}` has no fixed-rate run"
        if fr.get("error"):
            return f"`{t['id']}` failed at the fixed rate"
        if fr.get("p99_us") is None or fr.get("achieved_rps") is None:
            return f"`{t['id']}` has no fixed-rate result"
        if fr.get("errors"):
            return f"`{t['id']}` had {fr['errors']:,} errors at the fixed rate"
        if rate_missed(fr):
            return f"`{t['id']}` reached {fr['achieved_rps']:,.0f} of {fr['target_rps']:,} req/s"
    return None


def ratio(a, b, key="req_s"):
    if trouble(a, b) or not b.get(key):
        return None
    return a[key] / b[key]


def p99_delta(a, b):
    """Saturation p99 of a minus that of b, in µs, or None."""
    if trouble(a, b) or a.get("p99_us") is None or b.get("p99_us") is None:
        return None
    return a["p99_us"] - b["p99_us"]


def rate_p99_delta(a, b):
    """Fixed-rate p99 of a minus that of b, in µs, or None."""
    if rate_trouble(a, b):
        return None
    return a["fixed_rate"]["p99_us"] - b["fixed_rate"]["p99_us"]


def rate_text(report):
    """`5,000 req/s` from the settings, or `?`."""
    fr = report.get("settings", {}).get("fixed_rate") or {}
    return f"{fr['target_rps']:,} req/s" if fr.get("target_rps") else "?"


def ratio_row(label, a, b):
    value, why = ratio(a, b), trouble(a, b)
    return (label, "—" if value is None else f"{value:.3f}", "—", f"({why})" if value is None and why else "")


def measures(report):
    """Rows: (label, value text, target text, verdict)."""
    targets = report.get("targets", [])
    nginx, pingora, plain = find(targets, "nginx"), find(targets, "pingora"), find(targets, "plain")
    wt = find(targets, "headers", "wasmtime")
    rows = []
    values = {
        "plain_vs_nginx": (ratio(plain, nginx), trouble(plain, nginx)),
        "headers_vs_plain": (ratio(wt, plain), trouble(wt, plain)),
        "headers_p99_delta": (rate_p99_delta(wt, plain), rate_trouble(wt, plain)),
    }
    for mid, label, kind, bound, cmp in TARGETS:
        if mid == "headers_p99_delta":
            label += f" ({rate_text(report)}, h2load)"
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
    # Informational: the saturation p99 difference (mostly the req/s difference again).
    value = p99_delta(wt, plain)
    why = trouble(wt, plain)
    rows.append(("headers (wasmtime) p99 − wasmux no filter p99, at saturation (wrk)",
                 "—" if value is None else f"{value:+,.0f} µs", "—", f"({why})" if value is None and why else ""))
    # Informational: the Pingora baseline between nginx and wasmux.
    rows.append(ratio_row("pingora (no wasmux) ÷ nginx, req/s", pingora, nginx))
    rows.append(ratio_row("wasmux no filter ÷ pingora (no wasmux), req/s", plain, pingora))
    # Informational: every engine's headers run, and the callout, against no filter.
    for t in targets:
        if t.get("kind") == "headers":
            label = f"headers ({t.get('engine')}) ÷ wasmux no filter, req/s"
        elif t.get("kind") == "callout":
            label = f"callout ({t.get('engine')}) ÷ wasmux no filter, req/s"
        else:
            continue
        rows.append(ratio_row(label, t, plain))
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
    rounds = len(t.get("rounds") or [])
    if rounds > 1 and t.get("req_s_min") is not None:
        parts.append(f"median of {rounds} rounds ({num(t['req_s_min'])}–{num(t['req_s_max'])} req/s)")
    if t.get("requests") is not None:
        parts.append(f"{t['requests']:,} requests")
    if t.get("log_lines"):
        parts.append(f"{t['log_lines']:,} log lines (stderr and error log, warm-up and fixed rate included)")
    return "; ".join(parts)


def rate_notes(fr):
    if fr.get("error"):
        return "failed: " + fr["error"]
    parts = []
    if rate_missed(fr):
        parts.append(f"below {RATE_REACHED:.0%} of the {fr['target_rps']:,} req/s asked for")
    if fr.get("errors"):
        counts = ", ".join(f"{k} {fr[k]:,}" for k in ("failed", "errored", "timeout") if fr.get(k))
        status = fr.get("status") or {}
        other = ", ".join(f"{v:,} {k}" for k, v in status.items() if k != "2xx" and v)
        parts.append("; ".join(x for x in (counts, other) if x) or "requests not done")
    if fr.get("p99_us_min") is not None and fr.get("p99_us_max") != fr.get("p99_us_min"):
        parts.append(f"p99 over the rounds {num(fr['p99_us_min'])}–{num(fr['p99_us_max'])} µs")
    if fr.get("measured_requests") is not None:
        seconds = f" in {num(fr['measured_seconds'], 2)} s" if fr.get("measured_seconds") else ""
        parts.append(f"{fr['measured_requests']:,} requests{seconds}")
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
    out.append("# Load benchmark: `wasmux serve` against nginx and Pingora")
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
        f"two phases. At saturation (closed loop): `wrk -t{s.get('wrk_threads', '?')} -c{s.get('connections', '?')} "
        f"-d{s.get('seconds', '?')}s --latency` on `/`; RSS is the peak VmRSS sampled every 0.5 s during it "
        f"(nginx: master + workers). wasmux `workers: {s.get('workers', '?')}`, nginx `worker_processes "
        f"{s.get('workers', '?')}`, Pingora baseline `threads: {s.get('workers', '?')}`, the upstream nginx "
        f"`worker_processes {s.get('upstream_workers', 1)}`. The client, the proxy and the upstream share "
        "the machine's cores."
        + (f" The proxies take turns for {s['rounds']} rounds (the upstream is measured in the first)"
           + (", the even rounds in reverse order" if s.get("rounds_alternate") else "")
           + "; every figure is the median of its rounds (RSS: the highest), with the spread in the notes."
           if s.get("rounds", 1) > 1 else "")
    )
    fr = s.get("fixed_rate") or {}
    if fr:
        out.append(
            f"- **Fixed rate (open loop), proxies only:** right after the saturation run, h2load (HTTP/1.1) sends "
            f"{fr.get('target_rps', 0):,} requests per second in all over {fr.get('clients', '?')} connections "
            f"({num(fr.get('per_client_rps'), 1)} req/s each, opened 1 ms apart so that their timers do not tick "
            "together), "
            f"for {fr.get('settle_seconds', '?')} + {fr.get('seconds', '?')} s; the requests that started in the "
            f"{fr.get('seconds', '?')} s after the first {fr.get('settle_seconds', '?')} s are kept. Per-request "
            "latency (request sent to end of response) from h2load's log; percentiles by nearest rank over the 2xx "
            f"responses; the achieved rate is the requests kept ÷ {fr.get('seconds', '?')} s. At saturation latency is "
            "about connections ÷ throughput, so the latency a filter adds is measured here, at the same rate "
            "for every target."
        )
    out.append(f"- **Build:** `{cmds.get('build', '?')}`; `{cmds.get('build_pingora', '?')}`; "
               f"`WASMUX_LOG={s.get('wasmux_log', '?')}`")
    out.append(f"- **Versions:** wasmux {v.get('wasmux_commit', '?')}; {v.get('nginx', '?')}; {v.get('wrk', '?')}; "
               f"{v.get('h2load', '?')}")
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
    rated = [t for t in targets if t.get("fixed_rate")]
    if rated:
        out.append(f"## Latency at a fixed rate ({rate_text(report)})")
        out.append("")
        out.append("| target | achieved req/s | p50 µs | p90 µs | p99 µs | p99.9 µs | errors | notes |")
        out.append("|---|--:|--:|--:|--:|--:|--:|---|")
        for t in rated:
            fr = t["fixed_rate"]
            out.append(
                f"| {t.get('name', t.get('id'))} | {num(fr.get('achieved_rps'))} | {num(fr.get('p50_us'))} | "
                f"{num(fr.get('p90_us'))} | {num(fr.get('p99_us'))} | {num(fr.get('p999_us'))} | "
                f"{num(fr.get('errors'))} | {rate_notes(fr)} |"
            )
        out.append("")
    out.append("## Measures")
    out.append("")
    out.append("| measure | value | target | |")
    out.append("|---|--:|--:|---|")
    for label, shown, target, verdict in measures(report):
        out.append(f"| {label} | {shown} | {target} | {verdict} |")
    out.append("")
    out.append("## Targets")
    out.append("")
    out.append("- `upstream`: nginx answering `200 ok` itself, measured directly (no proxy): the ceiling.")
    out.append("- `nginx`: nginx as a plain reverse proxy (`proxy_pass`, HTTP/1.1 keepalive connections to "
               "the upstream, `reuseport` listener).")
    out.append("- `pingora`: the baseline, Pingora with nothing of wasmux: its own `Server` (`threads` as the "
               "workers above, the rest of `ServerConf` at its defaults: one multi-threaded, work-stealing "
               "runtime and one listening socket) and a `ProxyHttp` with only `upstream_peer` "
               "(`crates/proxy/examples/pingora_baseline.rs`). It is the cost of Pingora itself, so that the "
               "gap between wasmux and nginx splits into Pingora's share (pingora ÷ nginx) and wasmux's "
               "(wasmux ÷ pingora). `wasmux serve` runs the same Pingora proxy code on its own threads (one "
               "single-threaded runtime per worker, each with its own `SO_REUSEPORT` socket), so that "
               "difference is in the second ratio too.")
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
    if cmds.get("build_pingora"):
        out.append(cmds["build_pingora"])
    for t in targets:
        out.append(f"# {t.get('id')}")
        if t.get("command"):
            out.append(t["command"])
        if t.get("wrk"):
            out.append(t["wrk"])
        if (t.get("fixed_rate") or {}).get("command"):
            out.append(t["fixed_rate"]["command"])
    out.append(cmds.get("report", ""))
    out.append("```")
    out.append("")
    configs = [t for t in targets if t.get("config")]
    if configs:
        out.append("Configurations (ports and the temporary directory change from run to run):")
        out.append("")
        for t in configs:
            lang = "nginx" if t.get("kind") in ("upstream", "nginx") else "yaml"
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
    """One horizontal bar per target: req/s, with p99 at saturation and at the fixed rate beside it."""
    targets = report.get("targets", [])
    label_w, bar_w, value_w = 250, 440, 360
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
           f"{s.get('workers', '?')} proxy workers; fixed rate: h2load at {rate_text(report)}")
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
        fr = t.get("fixed_rate") or {}
        if fr.get("p99_us") is not None and not fr.get("error"):
            text += f"; at {num(fr.get('target_rps'))} req/s p99 {num(fr['p99_us'])} µs"
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
    for label, shown, target, verdict in measures(report):
        print(f"{label:<82} {shown:>10}  {target:>10}  {verdict.replace('**', '')}")
    print(f"wrote {args.md} and {args.svg}")


if __name__ == "__main__":
    main()
