#!/usr/bin/env python3
"""The table, JSON and trade-off plot of `make bench-rollout` (bench/rollout.sh), from what it
collected in its output directory:

  <variant>.load.json     the load generator's report (e2e/loadgen) for the whole run
  windows-<variant>.tsv   per rollout: index, restart, new pods ready, last old pod gone (Unix s)
  records.counts          <variant>\\t<records flushed> (lameduck-example-web count-records)
  sdp.json                the ShutdownPolicies of the namespace
  pods.watch.json         `kubectl get pods --watch --output-watch-events -o json`

Requests count when sent inside a disruption window (restart → last old pod gone, by the
load generator's per-second counts; a window's partial seconds count whole). The failure
rate's 95 % upper bound is the one-sided Clopper-Pearson bound (0 of n → 1 − 0.05^(1/n),
about 3/n).
"""

import argparse
import json
import math
import os
import subprocess
import sys
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import machine, quantile, read_watch, terminated_web, ts  # noqa: E402


def binom_cdf(k, n, p):
    """P(X ≤ k) for X ~ Binomial(n, p)."""
    if p <= 0:
        return 1.0
    if p >= 1:
        return 0.0 if k < n else 1.0
    lp, lq = math.log(p), math.log1p(-p)
    total = 0.0
    for i in range(k + 1):
        total += math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                          + i * lp + (n - i) * lq)
    return min(total, 1.0)


def upper_bound(k, n, alpha=0.05):
    """One-sided (1 − alpha) Clopper-Pearson upper bound of a rate with k events in n."""
    if n == 0:
        return None
    if k >= n:
        return 1.0
    if k == 0:
        return 1 - alpha ** (1 / n)
    lo, hi = k / n, 1.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if binom_cdf(k, n, mid) > alpha:
            lo = mid
        else:
            hi = mid
    return hi


def in_windows(t, windows):
    return any(a <= t <= b for a, b in windows)


def variant_figures(out, v, pods, sdps, records):
    load = json.load(open(os.path.join(out, f"{v}.load.json")))
    g = load["loadgen"]
    rows = [line.split("\t") for line in open(os.path.join(out, f"windows-{v}.tsv")).read().split("\n") if line]
    windows = [(float(r[1]), float(r[3])) for r in rows]
    # Whole seconds: a bucket counts when it overlaps a window.
    sec_windows = [(math.floor(a), math.floor(b)) for a, b in windows]
    sent_in = sum(s[1] for s in g["seconds"] if in_windows(s[0], sec_windows))
    failed_in = sum(s[2] for s in g["seconds"] if in_windows(s[0], sec_windows))
    kinds_in = {}
    for ms, kind in g["failures"]:
        if in_windows(math.floor(ms / 1000), sec_windows):
            kinds_in[kind] = kinds_in.get(kind, 0) + 1
    durations = [b - a for a, b in windows]
    held, killed = [], 0
    for p in pods.values():
        md = p.get("metadata", {})
        if md.get("labels", {}).get("app") != v or not md.get("deletionTimestamp"):
            continue
        term = terminated_web(p)
        if term and term.get("finishedAt") and p.get("_deleted") is not None:
            held.append(ts(term["finishedAt"]) - p["_deleted"])
        st = p.get("status", {})
        for c in (st.get("containerStatuses") or []) + (st.get("initContainerStatuses") or []):
            if ((c.get("state") or {}).get("terminated") or {}).get("exitCode") == 137:
                killed += 1
    sdp = sdps.get(v)
    st = (sdp or {}).get("status", {})
    refused = st.get("refused")
    if isinstance(refused, dict):
        refused = refused.get("total")
    written = records.get(v, 0)
    rate = failed_in / sent_in if sent_in else None
    return {
        "rollouts": len(windows),
        "requests_in_windows": sent_in,
        "failed_in_windows": failed_in,
        "failures_in_windows_by_kind": kinds_in,
        "failure_rate": rate,
        "failure_rate_upper95": upper_bound(failed_in, sent_in),
        "requests_total": g["requests"],
        "failed_total": g["failed"],
        "failures_by_kind": g["failures_by_kind"],
        "records_acknowledged": g["ok"],
        "records_written": written,
        "records_lost": max(g["ok"] - written, 0),
        "sigkilled": killed,
        "sdp_timeouts": st.get("timeouts") if sdp else None,
        "sdp_killed": st.get("killed") if sdp else None,
        "sdp_samples": st.get("samples") if sdp else None,
        "refused_reported": refused,
        "rollout_s": durations,
        "rollout_p50_s": quantile(durations, 0.5),
        "rollout_p90_s": quantile(durations, 0.9),
        "held_p50_s": quantile(held, 0.5),
        "held_p99_s": quantile(held, 0.99),
        "held_s": held,
        "loadgen_cpu_fraction": g["cpu_seconds"] / g["wall_seconds"] if g["wall_seconds"] else None,
        "loadgen_latency_p99_ms": g["latency_p99_ms"],
    }


def pct(x, digits=3):
    return "n/a" if x is None else f"{100 * x:.{digits}f} %"


def num(x, unit=""):
    if x is None:
        return "n/a"
    return f"{x:.1f}{unit}" if isinstance(x, float) else f"{x}{unit}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--rate", type=int, required=True)
    ap.add_argument("--target", type=int, required=True)
    ap.add_argument("--grace", type=int, required=True)
    ap.add_argument("--cleanup-millis", type=int, required=True)
    ap.add_argument("--variants", nargs="+", required=True)
    a = ap.parse_args()
    o = lambda name: os.path.join(a.out, name)  # noqa: E731
    pods = read_watch(o("pods.watch.json"))
    sdps = {p["spec"]["targetRef"]["name"]: p for p in json.load(open(o("sdp.json")))["items"]}
    records = {}
    for line in open(o("records.counts")).read().split("\n"):
        if "\t" in line:
            name, n = line.split("\t")
            records[name] = int(n)
    result = {v: variant_figures(a.out, v, pods, sdps, records) for v in a.variants}

    rows = [
        ("rollouts", lambda x: num(x["rollouts"])),
        ("requests sent in disruption windows", lambda x: num(x["requests_in_windows"])),
        ("failed (by kind)", lambda x: num(x["failed_in_windows"]) + (" (" + ", ".join(
            f"{k} {n}" for k, n in sorted(x["failures_in_windows_by_kind"].items())) + ")"
            if x["failed_in_windows"] else "")),
        ("failure rate (95 % upper bound)",
         lambda x: f"{pct(x['failure_rate'])} (< {pct(x['failure_rate_upper95'])})"),
        ("requests / failed, whole run", lambda x: f"{x['requests_total']} / {x['failed_total']}"),
        ("records lost", lambda x: f"{x['records_lost']} of {x['records_acknowledged']}"),
        ("pods SIGKILLed", lambda x: num(x["sigkilled"])),
        ("shutdown timeouts (policy)", lambda x: num(x["sdp_timeouts"])),
        ("refused after drain (lameduck's count)", lambda x: num(x["refused_reported"])),
        ("rollout duration p50 / p90", lambda x: f"{num(x['rollout_p50_s'], ' s')} / {num(x['rollout_p90_s'], ' s')}"),
        ("terminating pod held p50 / p99", lambda x: f"{num(x['held_p50_s'], ' s')} / {num(x['held_p99_s'], ' s')}"),
        ("load generator: CPU / p99 latency",
         lambda x: f"{pct(x['loadgen_cpu_fraction'], 1)} of a core / {x['loadgen_latency_p99_ms']:.0f} ms"),
    ]
    vs = a.variants
    md = ["| | " + " | ".join(f"`{v}`" for v in vs) + " |", "|---" * (len(vs) + 1) + "|"]
    for name, f in rows:
        md.append(f"| {name} | " + " | ".join(f(result[v]) for v in vs) + " |")
    ratios = {}
    for lame in ("lameduck", "lameduck-sdk"):
        if "sleep-15" in result and lame in result and result[lame]["rollout_p50_s"]:
            ratios[f"sleep-15 / {lame}"] = result["sleep-15"]["rollout_p50_s"] / result[lame]["rollout_p50_s"]
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    notes = [
        "",
        f"{when}, commit {commit}, {machine()}. All variants at once: 3 replicas each, grace "
        f"{a.grace} s, readiness probe every 1 s, {a.rate} req/s each from its own load "
        f"generator pod (keep-alive), REQUEST_MILLIS 20, CLEANUP_MILLIS {a.cleanup_millis}; "
        f"restarts until {a.target} requests were sent inside a variant's windows "
        "(restart → last old pod gone).",
    ]
    if ratios:
        notes.append("Rollout duration ratio (p50): " + ", ".join(f"{k} = {v:.1f}×" for k, v in ratios.items()) + ".")
    text = "\n".join(md + notes) + "\n"
    open(o("table.md"), "w").write(text)
    json.dump({"date": when, "commit": commit, "machine": machine(), "rate_per_s": a.rate,
               "target_requests": a.target, "ratios": ratios, "variants": result},
              open(o("table.json"), "w"), indent=2)
    print(text)
    try:
        plot(result, vs, o("tradeoff.png"), a)
    except ImportError:
        print("(no plot: matplotlib missing — python3 -m pip install matplotlib)")


def plot(result, vs, path, a):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for v in vs:
        x = result[v]
        if x["rollout_p50_s"] is None or x["failure_rate"] is None:
            continue
        y = 100 * x["failure_rate"]
        up = 100 * (x["failure_rate_upper95"] or 0)
        ax.errorbar([x["rollout_p50_s"]], [y], yerr=[[0], [max(up - y, 0)]], fmt="o", capsize=4)
        ax.annotate(f"{v}\n{x['failed_in_windows']} of {x['requests_in_windows']}",
                    (x["rollout_p50_s"], y), textcoords="offset points", xytext=(6, 4), fontsize=7)
    ax.set_yscale("symlog", linthresh=0.001)
    ax.set_xlabel("rollout duration p50: restart → last old pod gone (s)")
    ax.set_ylabel("failed requests in the windows (%)\nbar: 95 % upper bound")
    ax.set_title(f"failed requests vs rollout time, 3 replicas, {a.rate} req/s each", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
