#!/usr/bin/env python3
"""Kernel traffic view figures (root, iproute2): the sidecar's idle CPU and RSS with served
ports declared, its CPU while it samples the kernel under 1,000 connections/s, and the
detection latency from the last client connection to the end of the deregister phase
beyond the quiet period. A server without an SDK (the Rust example with no socket set)
and the sidecar share a "pod" network namespace; the load comes from another namespace
over a veth pair.

Usage: bench/kernel.py SIDECAR_BIN SERVER_BIN        (make bench runs it as root)
       bench/kernel.py load HOST PORT RATE STAMP_FILE (internal: the load generator)
"""
import calendar, json, os, random, signal, socket, subprocess, sys, tempfile, threading, time

HZ = os.sysconf("SC_CLK_TCK")
QUIET_MS = 1000
RUNS = 7


def load(host, port, rate, stamp_file):
    """Connections at `rate` per second (GET, Connection: close) until SIGTERM; writes the
    start time of the last connection."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threads = 8
    last = [0.0] * threads

    def worker(i):
        interval = threads / rate
        next_at = time.monotonic() + i * interval / threads
        while not stop.is_set():
            now = time.monotonic()
            if now < next_at:
                time.sleep(next_at - now)
            next_at += interval
            if stop.is_set():
                break
            last[i] = time.time()
            try:
                s = socket.create_connection((host, port), timeout=2)
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n")
                while s.recv(4096):
                    pass
                s.close()
            except OSError:
                pass

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    while not stop.wait(0.05):
        pass
    for w in workers:
        w.join()
    with open(stamp_file, "w") as f:
        f.write(f"{max(last):.6f}")


def sh(*args):
    subprocess.run(args, check=True)


def wait_ready(sidecar, proc, tmp):
    deadline = time.monotonic() + 10
    while subprocess.run([sidecar, "probe", "--dir", tmp], stderr=subprocess.DEVNULL).returncode != 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"the sidecar did not start (exit {proc.poll()}): see its log in {tmp}")
        time.sleep(0.01)


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))


class Pod:
    """The two namespaces, as in sidecar/tests/common/netns.rs."""

    def __init__(self):
        n = os.getpid()
        self.pod, self.client = f"ldb-pod-{n}", f"ldb-cli-{n}"
        sh("ip", "netns", "add", self.pod)
        sh("ip", "netns", "add", self.client)
        sh("ip", "link", "add", "veth-pod", "netns", self.pod, "type", "veth", "peer", "name", "veth-cli",
           "netns", self.client)
        for ns, addr, dev in [(self.pod, "10.213.0.1/24", "veth-pod"), (self.client, "10.213.0.2/24", "veth-cli")]:
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")

    def close(self):
        for ns in (self.pod, self.client):
            subprocess.run(["ip", "netns", "del", ns])


def run_shutdown(pod, sidecar, server, rate, measure_cpu):
    """One pod: sidecar and server, load at `rate`, the preStop hook after 5 s of load, the
    load stopped 6 s later. Returns (sidecar CPU % of a core while sampling, TIME_WAIT
    sockets, detection latency ms, RSS KiB during the shutdown)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, LAMEDUCK_PORTS="web=8080", LAMEDUCK_PROBES="8080/10000", HOST_IP="10.213.0.9",
                   LAMEDUCK_NO_INSTALL="true")
        side = subprocess.Popen(
            ["ip", "netns", "exec", pod.pod, sidecar, "serve", "--dir", tmp, "--termination-log", f"{tmp}/report",
             "--grace-seconds", "60", "--quiet-period-millis", str(QUIET_MS), "--min-delay-millis", "0",
             "--max-delay-millis", "25000"], env=env, stdout=subprocess.DEVNULL, stderr=open(f"{tmp}/sidecar.log", "w"))
        srv = subprocess.Popen(["ip", "netns", "exec", pod.pod, server],
                               env=dict(os.environ, LISTEN_ADDR="0.0.0.0:8080", REQUEST_MILLIS="0",
                                        RECORDS_DIR=f"{tmp}/records", RUST_LOG="warn"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_ready(sidecar, side, tmp)
        time.sleep(0.5)
        stamp = f"{tmp}/last"
        gen = subprocess.Popen(["ip", "netns", "exec", pod.client, sys.executable, __file__, "load", "10.213.0.1",
                                "8080", str(rate), stamp])
        time.sleep(5)
        hook = subprocess.Popen([sidecar, "prestop", "--container", "web", "--dir", tmp], stderr=subprocess.DEVNULL)
        t, ticks = time.monotonic(), cpu_ticks(side.pid)
        # The sidecar samples every 90 ms from T0: a stop at a random point between two
        # samples, or the latency would always be the same share of an interval.
        time.sleep(6 + random.uniform(0, 0.09))
        cpu = (cpu_ticks(side.pid) - ticks) / HZ / (time.monotonic() - t) * 100
        rss = rss_kib(side.pid)
        tw = subprocess.run(["ip", "netns", "exec", pod.pod, "ss", "-tanH", "state", "time-wait"],
                            capture_output=True, text=True).stdout.count("\n")
        gen.send_signal(signal.SIGTERM)
        gen.wait()
        hook.wait(timeout=60)
        srv.send_signal(signal.SIGTERM)
        srv.wait()
        side.send_signal(signal.SIGTERM)
        side.wait()
        report = json.load(open(f"{tmp}/report"))
        t0 = calendar.timegm(time.strptime(report["t0"][:19], "%Y-%m-%dT%H:%M:%S")) + \
            float("0." + report["t0"][20:23])
        end = t0 + report["phases_ms"]["deregister"] / 1000
        last = float(open(stamp).read())
        return cpu, tw, (end - last) * 1000 - QUIET_MS, rss


def main():
    if sys.argv[1] == "load":
        load(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
        return
    sidecar, server = sys.argv[1], sys.argv[2]
    if os.geteuid() != 0:
        sys.exit("bench/kernel.py needs root (network namespaces)")
    pod = Pod()
    try:
        # Idle: ports declared, no shutdown: nothing is sampled.
        with tempfile.TemporaryDirectory() as tmp:
            env = dict(os.environ, LAMEDUCK_PORTS="web=8080", LAMEDUCK_PROBES="8080/1000", LAMEDUCK_NO_INSTALL="true")
            side = subprocess.Popen(["ip", "netns", "exec", pod.pod, sidecar, "serve", "--dir", tmp,
                                     "--termination-log", f"{tmp}/report"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_ready(sidecar, side, tmp)
            time.sleep(1)
            t, ticks = time.monotonic(), cpu_ticks(side.pid)
            time.sleep(10)
            idle_cpu = (cpu_ticks(side.pid) - ticks) / HZ / (time.monotonic() - t) * 100
            idle_rss = rss_kib(side.pid)
            side.send_signal(signal.SIGTERM)
            side.wait()
        print(f"idle, ports declared:      {idle_cpu:.2f} % of a core over 10 s, RSS {idle_rss / 1024:.2f} MiB")
        cpu, tw, latency, rss = run_shutdown(pod, sidecar, server, 1000, True)
        print(f"sampling under 1,000 conn/s: {cpu:.1f} % of a core ({tw} TIME_WAIT sockets in the table), "
              f"RSS {rss / 1024:.2f} MiB; detection latency {latency:.0f} ms")
        latencies = sorted(run_shutdown(pod, sidecar, server, 100, False)[2] for _ in range(RUNS))
        print(f"detection latency at 100 conn/s: {latencies[0]:.0f} ms min, {latencies[RUNS // 2]:.0f} ms median, "
              f"{latencies[-1]:.0f} ms max ({RUNS} runs; phase end − last connection − quiet period)")
    finally:
        pod.close()


main()
