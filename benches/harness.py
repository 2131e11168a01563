"""What the benchmarks share: the release binaries, child processes whose output
is read in the background, /proc readings, HTTP fetches, waiting on a condition
with a deadline, and wrk's output."""

import os
import re
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Proc:
    """A child process whose output is read in the background."""

    def __init__(self, args, env=None, ready=None, timeout=120):
        self.p = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.lines = []
        self.found = threading.Event()
        self.match = None
        self.ready = re.compile(ready) if ready else None
        threading.Thread(target=self._read, daemon=True).start()
        if self.ready and not self.found.wait(timeout):
            self.stop()
            raise RuntimeError("%s did not start:\n%s" % (args[0], "\n".join(self.lines[-20:])))

    def _read(self):
        for line in self.p.stdout:
            self.lines.append(line.rstrip())
            if self.ready and not self.found.is_set():
                m = self.ready.search(line)
                if m:
                    self.match = m
                    self.found.set()

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()


def proc_status(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid):
    """User and system CPU seconds of the whole process."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def fetch(url, timeout=30, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def wait(what, cond, deadline_s):
    end = time.time() + deadline_s
    while time.time() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.1)
    raise RuntimeError("timed out waiting for " + what)


def ready(addr):
    try:
        return fetch("http://%s/readyz" % addr, timeout=5)[0] == 200
    except Exception:
        return False


def parse_wrk(out):
    def dur(s):
        m = re.match(r"([0-9.]+)(us|ms|s)", s)
        v = float(m.group(1))
        return v / 1000 if m.group(2) == "us" else v if m.group(2) == "ms" else v * 1000

    p50 = p99 = rps = None
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "50%":
            p50 = dur(parts[1])
        if len(parts) == 2 and parts[0] == "99%":
            p99 = dur(parts[1])
        if line.startswith("Requests/sec:"):
            rps = float(line.split()[1])
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return p50, p99, rps, int(non2xx.group(1)) if non2xx else 0
