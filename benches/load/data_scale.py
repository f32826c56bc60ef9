#!/usr/bin/env python3
"""Black-box data-layer run (issue 16): the real release binary loads NUMBERS phone numbers
(POSTed as deployments of 1000 numbers) and a ROWS-row cohort CSV (one streamed upload) through
the admin API; prints the time of each step and the gateway's RSS after it.

    cargo build --release -p switchboard
    python3 benches/load/data_scale.py [--numbers 1000000] [--rows 1000000]

Standard library only; reuses loadbench.py's process handling. Writes its JSON result to
benches/load/results/data_scale-<numbers>-<rows>.json.
"""

import argparse
import json
import tempfile
import time
import urllib.request
from pathlib import Path

from loadbench import (
    API_KEY, APP, CONNECTION, HERE, ROOT, Admin, Procs, log, start_switchboard, wait_until,
)

PER_DEPLOYMENT = 1000


def rss_kb(pid, field="VmRSS:"):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def cohort_csv(rows):
    lines = ["phone_number,user_identifier,name,balance,plan"]
    plans = ("gold", "silver", "basic")
    lines += [f"+9198{i:08},user-{i},Customer {i},{i * 17 % 100000},{plans[i % 3]}"
              for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


def multipart(fields, boundary="sb-data-scale-boundary"):
    out = []
    for name, filename, content in fields:
        disposition = f'form-data; name="{name}"'
        if filename:
            disposition += f'; filename="{filename}"'
        out.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode())
        out.append(content)
        out.append(b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--numbers", type=int, default=1_000_000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--binary", default=str(ROOT / "target/release/switchboard"))
    args = parser.parse_args()
    result = {"numbers": args.numbers, "rows": args.rows}
    with tempfile.TemporaryDirectory(prefix="sb-data-") as tmp:
        work = Path(tmp)
        procs = Procs(work / "pids")
        body, content_type = multipart([
            ("name", None, b"data-scale"),
            ("cohort_file", "cohort.csv", cohort_csv(args.rows)),
        ])
        # The default upload cap (256 MiB) fits ~4M rows of this CSV; larger runs raise it.
        upload_cap = f"max_upload_bytes = {max(len(body) + (1 << 20), 256 << 20)}"
        try:
            p, _, admin = start_switchboard(procs, work, args.binary, "ws://127.0.0.1:9/agent",
                                            "40000-40999", admin_extra=upload_cap)
            result["rss_idle_kb"] = rss_kb(p.pid)
            admin.call("PUT", Admin.scoped(f"/connections/{CONNECTION}"),
                       {"allowed_addresses": ["127.0.0.1/32"]})
            admin.call("PUT", Admin.scoped(f"/apps/{APP}/versions/1"),
                       {"runtime_url": "ws://127.0.0.1:9/agent", "dialect": "twilio"})
            started = time.monotonic()
            first = None
            for d in range(args.numbers // PER_DEPLOYMENT):
                nums = [f"+9180{i:08}" for i in range(d * PER_DEPLOYMENT, (d + 1) * PER_DEPLOYMENT)]
                created = admin.call("POST", Admin.scoped("/deployments"), {
                    "name": f"data-{d}", "app_id": APP, "app_version": 1,
                    "connection_configs": [{"connection_id": CONNECTION, "phone_numbers": nums}],
                })
                first = first or created["deployment_id"]
            result["numbers_load_s"] = round(time.monotonic() - started, 2)
            result["rss_after_numbers_kb"] = rss_kb(p.pid)
            log(f"{args.numbers} numbers in {result['numbers_load_s']} s, "
                f"RSS {result['rss_after_numbers_kb'] // 1024} MiB")

            req = urllib.request.Request(
                admin.base + Admin.scoped(f"/deployments/{first}/cohorts/upload"), data=body,
                method="POST", headers={"X-API-Key": API_KEY, "Content-Type": content_type})
            started = time.monotonic()
            with urllib.request.urlopen(req, timeout=3600) as r:
                cohort = json.loads(r.read())
            result["upload_s"] = round(time.monotonic() - started, 2)
            result["upload_result"] = cohort.get("result")
            result["rss_after_cohort_kb"] = rss_kb(p.pid)
            result["rss_peak_kb"] = rss_kb(p.pid, "VmHWM:")
            wait_until("metrics answer", lambda: "switchboard" in admin.metrics(), 10)
            log(f"{args.rows} cohort rows in {result['upload_s']} s ({cohort.get('result')}), "
                f"RSS {result['rss_after_cohort_kb'] // 1024} MiB, "
                f"peak {result['rss_peak_kb'] // 1024} MiB")
        finally:
            procs.stop_all()
    out = HERE / "results" / f"data_scale-{args.numbers}-{args.rows}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
