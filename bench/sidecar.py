#!/usr/bin/env python3
"""Sidecar figures: static binary size, idle RSS of `serve`, start-to-probe time and the
overhead the shutdown sequence adds beyond the app's own drain + cleanup.

Usage: bench/sidecar.py SIDECAR_BIN EXAMPLE_BIN   (make bench builds both statically)
"""
import json, os, statistics, subprocess, sys, tempfile, time, signal, socket

sidecar, example = sys.argv[1], sys.argv[2]
RUNS = 20
QUIET_MS = 300


def start(tmp, *extra):
    return subprocess.Popen(
        [sidecar, "serve", "--dir", tmp, "--termination-log", f"{tmp}/report", "--grace-seconds", "30",
         "--quiet-period-millis", str(QUIET_MS), "--min-delay-millis", "0", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def probe(tmp):
    return subprocess.run([sidecar, "probe", "--dir", tmp], stderr=subprocess.DEVNULL).returncode == 0


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close(); return port


startup, rss, overhead = [], [], []
for _ in range(RUNS):
    with tempfile.TemporaryDirectory() as tmp:
        t = time.monotonic()
        proc = start(tmp)
        while not probe(tmp):
            time.sleep(0.001)
        startup.append((time.monotonic() - t) * 1000)
        time.sleep(1)
        rss.append(rss_kib(proc.pid))
        proc.send_signal(signal.SIGTERM); proc.wait()

for _ in range(10):
    with tempfile.TemporaryDirectory() as tmp:
        proc = start(tmp)
        while not probe(tmp):
            time.sleep(0.001)
        addr = f"127.0.0.1:{free_port()}"
        env = dict(os.environ, LAMEDUCK_SOCKET=f"{tmp}/run/app.sock", LAMEDUCK_CONTAINER="web",
                   LISTEN_ADDR=addr, CLEANUP_MILLIS="200", RECORDS_DIR=f"{tmp}/records")
        app = subprocess.Popen([example], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        t = time.monotonic()
        subprocess.run([sidecar, "prestop", "--container", "web", "--dir", tmp], stderr=subprocess.DEVNULL)
        prestop_ms = (time.monotonic() - t) * 1000
        app.send_signal(signal.SIGTERM); app.wait()
        proc.send_signal(signal.SIGTERM); proc.wait()
        report = json.load(open(f"{tmp}/report"))
        phases = report["phases_ms"]
        overhead.append(prestop_ms - phases.get("drain", 0) - phases.get("cleanup", 0) - QUIET_MS)

size = os.path.getsize(sidecar)
print(f"static binary size:        {size / 1048576:.2f} MiB ({size} bytes)")
print(f"idle RSS of serve:         {statistics.median(rss) / 1024:.2f} MiB (median of {RUNS})")
print(f"start to probe success:    {statistics.median(startup):.1f} ms median, {max(startup):.1f} ms max ({RUNS} runs)")
print(f"sequence overhead:         quiet period ({QUIET_MS} ms) + {statistics.median(overhead):.1f} ms median, "
      f"+ {max(overhead):.1f} ms max (10 runs, prestop − drain − cleanup − quiet)")
