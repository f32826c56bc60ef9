#!/usr/bin/env python3
"""benches/load report: Markdown table (stdout and OUT/results.md) and OUT/cpu_per_call.png
from the JSON that loadbench.py saved (bench.json, and rss.json / mem.json when present).

    python report.py [OUT_DIR]        (default target/load)
"""

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
SCENARIO_NAMES = {
    "a": "a: unknown number → 404",
    "b": "b: paused deployment → 480",
    "c": "c: full call, 1 s hold",
}
SERVERS = ("switchboard", "kamailio")
# "Clean" rate: no failed call in any round and retransmissions under 1 % of calls.
MAX_RETRANS_RATIO = 0.01


def ms(v):
    # SIPp's -trace_rtt has 1 ms resolution: 0 means "answered within the same millisecond".
    if v is None:
        return "–"
    return "<1" if v < 1 else f"{v:g}"


def group(runs):
    out = {}
    for r in runs:
        out.setdefault((r["scenario"], r["rate"], r["server"]), []).append(r)
    return out


def summarize(rs):
    calls = sum(r["calls"] for r in rs)
    cpu = [r["cpu_us_per_call"] for r in rs]
    p50 = [r["p50_ms"] for r in rs if r["p50_ms"] is not None]
    p99 = [r["p99_ms"] for r in rs if r["p99_ms"] is not None]
    failed = sum(r["failed"] for r in rs)
    retrans = sum(r["retransmissions"] for r in rs)
    return {
        "n": len(rs), "cpu": statistics.median(cpu), "cpu_min": min(cpu), "cpu_max": max(cpu),
        "failed": failed, "calls": calls, "retrans": retrans,
        "retrans_pct": 100 * retrans / calls if calls else 0,
        "p50": statistics.median(p50) if p50 else None,
        "p99": statistics.median(p99) if p99 else None,
        "cps": statistics.median(r["achieved_cps"] for r in rs),
        "agent": (statistics.median(a) if (a := [r["agent_us_per_call"] for r in rs
                                                 if r.get("agent_us_per_call") is not None])
                  else None),
        "udp_drops": sum(r.get("udp_drops", 0) for r in rs),
        "clean": failed == 0 and retrans < MAX_RETRANS_RATIO * calls,
    }


def bench_tables(data):
    meta, runs = data["meta"], data["runs"]
    g = group(runs)
    s = {k: summarize(v) for k, v in g.items()}
    scen_rates = sorted({(k[0], k[1]) for k in s})
    lines = [
        "## switchboard vs Kamailio: SIP load on loopback",
        "",
        f"{meta['date']}; {meta['cpus']} CPUs shared by server, SIPp and agent; "
        f"{meta['runs']} rounds per server and rate, alternating; {meta['duration_s']} s of "
        f"load per run; {meta['kamailio']} with {meta['kamailio_children']} UDP children; "
        f"{meta['sipp']}; switchboard `{Path(meta['binary']).name}` (release).",
        f"Idle CPU (ticks/s, subtracted): {data.get('idle_ticks_per_s')}.",
        "",
        "CPU µs/call: utime+stime of the server (all Kamailio processes) from /proc over the "
        "run plus a settle period, minus idle, / calls; median of the rounds (min–max). "
        "Failed: sum over rounds (incl. calls SIPp never completed). Retrans: SIPp "
        "`Retransmissions(C)` / calls. p50/p99: INVITE → final answer (c: → 200) from SIPp "
        "`-trace_rtt`, 1 ms resolution, median over rounds. cps: calls / SIPp wall time. "
        "Agent µs/call (c only, not in the server's figure): the echo agent (switchboard) or "
        "the SIPp UAS (Kamailio) on the same cores. UDP drops (a, b): kernel `RcvbufErrors` "
        "during the rounds (any socket: server or SIPp), summed; not shown for c, where "
        "switchboard's RTP (50 packets/s per call) to SIPp's unread media port lands there. "
        "Kamailio relays signalling only; switchboard also terminates the media and the "
        "agent's WebSocket, so c compares different amounts of work.",
        "",
        "| scenario | rate/s | server | CPU µs/call | (min–max) | failed | retrans % "
        "| p50 ms | p99 ms | cps | agent µs/call | UDP drops |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scen, rate in scen_rates:
        for server in SERVERS:
            v = s.get((scen, rate, server))
            if v is None:
                continue
            agent = "–" if v["agent"] is None else f"{v['agent']:.0f}"
            lines.append(
                f"| {SCENARIO_NAMES[scen]} | {rate} | {server} | {v['cpu']:.1f} "
                f"| {v['cpu_min']:.0f}–{v['cpu_max']:.0f} | {v['failed']} "
                f"| {v['retrans_pct']:.2f} | {ms(v['p50'])} | {ms(v['p99'])} | {v['cps']:.0f} "
                f"| {agent} | {'–' if scen == 'c' else v['udp_drops']} |")
    lines += ["", "### CPU per call, Kamailio / switchboard", "",
              "| scenario | rate/s | switchboard µs | Kamailio µs | Kamailio/switchboard |",
              "|---|---:|---:|---:|---:|"]
    ratios = []
    for scen, rate in scen_rates:
        a, b = s.get((scen, rate, "switchboard")), s.get((scen, rate, "kamailio"))
        if a and b:
            ratio = f"{b['cpu'] / a['cpu']:.2f}" if a["cpu"] > 0 else "–"
            ratios.append((scen, rate, ratio))
            lines.append(f"| {SCENARIO_NAMES[scen]} | {rate} | {a['cpu']:.1f} | {b['cpu']:.1f} "
                         f"| {ratio} |")
    lines += ["", "### Highest clean rate (0 failed calls, < 1 % retransmissions, every round)",
              "", "| scenario | switchboard | Kamailio |", "|---|---:|---:|"]
    for scen in sorted({k[0] for k in s}):
        cells = []
        for server in SERVERS:
            rates = sorted(r for (sc, r, sv) in s if sc == scen and sv == server)
            clean = [r for r in rates if s[(scen, r, server)]["clean"]]
            # "≥ top" when even the highest rate tried was clean: the limit is above it.
            best = max(clean) if clean else None
            cells.append("none" if best is None else
                         (f"≥ {best}/s" if best == rates[-1] else f"{best}/s"))
        lines.append(f"| {SCENARIO_NAMES[scen]} | {cells[0]} | {cells[1]} |")
    return lines, s


def rss_lines(data):
    mb = lambda kb: f"{kb / 1024:.1f} MiB"
    return ["", f"### switchboard RSS, scenario a sustained at {data['rate']}/s for "
            f"{data['seconds']} s ({data['meta']['date']})", "",
            "| start | peak | end | 2 s after | calls | failed | retrans | CPU µs/call |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {mb(data['rss_start_kb'])} | {mb(data['rss_peak_kb'])} | {mb(data['rss_end_kb'])} "
            f"| {mb(data['rss_after_settle_kb'])} | {data['calls']} | {data['failed']} "
            f"| {data['retransmissions']} | {data['cpu_us_per_call']:.1f} |"]


def mem_lines(data):
    lines = ["", f"### Memory per live call (scenario c, {data['calls']} calls held at once, {data['meta']['date']})", "",
             "| server | metric | before | with calls held | per call | failed |",
             "|---|---|---:|---:|---:|---:|"]
    for server, v in data["servers"].items():
        lines.append(f"| {server} | {v['metric']} | {v['before_kb'] / 1024:.1f} MiB "
                     f"| {v['held_kb'] / 1024:.1f} MiB | {v['per_call_kb']:.1f} KiB "
                     f"| {v['failed']} |")
    return lines


def plot(summary, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    colors = {"switchboard": "tab:blue", "kamailio": "tab:red"}
    styles = {"a": "-", "b": "--", "c": ":"}
    markers = {"a": "o", "b": "s", "c": "^"}
    for scen in sorted({k[0] for k in summary}):
        for server in SERVERS:
            pts = sorted((r, v["cpu"]) for (sc, r, sv), v in summary.items()
                         if sc == scen and sv == server)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle=styles[scen],
                        marker=markers[scen], color=colors[server],
                        label=f"{server} — {SCENARIO_NAMES[scen]}")
    ax.set_xlabel("offered rate (calls/s)")
    ax.set_ylabel("server CPU per call (µs, median)")
    ax.set_yscale("log")
    ax.set_title("switchboard vs Kamailio: CPU per call")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "target/load"
    lines, summary = [], None
    bench = out / "bench.json"
    if bench.exists():
        b, summary = bench_tables(json.loads(bench.read_text()))
        lines += b
    if (out / "rss.json").exists():
        lines += rss_lines(json.loads((out / "rss.json").read_text()))
    if (out / "mem.json").exists():
        lines += mem_lines(json.loads((out / "mem.json").read_text()))
    if not lines:
        print(f"no results in {out} (bench.json, rss.json, mem.json)", file=sys.stderr)
        return 1
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    print(text)
    if summary:
        plot(summary, out / "cpu_per_call.png")
        print(f"wrote {out / 'results.md'} and {out / 'cpu_per_call.png'}")
    else:
        print(f"wrote {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
