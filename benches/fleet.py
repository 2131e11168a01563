#!/usr/bin/env python3
"""Fleet benchmark: one release exporter refreshing many accounts from a
generated --config.file, against the simulator on loopback.

The default fleet is 1,000 accounts x 3 datacenters x about 100 images, each
answer held 20 ms by the simulator. Every target (account, datacenter) refreshes
once per interval at its own offset. The benchmark measures, over one interval's
worth of passes (every target once) after all have finished their first:
  - the time the passes took against the request bound: a pass of P pages needs
    page 1, then the other P-1 pages C at a time, so at best
    L * (1 + ceil((P-1)/C)); summed over the passes (from the exporter's
    `refresh finished` log lines, which carry `pages` and `duration_seconds`),
    the ratio says how close the scheduler comes to what the latency allows; the
    same at the latency the simulator really added (its timers fire late);
  - the exporter's CPU time per pass (user + system over the window / passes);
  - its RSS at the end of the window and its peak (VmHWM), after the paced gzip
    scrapes, and at the end (after plain scrapes too);
  - the size of /metrics, plain and gzip-compressed;
  - /metrics latency (p50, p99) while the targets keep refreshing: gzip scrapes
    one at a time, two a second, as a Prometheus makes them; then with wrk, one
    connection asking back to back (saturation), uncompressed and with gzip, and
    four gzip connections at once.
It checks that every target is up and that the exported totals equal the
simulator's before reporting.

Usage: python3 benches/fleet.py [--accounts 1000] [--datacenters 3] [--images 100]
       [--latency-ms 20] [--concurrency 4] [--interval 10] [--wrk-seconds 5]
       [--paced-seconds 30]
Needs cargo, curl and wrk (Debian packages `curl`, `wrk`).
"""

import argparse
import gzip
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from harness import BIN, ROOT, Proc, cpu_seconds, fetch, log, parse_wrk, proc_status, ready, wait

PAGE_SIZE = 100


def finished_passes(lines):
    """The `refresh finished` log lines (JSON) so far, and whether any failed."""
    passes, failed = [], []
    for line in lines:
        if '"refresh finished"' in line:
            event = json.loads(line)
            # Fields are flat or under "fields", as the JSON layer is set up.
            passes.append(dict(event, **event.get("fields", {})))
        elif '"refresh failed"' in line:
            failed.append(line)
    return passes, failed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--accounts", type=int, default=1000)
    ap.add_argument("--datacenters", type=int, default=3)
    ap.add_argument("--images", type=int, default=100, help="per datacenter, on average")
    ap.add_argument("--latency-ms", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=4, help="per account")
    ap.add_argument("--interval", type=int, default=10, help="seconds")
    ap.add_argument("--wrk-seconds", type=int, default=5)
    ap.add_argument("--paced-seconds", type=int, default=30, help="of scrapes two a second")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    for tool in ("wrk", "curl"):
        if not shutil.which(tool):
            sys.exit("%s is needed: apt-get install %s" % (tool, tool))
    log("building release binaries...")
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bins"], cwd=ROOT, check=True)

    dcs = ["DC%d" % i for i in range(args.datacenters)]
    names = ["acct-%04d" % i for i in range(args.accounts)]
    tokens = {n: "token-%s" % n for n in names}
    per_account = args.images * args.datacenters
    sim = Proc(
        [os.path.join(BIN, "finovy-api-sim"), "--listen", "127.0.0.1:0",
         "--faults", json.dumps({"latency_ms": args.latency_ms})]
        + sum((["--account", "%s:%s:%d:%d:%s" % (n, tokens[n], i + 1, per_account, ",".join(dcs))]
               for i, n in enumerate(names)), []),
        ready=r"listening on ([0-9.:]+)",
        timeout=600,
    )
    tmp = tempfile.mkdtemp(prefix="finovy-fleet-")
    exp = None
    try:
        sim_addr = sim.match.group(1)
        config = os.path.join(tmp, "config.yaml")
        env = dict(os.environ)
        with open(config, "w") as f:
            f.write("defaults:\n")
            f.write("  api: {url: 'http://%s', page_size: %d, concurrency: %d, timeout: 30s}\n"
                    % (sim_addr, PAGE_SIZE, args.concurrency))
            f.write("  refresh: {interval: %ds, stale_after: 1h}\n" % args.interval)
            f.write("  datacenters: [%s]\n" % ", ".join(dcs))
            f.write("accounts:\n")
            for i, n in enumerate(names):
                var = "FLEET_TOKEN_%04d" % i
                env[var] = tokens[n]
                f.write("  - {name: %s, token_env: %s}\n" % (n, var))
        check = subprocess.run([os.path.join(BIN, "finovy-image-exporter"), "--config.file", config,
                                "--config.check"], env=env, capture_output=True, text=True)
        log(check.stdout.strip() or check.stderr.strip())
        if check.returncode != 0:
            raise RuntimeError("the generated configuration does not check")
        exp = Proc(
            [os.path.join(BIN, "finovy-image-exporter"), "--web.listen-address", "127.0.0.1:0",
             "--config.file", config, "--log.format", "json", "--log.level", "info"],
            env=env,
            ready=r'"address":"([0-9.:]+)"',
        )
        addr = exp.match.group(1)
        pid = exp.p.pid
        targets = args.accounts * args.datacenters
        wait("every target's first pass", lambda: ready(addr), 120 + 2 * args.interval)
        # One interval's worth: every target once more, after the first passes.
        start_passes = len(finished_passes(list(exp.lines))[0])
        held0 = json.loads(fetch("http://%s/_sim/held" % sim_addr)[1])
        cpu0, t0 = sum(cpu_seconds(pid)), time.time()
        wait("one interval of passes",
             lambda: len(finished_passes(list(exp.lines))[0]) >= start_passes + targets,
             10 * args.interval + 60)
        cpu1, t1 = sum(cpu_seconds(pid)), time.time()
        held1 = json.loads(fetch("http://%s/_sim/held" % sim_addr)[1])
        rss, peak = proc_status(pid, "VmRSS"), proc_status(pid, "VmHWM")
        passes, failed = finished_passes(list(exp.lines))
        if failed:
            raise RuntimeError("a refresh failed:\n" + "\n".join(failed[:5]))
        window = passes[start_passes:start_passes + targets]
        latency = args.latency_ms / 1000
        c = args.concurrency
        spent = sum(p["duration_seconds"] for p in window)
        requests = sum(p["pages"] for p in window)
        bound = sum(latency * (1 + math.ceil(max(p["pages"] - 1, 0) / c)) for p in window)
        answers = held1["answers"] - held0["answers"]
        sim_latency = (held1["total_us"] - held0["total_us"]) / max(answers, 1) / 1e6

        # The exported totals equal the simulator's, and every target is up. Read
        # from a gzip body, as Prometheus asks: a plain body would be the only one
        # of its size the process ever made before the paced scrapes, and the memory
        # read after them is meant to be what a gzip-scraping Prometheus leaves.
        _, zipped = fetch("http://%s/metrics" % addr, headers={"Accept-Encoding": "gzip"})
        text = gzip.decompress(zipped).decode()
        ups = [l for l in text.splitlines() if l.startswith("finovy_up{")]
        total = sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith("finovy_images{"))
        down = [l for l in ups if not l.endswith(" 1")]
        if len(ups) != targets or down:
            _, failed = finished_passes(list(exp.lines))
            first = re.search(r'account="([^"]+)"', down[0]).group(1) if down else ""
            failed += [l for l in exp.lines if first and first in l][-5:]
            raise RuntimeError("not every target is up: %d series, %d down: %s\n%s"
                               % (len(ups), len(down), down[:3], "\n".join(failed[:3])))
        if total != per_account * args.accounts:
            raise RuntimeError("wrong total: %s images exported, %s expected" % (total, per_account * args.accounts))

        def run_wrk(connections, *headers):
            cmd = ["wrk", "-t1", "-c%d" % connections, "-d%ds" % args.wrk_seconds, "--latency"]
            for h in headers:
                cmd += ["-H", h]
            out = subprocess.run(cmd + ["http://%s/metrics" % addr], capture_output=True,
                                 text=True, check=True).stdout
            return parse_wrk(out)

        # One scraper asking back to back (a Prometheus never overlaps its scrapes
        # of one target), then four at once (saturation: latency = 4 / rate).
        gzip_header = "Accept-Encoding: gzip"
        # Scrapes as Prometheus makes them: one at a time, paced (here two a second
        # for --paced-seconds), each timed from the request to the last byte.
        # Timed by curl (its time_total, from the request to the last byte), not
        # in Python, whose reading of a 10 MB body would be counted too.
        def paced(headers):
            times = []
            end = time.time() + args.paced_seconds
            while time.time() < end:
                cmd = ["curl", "-sS", "-o", "/dev/null", "-w", "%{time_total}"]
                for k, v in headers.items():
                    cmd += ["-H", "%s: %s" % (k, v)]
                out = subprocess.run(cmd + ["http://%s/metrics" % addr], capture_output=True,
                                     text=True, check=True).stdout
                times.append(float(out) * 1000)
                time.sleep(max(0.0, 0.5 - times[-1] / 1000))
            times.sort()
            return times[len(times) // 2], times[min(len(times) - 1, math.ceil(len(times) * 0.99) - 1)], len(times)

        paced_p50, paced_p99, paced_n = paced({"Accept-Encoding": "gzip"})
        # Memory as a Prometheus scraping with gzip leaves it (the body and the
        # groups it is assembled from exist once a scrape was made), and at the
        # end, after plain scrapes too (each holds its inflated body while sent).
        rss_scraped = proc_status(pid, "VmRSS")
        p50, p99, rps, non2xx = run_wrk(1)
        gz_p50, gz_p99, gz_rps, gz_non2xx = run_wrk(1, gzip_header)
        gz4_p50, gz4_p99, gz4_rps, gz4_non2xx = run_wrk(4, gzip_header)
        rss_end, peak_end = proc_status(pid, "VmRSS"), proc_status(pid, "VmHWM")
        result = {
            "accounts": args.accounts,
            "targets": targets,
            "images": int(total),
            "latency_ms": args.latency_ms,
            "concurrency_per_account": c,
            "interval_s": args.interval,
            "window_s": round(t1 - t0, 2),
            "passes": len(window),
            "requests": requests,
            "pass_time_s": round(spent, 2),
            "request_bound_s": round(bound, 2),
            "ratio": round(spent / bound, 3),
            "sim_latency_ms": round(sim_latency * 1000, 2),
            "ratio_at_sim_latency": round(spent / (bound * sim_latency / latency), 3),
            "cpu_ms_per_pass": round((cpu1 - cpu0) / len(window) * 1000, 3),
            "cpu_share_of_one_core": round((cpu1 - cpu0) / (t1 - t0), 3),
            "rss_mib": round(rss / 2**20, 1),
            "peak_rss_mib": round(peak / 2**20, 1),
            "rss_after_paced_gzip_scrapes_mib": round(rss_scraped / 2**20, 1),
            "rss_at_end_mib": round(rss_end / 2**20, 1),
            "peak_rss_at_end_mib": round(peak_end / 2**20, 1),
            "metrics_bytes": len(text.encode()),
            "metrics_gzip_bytes": len(zipped),
            "metrics_p50_ms": p50,
            "metrics_p99_ms": p99,
            "metrics_rps": rps,
            "metrics_gzip_p50_ms": gz_p50,
            "metrics_gzip_p99_ms": gz_p99,
            "metrics_gzip_rps": gz_rps,
            "metrics_gzip_paced_p50_ms": round(paced_p50, 2),
            "metrics_gzip_paced_p99_ms": round(paced_p99, 2),
            "metrics_gzip_paced_scrapes": paced_n,
            "metrics_gzip_4_scrapers_p50_ms": gz4_p50,
            "metrics_gzip_4_scrapers_p99_ms": gz4_p99,
            "metrics_gzip_4_scrapers_rps": gz4_rps,
            "metrics_non2xx": non2xx + gz_non2xx + gz4_non2xx,
        }
    finally:
        if exp:
            exp.stop()
        sim.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
