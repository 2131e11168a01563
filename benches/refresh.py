#!/usr/bin/env python3
"""Refresh benchmark: the release exporter against the simulator on loopback.

The exporter runs one discovery target (no --datacenters): one pass pages through
the whole inventory, every datacenter of it, so that a pass has a best schedule to
compare with (with one target per datacenter, each on its own random offset, the
passes overlap by chance). For each inventory size, concurrency and collector
setting (--collectors: `on` is the default flags, `off` adds
--no-collector.lifecycle), it measures, on a fresh exporter process:
  - the wall time of one full refresh, beside the best possible schedule (page 1,
    then every remaining page, C in flight, L seconds each):
    L * (1 + ceil((P-1)/C)); and the same at the latency the simulator really
    added (its timers fire late), which it reports;
  - the exporter's CPU seconds for that refresh, and per million images (from the
    second refresh of the process on, so start-up is not counted), split into user
    and system time, with the context switches of its threads per request (how
    often it went to sleep waiting for an answer and woke up again);
  - short refreshes are measured several times (about 5 s of refreshing, at most
    5 refreshes): the median wall time and the mean CPU time are reported;
  - its peak RSS (VmHWM) over all its refreshes, and its RSS when idle after the
    first;
  - /metrics latency (p50, p99) and throughput with wrk while refreshes run back
    to back, uncompressed and gzip-compressed (as Prometheus asks for it).
It checks that the exported totals equal the simulator's before reporting.

Usage: python3 benches/refresh.py [--sizes 10000,100000,1000000] [--concurrency 4,16]
       [--latency-ms 20] [--datacenters 10] [--wrk-seconds 5] [--collectors on,off]
Needs cargo and wrk (Debian package `wrk`).
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

from harness import BIN, ROOT, Proc, cpu_seconds, fetch, log, parse_wrk, proc_status, ready, wait

PAGE_SIZE = 100


def context_switches(pid):
    """Context switches of all the process's threads: each is a thread going to
    sleep (waiting for an answer) or being preempted."""
    total = 0
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def metrics(addr):
    out = {}
    for line in fetch("http://%s/metrics" % addr)[1].decode().splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            out[series] = float(value)
    return out


# Extra exporter flags per --collectors setting.
COLLECTORS = {"on": [], "off": ["--no-collector.lifecycle"]}


def start_exporter(sim_addr, concurrency, interval, extra):
    env = dict(os.environ, FINOVY_ACCESS_TOKEN="bench-token")
    args = [
        os.path.join(BIN, "finovy-image-exporter"),
        "--web.listen-address", "127.0.0.1:0",
        "--api.url", "http://" + sim_addr,
        "--api.page-size", str(PAGE_SIZE),
        "--api.concurrency", str(concurrency),
        "--api.timeout", "30s",
        "--refresh.interval", interval,
        "--refresh.stale-after", "1h",
        "--log.level", "info",
        "--log.format", "json",
    ] + extra
    return Proc(args, env=env, ready=r'"address":"([0-9.:]+)"')


def held(sim_addr):
    """The simulator's count of list answers and the time it held them, in all."""
    return json.loads(fetch("http://%s/_sim/held" % sim_addr)[1])


def best_schedule(pages, concurrency, latency):
    return latency * (1 + math.ceil(max(pages - 1, 0) / concurrency))


def run_case(sim_addr, images, dcs, concurrency, latency, wrk_seconds, collectors):
    # Every full page, and the one that ends the list (short, or empty when the
    # count is a multiple of the page size).
    pages = images // PAGE_SIZE + 1
    bound = best_schedule(pages, concurrency, latency)
    extra = COLLECTORS[collectors]

    # Two refreshes on a fresh process. The second is the one measured: the first
    # also pays for start-up (loading the system's root certificates, first
    # connections). Idle RSS is read between the two.
    interval = max(3.0, 2 * bound + 2.0)
    exp = start_exporter(sim_addr, concurrency, "%dms" % (interval * 1000), extra)
    try:
        addr = exp.match.group(1)
        pid = exp.p.pid
        # Cycles are followed through the log (one line per cycle), not by
        # scraping: scrapes cost CPU of their own, which is not the refresh's.
        def cycles_logged(n):
            lines = list(exp.lines)
            if any('"refresh failed"' in line for line in lines):
                raise RuntimeError("a refresh failed:\n" + "\n".join(lines[-5:]))
            return sum('"refresh finished"' in line for line in lines) >= n

        wait("first refresh", lambda: cycles_logged(1), 600)
        time.sleep(0.5)
        idle = proc_status(pid, "VmRSS")
        # Short refreshes are measured several times (about 5 s of refreshing,
        # at most 5): the median wall time, the mean CPU time. The CPU time of
        # each is read before the scrape that reads its wall time.
        measured = max(1, min(5, int(5.0 // bound))) if bound else 5
        walls, user, system, switches = [], 0.0, 0.0, 0
        held0 = held(sim_addr)
        for k in range(measured):
            (user0, system0), switches0 = cpu_seconds(pid), context_switches(pid)
            wait("refresh %d" % (k + 2), lambda: cycles_logged(k + 2), 600 + interval)
            (user1, system1), switches1 = cpu_seconds(pid), context_switches(pid)
            user += user1 - user0
            system += system1 - system0
            switches += switches1 - switches0
            m = metrics(addr)
            walls.append(max(v for key, v in m.items() if key.startswith("finovy_refresh_duration_seconds{")))
        held1 = held(sim_addr)
        user /= measured
        system /= measured
        cpu = user + system
        wall = sorted(walls)[len(walls) // 2]
        answers = held1["answers"] - held0["answers"]
        sim_latency = (held1["total_us"] - held0["total_us"]) / max(answers, 1) / 1e6
        peak = proc_status(pid, "VmHWM")
        up = [v for k, v in m.items() if k.startswith("finovy_up{")]
        total = sum(v for k, v in m.items() if k.startswith("finovy_images{"))
        if total != images or len(up) != len(dcs) or min(up) != 1:
            raise RuntimeError("wrong result: %s images exported, %s expected, up=%s" % (total, images, up))
    finally:
        exp.stop()

    # /metrics under wrk while refreshes run back to back.
    exp = start_exporter(sim_addr, concurrency, "1s", extra)
    try:
        addr = exp.match.group(1)
        wait("first refresh", lambda: ready(addr), 600)
        def run_wrk(*headers):
            args = ["wrk", "-t1", "-c8", "-d%ds" % wrk_seconds, "--latency"]
            for h in headers:
                args += ["-H", h]
            out = subprocess.run(
                args + ["http://%s/metrics" % addr], capture_output=True, text=True, check=True
            ).stdout
            return parse_wrk(out)

        # Uncompressed, and as Prometheus asks for it (gzip).
        p50, p99, rps, non2xx = run_wrk()
        gz_p50, gz_p99, gz_rps, gz_non2xx = run_wrk("Accept-Encoding: gzip")
        non2xx += gz_non2xx
        refreshes = metrics(addr).get('finovy_api_requests_total{code="200"}', 0) / max(pages, 1)
    finally:
        exp.stop()

    return {
        "collectors": collectors,
        "images": images,
        "datacenters": len(dcs),
        "pages": pages,
        "concurrency": concurrency,
        "latency_ms": latency * 1000,
        "refresh_s": round(wall, 3),
        "best_s": round(bound, 3),
        "ratio": round(wall / bound, 3) if bound else None,
        "sim_latency_ms": round(sim_latency * 1000, 2),
        "best_at_sim_latency_s": round(bound * sim_latency / latency, 3) if bound else None,
        "ratio_at_sim_latency": round(wall / (bound * sim_latency / latency), 3) if bound else None,
        "refreshes_measured": measured,
        "cpu_s": round(cpu, 3),
        "cpu_s_per_million": round(cpu / images * 1e6, 3),
        "user_s_per_million": round(user / images * 1e6, 3),
        "system_s_per_million": round(system / images * 1e6, 3),
        "switches_per_request": round(switches / measured / pages, 2),
        "peak_rss_mib": round(peak / 2**20, 1),
        "idle_rss_mib": round(idle / 2**20, 1),
        "metrics_p50_ms": p50,
        "metrics_p99_ms": p99,
        "metrics_rps": rps,
        "metrics_gzip_p50_ms": gz_p50,
        "metrics_gzip_p99_ms": gz_p99,
        "metrics_gzip_rps": gz_rps,
        "metrics_non2xx": non2xx,
        "refreshes_during_wrk": round(refreshes, 1),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--concurrency", default="4,16")
    ap.add_argument("--latency-ms", type=int, default=20)
    ap.add_argument("--datacenters", type=int, default=10)
    ap.add_argument("--wrk-seconds", type=int, default=5)
    ap.add_argument("--collectors", default="on,off", help="on: default flags; off: --no-collector.lifecycle")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")
    log("building release binaries…")
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bins"], cwd=ROOT, check=True)

    dcs = ["DC%02d" % i for i in range(args.datacenters)]
    latency = args.latency_ms / 1000
    results = []
    for images in [int(s) for s in args.sizes.split(",")]:
        sim = Proc(
            [
                os.path.join(BIN, "finovy-api-sim"),
                "--listen", "127.0.0.1:0",
                "--images", str(images),
                "--datacenters", ",".join(dcs),
                "--faults", json.dumps({"latency_ms": args.latency_ms}),
            ],
            ready=r"listening on ([0-9.:]+)",
            timeout=600,
        )
        try:
            sim_addr = sim.match.group(1)
            for c in [int(s) for s in args.concurrency.split(",")]:
                for collectors in args.collectors.split(","):
                    log("images=%d concurrency=%d collectors=%s…" % (images, c, collectors))
                    r = run_case(sim_addr, images, dcs, c, latency, args.wrk_seconds, collectors)
                    results.append(r)
                    log(json.dumps(r))
        finally:
            sim.stop()

    cols = [
        ("collectors", "lifecycle"), ("images", "images"), ("concurrency", "C"), ("pages", "pages"),
        ("refresh_s", "refresh s"), ("best_s", "best s"), ("ratio", "ratio"),
        ("sim_latency_ms", "sim L ms"), ("ratio_at_sim_latency", "ratio at sim L"),
        ("cpu_s", "CPU s"), ("cpu_s_per_million", "CPU s/M"),
        ("user_s_per_million", "user s/M"), ("system_s_per_million", "sys s/M"),
        ("switches_per_request", "switches/request"),
        ("peak_rss_mib", "peak RSS MiB"), ("idle_rss_mib", "idle RSS MiB"),
        ("metrics_p50_ms", "/metrics p50 ms"), ("metrics_p99_ms", "p99 ms"),
        ("metrics_rps", "scrapes/s"),
        ("metrics_gzip_p99_ms", "gzip p99 ms"), ("metrics_gzip_rps", "gzip scrapes/s"),
    ]
    print("| " + " | ".join(c[1] for c in cols) + " |")
    print("|" + "---|" * len(cols))
    for r in results:
        print("| " + " | ".join(str(r[c[0]]) for c in cols) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
