#!/usr/bin/env python3
"""benches/load orchestrator: switchboard vs Kamailio under SIPp load, on loopback only.

Started by run.sh (which checks the tools, makes the venv and owns the cleanup trap). Modes:
  bench  scenarios a (404 unknown), b (480 paused), c (full call) at each rate, N rounds,
         servers alternating; CPU µs/call, failures, retransmissions, response time p50/p99.
  rss    switchboard VmRSS while scenario a runs at --rss-rate for --rss-seconds.
  mem    memory per live call: N concurrent held calls (scenario c), memory delta / N.
Every process it starts is recorded in WORK/pids/ so run.sh's trap can end it by id.
"""

import argparse
import csv
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")

API_KEY = "sb-load-admin-key-0123456789abcdef"
ORG, WS = "org-load", "ws-load"
CONNECTION, APP = "conn-load", "echo-agent"
CALLER = "+919812345678"
TOTAL_NUMBERS = 100_000
# Numbers per deployment: 10,000 E.164 strings is ~170 KB of JSON, well under the admin
# API's 1 MiB body cap (validate.rs caps connection_configs, not numbers).
PER_DEPLOYMENT = 10_000
PAUSED_DEPLOYMENT = TOTAL_NUMBERS // PER_DEPLOYMENT - 1  # the last one: numbers 90000-99999


def number(i):
    return f"+9180000{i:05d}"


def unknown_number(i):
    return f"+9181000{i:05d}"


def log(msg):
    print(f"[load {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes

class Procs:
    """Processes this run started: recorded by pid for run.sh's trap, stopped in reverse."""

    def __init__(self, piddir):
        self.piddir = piddir
        piddir.mkdir(parents=True, exist_ok=True)
        self.procs = []

    def start(self, name, argv, **kw):
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen(argv, **kw)
        (self.piddir / str(p.pid)).write_text(name)
        self.procs.append((name, p))
        return p

    def stop(self, p, grace=5.0):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        (self.piddir / str(p.pid)).unlink(missing_ok=True)
        self.procs = [(n, q) for n, q in self.procs if q is not p]

    def stop_all(self):
        for _, p in reversed(list(self.procs)):
            self.stop(p)


def free_port():
    """A port free for UDP and TCP on 127.0.0.1 right now (bounded tries)."""
    for _ in range(100):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", 0))
        port = u.getsockname()[1]
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            t.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            t.close()
            u.close()
    raise RuntimeError("no free port")


def descendants(pid):
    """pid and every process below it (Kamailio forks its workers from the main process)."""
    parents = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo and len(out) < 10_000:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def cpu_ticks(pids, missing_ok=False):
    """utime+stime (clock ticks) summed over pids; all threads of each are included."""
    total = 0
    for p in pids:
        try:
            text = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            if missing_ok:
                continue
            raise RuntimeError(f"process {p} is gone (a server died?)")
        fields = text.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # fields 14, 15 of proc(5)
    return total


def udp_rcvbuf_errors():
    """Kernel-wide UDP datagrams dropped for a full receive buffer (/proc/net/snmp): tells
    whether a lost request died in a socket queue (the server's or SIPp's) rather than in code."""
    lines = [l.split() for l in Path("/proc/net/snmp").read_text().splitlines()
             if l.startswith("Udp:")]
    return int(dict(zip(lines[0][1:], lines[1][1:])).get("RcvbufErrors", 0))


def vmrss_kb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pss_kb(pids):
    """Proportional set size summed over pids: counts Kamailio's shared memory once."""
    total = 0
    for p in pids:
        for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1])
    return total


def sip_options_ok(port, timeout=0.5):
    """True when the server answers an OPTIONS on 127.0.0.1:port."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    lport = s.getsockname()[1]
    s.settimeout(timeout)
    branch = f"z9hG4bK-probe-{random.getrandbits(48):x}"
    msg = (f"OPTIONS sip:probe@127.0.0.1:{port} SIP/2.0\r\n"
           f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch={branch}\r\n"
           f"From: <sip:probe@127.0.0.1:{lport}>;tag=p{random.getrandbits(32):x}\r\n"
           f"To: <sip:probe@127.0.0.1:{port}>\r\n"
           f"Call-ID: probe-{random.getrandbits(64):x}@127.0.0.1\r\n"
           "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
    try:
        s.sendto(msg.encode(), ("127.0.0.1", port))
        data, _ = s.recvfrom(65535)
        return data.startswith(b"SIP/2.0 ")
    except OSError:
        return False
    finally:
        s.close()


def wait_until(what, pred, timeout, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        if pred():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what}: not ready after {timeout}s")


# ---------------------------------------------------------------- data

def write_data(work):
    """The 100,000 numbers as Kamailio's db_text table, and SIPp injection files."""
    db = work / "dbtext"
    db.mkdir(parents=True, exist_ok=True)
    with open(db / "numbers", "w") as f:
        f.write("id(int,auto) key_name(string) key_type(int) value_type(int) "
                "key_value(string) expires(int)\n")
        for i in range(TOTAL_NUMBERS):
            state = 2 if i // PER_DEPLOYMENT == PAUSED_DEPLOYMENT else 1
            f.write(f"{i + 1}:{number(i)}:0:1:{state}:0\n")
    (db / "version").write_text("table_name(string) table_version(int)\nnumbers:2\n")

    def inf(name, numbers):
        path = work / name
        with open(path, "w") as f:
            f.write("SEQUENTIAL\n")
            for n in numbers:
                f.write(f"{n};{CALLER};\n")
        return path

    rng = random.Random(42)  # same order every run: both servers see the same sequence
    paused_lo = PAUSED_DEPLOYMENT * PER_DEPLOYMENT
    active = [number(i) for i in range(paused_lo)]
    rng.shuffle(active)
    paused = [number(i) for i in range(paused_lo, paused_lo + PER_DEPLOYMENT)]
    rng.shuffle(paused)
    return {
        "a": inf("unknown.csv", [unknown_number(i) for i in rng.sample(range(100_000), 20_000)]),
        "b": inf("paused.csv", paused),
        "c": inf("active.csv", active[:20_000]),
    }, db


# ---------------------------------------------------------------- switchboard

class Admin:
    def __init__(self, addr):
        self.base = f"http://{addr}"

    def call(self, method, path, body=None, ok=(200, 201, 204)):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"X-API-Key": API_KEY,
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                status, text = r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode()
        if status not in ok:
            raise RuntimeError(f"{method} {path} -> {status}: {text[:500]}")
        return json.loads(text) if text.strip() else {}

    def metrics(self):
        with urllib.request.urlopen(self.base + "/metrics", timeout=10) as r:
            return r.read().decode()

    @staticmethod
    def scoped(path):
        return f"/v1/orgs/{ORG}/workspaces/{WS}{path}"


def start_switchboard(procs, work, binary, agent_url, rtp_ports, admin_extra=""):
    cfg = work / "switchboard.toml"
    # rate_limit_*: far above the highest rate so the per-source bucket never shapes the load.
    # timeout_secs: SIPp sends no RTP; the mem mode holds calls longer than the default 30 s.
    cfg.write_text(f"""
[sip]
udp = "127.0.0.1:0"
tcp = "127.0.0.1:0"
rate_limit_per_second = 100000
rate_limit_burst = 200000

[admin]
listen = "127.0.0.1:0"
api_keys = ["{API_KEY}"]
{admin_extra}

[store]
url = "sqlite://{work / 'switchboard.db'}"

[media]
rtp_ports = "{rtp_ports}"
advertised_ip = "127.0.0.1"
timeout_secs = 300
agent_connect_timeout_ms = 5000
""")
    env = dict(os.environ, RUST_LOG=os.environ.get("LOAD_RUST_LOG", "warn"))
    p = procs.start("switchboard", [str(binary), "--config", str(cfg)], cwd=work, env=env,
                    stdout=subprocess.PIPE, stderr=open(work / "switchboard.log", "w"),
                    text=True)
    found = {}

    def read():
        for line in p.stdout:
            if '"listening"' in line and not found:
                found.update(json.loads(line))
        # keep draining so the daemon never blocks on a full pipe

    threading.Thread(target=read, daemon=True).start()
    wait_until("switchboard listening line", lambda: bool(found), 30, p)
    sip_port = int(found["sip_udp"].rsplit(":", 1)[1])
    return p, sip_port, Admin(found["admin"])


def seed_switchboard(admin, agent_url):
    admin.call("PUT", Admin.scoped(f"/connections/{CONNECTION}"),
               {"allowed_addresses": ["127.0.0.1/32"]})
    vpath = Admin.scoped(f"/apps/{APP}/versions/1")
    admin.call("PUT", vpath, {"runtime_url": agent_url, "dialect": "twilio"})
    wait_until("app version ready", lambda: admin.call("GET", vpath).get("status") == "ready", 60)
    ids = []
    for d in range(TOTAL_NUMBERS // PER_DEPLOYMENT):
        nums = [number(i) for i in range(d * PER_DEPLOYMENT, (d + 1) * PER_DEPLOYMENT)]
        created = admin.call("POST", Admin.scoped("/deployments"), {
            "name": f"load-{d}", "app_id": APP, "app_version": 1,
            "connection_configs": [{"connection_id": CONNECTION, "phone_numbers": nums}],
        })
        ids.append(created["deployment_id"])
    admin.call("PUT", Admin.scoped(f"/deployments/{ids[PAUSED_DEPLOYMENT]}/status"),
               {"action": "pause"})
    return ids


# ---------------------------------------------------------------- kamailio

def start_kamailio(procs, work, port, uas_port, children, shm_mb):
    rundir = work / "kamailio-run"
    rundir.mkdir(exist_ok=True)
    argv = ["kamailio", "-f", str(HERE / "kamailio.cfg"), "-DD", "-E",
            "-n", str(children), "-l", f"udp:127.0.0.1:{port}",
            "-m", str(shm_mb), "-M", "16", "-Y", str(rundir), "-w", str(rundir),
            "-P", str(rundir / "kamailio.pid"),
            "-A", f'DBURL="text://{work / "dbtext"}"',
            "-A", f'UAS_DST="sip:127.0.0.1:{uas_port}"']
    p = procs.start("kamailio", argv, cwd=work, stdout=subprocess.DEVNULL,
                    stderr=open(work / "kamailio.log", "w"))
    wait_until("kamailio answers OPTIONS", lambda: sip_options_ok(port), 60, p)
    return p


# ---------------------------------------------------------------- sipp

def read_stats(path):
    """Last row of SIPp's -trace_stat CSV as a dict (cumulative (C) columns)."""
    try:
        rows = list(csv.reader(open(path, newline=""), delimiter=";"))
    except OSError:
        return {}
    rows = [r for r in rows if r and any(x.strip() for x in r)]
    if len(rows) < 2:
        return {}
    return {h.strip(): v.strip() for h, v in zip(rows[0], rows[-1])}


def read_rtts(rundir):
    """Response times (ms) from SIPp's -trace_rtt file(s): Date_ms;response_time_ms;rtd_no."""
    out = []
    for f in rundir.glob("*_rtt.csv"):
        for row in csv.reader(open(f, newline=""), delimiter=";"):
            if len(row) >= 2:
                try:
                    out.append(float(row[1]))
                except ValueError:
                    pass  # header
    return out


def percentile(values, q):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q / 100 * (len(v) - 1))))]


def run_sipp(procs, rundir, scenario, inf, target_port, rate, calls, hold_ms=None,
             limit=None, stop_at=None):
    """One bounded SIPp UAC run (-m calls, -timeout); returns (stats, rtts, exit, wall_s).

    stop_at: optional callable polled while SIPp runs (the mem mode samples memory there)."""
    rundir.mkdir(parents=True, exist_ok=True)
    hold_s = (hold_ms or 0) / 1000
    timeout = int(calls / rate + hold_s + 30)
    argv = ["sipp", f"127.0.0.1:{target_port}", "-sf", str(HERE / scenario),
            "-inf", str(inf), "-t", "u1",
            "-i", "127.0.0.1", "-p", str(free_port()),
            "-mi", "127.0.0.1", "-mp", str(free_port()),
            "-r", str(rate), "-rp", "1000", "-m", str(calls),
            "-l", str(limit or max(100, int(rate * (hold_s + 3)))),
            "-timeout", f"{timeout}s", "-recv_timeout", "10000",
            "-nostdin",
            "-trace_stat", "-stf", str(rundir / "stat.csv"), "-fd", "1",
            "-trace_rtt", "-rtt_freq", str(max(1, min(100, calls // 20))),
            "-trace_err", "-error_file", str(rundir / "errors.log")]
    if hold_ms is not None:
        argv += ["-d", str(hold_ms)]
    if os.environ.get("LOAD_TRACE_MSG"):  # debugging: every SIP message into messages.log
        argv += ["-trace_msg", "-message_file", str(rundir / "messages.log")]
    t0 = time.monotonic()
    p = procs.start("sipp-uac", argv, cwd=rundir, stdout=open(rundir / "stdout.log", "w"),
                    stderr=subprocess.STDOUT)
    try:
        deadline = t0 + timeout + 15
        while p.poll() is None and time.monotonic() < deadline:
            if stop_at is not None:
                stop_at(time.monotonic() - t0)
            time.sleep(0.1)
    finally:
        procs.stop(p)
    return read_stats(rundir / "stat.csv"), read_rtts(rundir), p.returncode, time.monotonic() - t0


def start_uas(procs, rundir, port, calls, seconds):
    """SIPp UAS (uas_agent.xml): Kamailio's "agent" for the full call (180, 200, ACK, BYE, 200)."""
    rundir.mkdir(parents=True, exist_ok=True)
    argv = ["sipp", "-sf", str(HERE / "uas_agent.xml"), "-t", "u1", "-i", "127.0.0.1", "-p", str(port),
            "-mi", "127.0.0.1", "-mp", str(free_port()), "-m", str(calls),
            "-timeout", f"{int(seconds)}s", "-nostdin",
            "-trace_err", "-error_file", str(rundir / "uas-errors.log")]
    p = procs.start("sipp-uas", argv, cwd=rundir, stdout=open(rundir / "uas.log", "w"),
                    stderr=subprocess.STDOUT)
    time.sleep(0.3)
    if p.poll() is not None:
        raise RuntimeError(f"SIPp UAS exited at start ({p.returncode}); see {rundir}/uas.log")
    return p


# ---------------------------------------------------------------- modes

SCENARIOS = {
    "a": ("uac_404.xml", None, "unknown number -> 404"),
    "b": ("uac_480.xml", None, "paused deployment -> 480"),
    "c": ("uac_call.xml", 1000, "full call, 1 s hold"),
}


def measure_idle(servers, seconds):
    """Ticks/s each server burns doing nothing (timers): subtracted from every run's CPU."""
    before = {s: cpu_ticks(v["pids"]) for s, v in servers.items()}
    time.sleep(seconds)
    return {s: (cpu_ticks(v["pids"]) - before[s]) / seconds for s, v in servers.items()}


def metric(page, name):
    for line in page.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def drain(server, max_s):
    """Waits (bounded) until switchboard holds no transaction and no call, so a run does not
    inherit the previous one's: a UDP transaction lingers 32 s (Timers H/J/L) and the live
    transaction cap (10,000 by default) counts them. Returns the seconds waited."""
    admin = server.get("admin")
    if admin is None:
        return 0.0
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_s:
        page = admin.metrics()
        tx = metric(page, "switchboard_sip_transactions") or 0
        calls = metric(page, "switchboard_sip_calls_active") or 0
        if tx == 0 and calls == 0:
            break
        time.sleep(0.5)
    return round(time.monotonic() - t0, 1)


def one_run(procs, args, servers, server, scen, rate, rnd, infs, idle):
    scenario, hold_ms, _ = SCENARIOS[scen]
    calls = int(rate * args.duration)
    rundir = args.work / "runs" / f"{scen}-{rate}-{rnd}-{server}"
    s = servers[server]
    uas = None
    if scen == "c" and server == "kamailio":
        uas = start_uas(procs, rundir, s["uas_port"], calls,
                        args.duration + (hold_ms or 0) / 1000 + 60)
    drained = drain(s, args.drain_max)
    pids = s["pids"]
    # The agent side (echo agent / SIPp UAS) shares the 2 cores: its CPU is reported, not counted.
    agent_pids = [uas.pid] if uas is not None else s.get("agent_pids", [])
    t0 = time.monotonic()
    c0 = cpu_ticks(pids)
    a0 = cpu_ticks(agent_pids, missing_ok=True)
    u0 = udp_rcvbuf_errors()
    stats, rtts, code, wall = run_sipp(procs, rundir, scenario, infs[scen], s["port"], rate,
                                       calls, hold_ms=hold_ms)
    # Settle inside the CPU window: a server's per-call work includes teardown that lags the
    # last response (tm wait timer, WebSocket close); the idle rate is subtracted for it.
    time.sleep(args.settle)
    c1 = cpu_ticks(pids)
    a1 = cpu_ticks(agent_pids, missing_ok=True)
    udp_drops = udp_rcvbuf_errors() - u0
    window = time.monotonic() - t0
    if uas is not None:
        procs.stop(uas, grace=2)
    ticks = max(0.0, (c1 - c0) - idle[server] * window)
    ok = int(stats.get("SuccessfulCall(C)", 0) or 0)
    failed_stat = int(stats.get("FailedCall(C)", 0) or 0)
    # Calls SIPp never completed (global timeout) count as failed too.
    failed = max(failed_stat, calls - ok)
    retrans = int(stats.get("Retransmissions(C)", 0) or 0)
    rec = {
        "server": server, "scenario": scen, "rate": rate, "round": rnd, "calls": calls,
        "successful": ok, "failed": failed, "retransmissions": retrans,
        "cpu_ticks": c1 - c0, "cpu_ticks_net": ticks, "window_s": round(window, 2),
        "cpu_us_per_call": ticks / CLK_TCK * 1e6 / calls,
        "agent_us_per_call": (a1 - a0) / CLK_TCK * 1e6 / calls if scen == "c" else None,
        "p50_ms": percentile(rtts, 50), "p99_ms": percentile(rtts, 99), "rtt_samples": len(rtts),
        "sipp_exit": code, "wall_s": round(wall, 2),
        "achieved_cps": round(calls / max(0.001, wall - (hold_ms or 0) / 1000), 1),
        "udp_drops": udp_drops, "drain_s": drained, "rundir": str(rundir),
    }
    log(f"{scen} {rate:>5}/s round {rnd} {server:<11} cpu {rec['cpu_us_per_call']:8.1f} us/call"
        f"  ok {ok} failed {failed} retrans {retrans} udp drops {udp_drops}"
        f"  p50 {rec['p50_ms']} p99 {rec['p99_ms']} ms  sipp exit {code}")
    return rec


def mode_bench(procs, args, servers, infs):
    idle = measure_idle(servers, args.idle_seconds)
    log(f"idle CPU ticks/s: {idle}")
    records = []
    for scen in args.scenarios:
        rates = args.rates_c if scen == "c" else args.rates_ab
        for rate in rates:
            for rnd in range(1, args.runs + 1):
                for server in ("switchboard", "kamailio"):  # alternate: drift hits both
                    records.append(one_run(procs, args, servers, server, scen, rate, rnd,
                                           infs, idle))
                    save(args, {"mode": "bench", "idle_ticks_per_s": idle, "runs": records})
    return {"mode": "bench", "idle_ticks_per_s": idle, "runs": records}


def mode_rss(procs, args, servers, infs):
    sb = servers["switchboard"]
    pid = sb["pids"][0]
    samples = []

    def sample(t):
        if not samples or t - samples[-1][0] >= 0.5:
            samples.append((round(t, 2), vmrss_kb(pid)))

    start = vmrss_kb(pid)
    calls = args.rss_rate * args.rss_seconds
    rundir = args.work / "runs" / f"rss-{args.rss_rate}"
    c0 = cpu_ticks(sb["pids"])
    stats, rtts, code, wall = run_sipp(procs, rundir, "uac_404.xml", infs["a"], sb["port"],
                                       args.rss_rate, calls, stop_at=sample)
    end = vmrss_kb(pid)
    time.sleep(args.settle)
    after = vmrss_kb(pid)
    c1 = cpu_ticks(sb["pids"])
    ok = int(stats.get("SuccessfulCall(C)", 0) or 0)
    res = {
        "mode": "rss", "rate": args.rss_rate, "seconds": args.rss_seconds, "calls": calls,
        "successful": ok, "failed": max(int(stats.get("FailedCall(C)", 0) or 0), calls - ok),
        "retransmissions": int(stats.get("Retransmissions(C)", 0) or 0),
        "rss_start_kb": start, "rss_peak_kb": max([start, end] + [s for _, s in samples]),
        "rss_end_kb": end, "rss_after_settle_kb": after, "samples": samples,
        "cpu_us_per_call": (c1 - c0) / CLK_TCK * 1e6 / calls, "wall_s": round(wall, 1),
        "p50_ms": percentile(rtts, 50), "p99_ms": percentile(rtts, 99), "sipp_exit": code,
    }
    log(f"rss: start {start} kB peak {res['rss_peak_kb']} kB end {end} kB "
        f"(failed {res['failed']}, retrans {res['retransmissions']})")
    return res


def mode_mem(procs, args, servers, infs):
    n, rate = args.mem_calls, args.mem_rate
    ramp = n / rate
    hold_ms = int((ramp + args.mem_hold) * 1000)
    out = {"mode": "mem", "calls": n, "rate": rate, "servers": {}}
    for server in ("switchboard", "kamailio"):
        s = servers[server]
        # switchboard: one process, VmRSS as asked. Kamailio: many processes sharing one shm
        # pool, so RSS would count it once per process; Pss sums it once.
        def mem():
            return vmrss_kb(s["pids"][0]) if server == "switchboard" else pss_kb(s["pids"])
        rundir = args.work / "runs" / f"mem-{server}"
        uas = None
        if server == "kamailio":
            uas = start_uas(procs, rundir, s["uas_port"], n, ramp + hold_ms / 1000 + 60)
        before = mem()
        held = []

        def sample(t):
            # All n calls are up from ramp (+1 s for the last answers) until the hold ends.
            if ramp + 1.5 <= t <= ramp + args.mem_hold - 0.5 and len(held) < 1000:
                held.append(mem())

        stats, _, code, _ = run_sipp(procs, rundir, "uac_call.xml", infs["c"], s["port"], rate,
                                     n, hold_ms=hold_ms, limit=n + 10, stop_at=sample)
        if uas is not None:
            procs.stop(uas, grace=2)
        peak = max(held) if held else before
        ok = int(stats.get("SuccessfulCall(C)", 0) or 0)
        out["servers"][server] = {
            "metric": "VmRSS" if server == "switchboard" else "sum of Pss",
            "before_kb": before, "held_kb": peak, "per_call_kb": (peak - before) / n,
            "successful": ok, "failed": max(int(stats.get("FailedCall(C)", 0) or 0), n - ok),
            "sipp_exit": code,
        }
        log(f"mem {server}: {before} kB -> {peak} kB with {n} calls held = "
            f"{(peak - before) / n:.1f} kB/call (ok {ok})")
        time.sleep(args.settle)
    return out


def save(args, result):
    path = args.out / f"{result['mode']}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"meta": meta(args), **result}, indent=1))
    tmp.replace(path)


def meta(args):
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpus": os.cpu_count(),
        "runs": args.runs, "duration_s": args.duration, "settle_s": args.settle,
        "kamailio_children": args.kam_children, "clk_tck": CLK_TCK,
        "binary": str(args.binary),
        "kamailio": subprocess.run(["kamailio", "-v"], capture_output=True, text=True)
        .stdout.splitlines()[0].replace("version:", "").strip(),
        "sipp": subprocess.run(["sipp", "-v"], capture_output=True, text=True)
        .stdout.strip().splitlines()[0].strip(),
    }


def rates(text):
    return [int(x) for x in text.replace(",", " ").split()]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mode", choices=["bench", "rss", "mem"], default="bench")
    ap.add_argument("--runs", type=int, default=5, help="rounds per server and rate (median)")
    ap.add_argument("--scenarios", default="abc", help="subset of a, b, c")
    ap.add_argument("--rates-ab", type=rates, default=rates("500 1500 3000 5000"))
    ap.add_argument("--rates-c", type=rates, default=rates("250 500 1000 2000"))
    ap.add_argument("--duration", type=float, default=8, help="seconds of load per run")
    ap.add_argument("--settle", type=float, default=2, help="seconds after SIPp, in CPU window")
    ap.add_argument("--idle-seconds", type=float, default=5)
    ap.add_argument("--drain-max", type=float, default=40,
                    help="max seconds to wait for switchboard to hold no transaction before a run")
    ap.add_argument("--rss-rate", type=int, default=3000)
    ap.add_argument("--rss-seconds", type=int, default=60)
    ap.add_argument("--mem-calls", type=int, default=1000)
    ap.add_argument("--mem-rate", type=int, default=200)
    ap.add_argument("--mem-hold", type=float, default=10, help="seconds all calls are up")
    ap.add_argument("--kam-children", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--kam-shm-mb", type=int, default=512)
    ap.add_argument("--binary", type=Path, default=ROOT / "target/release/switchboard")
    ap.add_argument("--out", type=Path, default=ROOT / "target/load")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the echo agent")
    args = ap.parse_args()
    args.scenarios = [s for s in args.scenarios if s in SCENARIOS]
    if not 1 <= args.runs <= 50 or not 0.5 <= args.duration <= 600:
        ap.error("--runs must be 1..50 and --duration 0.5..600 (every run is bounded)")
    args.out.mkdir(parents=True, exist_ok=True)
    args.work = args.out / "work"
    # Fresh store, tables and logs every time: a previous run's deployments would collide.
    shutil.rmtree(args.work, ignore_errors=True)
    procs = Procs(args.work / "pids")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        infs, _ = write_data(args.work)
        agent_port = free_port()
        agent = procs.start("echo-agent", [args.python, str(HERE / "echo_agent.py"),
                                           "--port", str(agent_port)],
                            stdout=subprocess.DEVNULL, stderr=open(args.work / "agent.log", "w"))
        wait_until("echo agent", lambda: _tcp_open(agent_port), 20, agent)
        agent_url = f"ws://127.0.0.1:{agent_port}/agent"
        # RTP range below the kernel's ephemeral ports, where free_port() picks SIPp's.
        sb, sb_port, admin = start_switchboard(procs, args.work, args.binary, agent_url,
                                               "10000-29999")
        t = time.monotonic()
        seed_switchboard(admin, agent_url)
        log(f"switchboard seeded: {TOTAL_NUMBERS} numbers in "
            f"{TOTAL_NUMBERS // PER_DEPLOYMENT} deployments, 1 paused "
            f"({time.monotonic() - t:.1f}s)")
        wait_until("switchboard answers OPTIONS", lambda: sip_options_ok(sb_port), 30, sb)
        servers = {"switchboard": {"port": sb_port, "pids": [sb.pid], "admin": admin,
                                   "agent_pids": [agent.pid]}}
        if args.mode != "rss":
            kam_port, uas_port = free_port(), free_port()
            kam = start_kamailio(procs, args.work, kam_port, uas_port, args.kam_children,
                                 args.kam_shm_mb)
            servers["kamailio"] = {"port": kam_port, "uas_port": uas_port,
                                   "pids": descendants(kam.pid)}
            log(f"kamailio up on {kam_port}: {len(servers['kamailio']['pids'])} processes")
        log(f"switchboard up on {sb_port} (pid {sb.pid}); agent {agent_url}")
        result = {"bench": mode_bench, "rss": mode_rss, "mem": mode_mem}[args.mode](
            procs, args, servers, infs)
        save(args, result)
        return 0
    finally:
        procs.stop_all()


def _tcp_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
