#!/usr/bin/env python3
"""The table and plot of `make demo` (hack/demo/demo.sh), from what it collected in out/demo/:

  <variant>.load.json     the load generator's report (e2e/loadgen: vegeta's report and its
                          own figures under "loadgen") for that variant's rolling restart
  records.tsv             variant, records flushed to the nodes' records directories
  timings.tsv             variant, restart → new pods ready, restart → old pods gone, load s
  sdp.json                the ShutdownPolicies of the namespace (kubectl get sdp -o json)
  pods.watch.json         `kubectl get pods --watch --output-watch-events -o json`
  pods.after.json         the pods created after the measurement (tuned grace period)

Writes table.md, table.json and shutdown-durations.png next to them and prints the table.
"""

import argparse
import json
import os
import platform
import subprocess
from datetime import datetime, timezone


def ts(s):
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()


def read_watch(path):
    """Last state seen of every pod (by uid), from a stream of concatenated JSON objects."""
    text = open(path).read()
    dec = json.JSONDecoder()
    i, pods = 0, {}
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            break
        try:
            ev, i = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            break  # a truncated last object (the watch was stopped mid-write)
        obj = ev.get("object", ev)
        uid = obj.get("metadata", {}).get("uid")
        if not uid:
            continue
        md = obj["metadata"]
        prev = pods.get(uid)
        # The deletion time is read from the first state that has a deletionTimestamp: the
        # kubelet's final delete (grace 0) moves deletionTimestamp to the pod's removal.
        deleted = prev.get("_deleted") if prev else None
        if md.get("deletionTimestamp"):
            t = ts(md["deletionTimestamp"]) - (md.get("deletionGracePeriodSeconds") or 0)
            deleted = t if deleted is None else min(deleted, t)
        # Keep the most informative state: a later one, unless it lost the terminated status.
        if prev is None or terminated_web(obj) or not terminated_web(prev):
            pods[uid] = obj
        pods[uid]["_deleted"] = deleted
    return pods


def terminated_web(pod):
    for c in pod.get("status", {}).get("containerStatuses") or []:
        if c.get("name") == "web" and "terminated" in (c.get("state") or {}):
            return c["state"]["terminated"]
    return None


def shutdowns(pods, variant):
    """Per deleted pod of the variant: duration (deletion → web exit, 1 s resolution), exits."""
    out = []
    for p in pods.values():
        md = p.get("metadata", {})
        if md.get("labels", {}).get("app") != variant or not md.get("deletionTimestamp"):
            continue
        term = terminated_web(p)
        exits = {}
        st = p.get("status", {})
        for c in (st.get("containerStatuses") or []) + (st.get("initContainerStatuses") or []):
            t = (c.get("state") or {}).get("terminated")
            if t:
                exits[c["name"]] = t.get("exitCode")
        deleted = p["_deleted"]
        dur = ts(term["finishedAt"]) - deleted if term and term.get("finishedAt") else None
        out.append({"pod": md["name"], "seconds": dur, "exits": exits,
                    "grace": p.get("spec", {}).get("terminationGracePeriodSeconds"),
                    "killed": any(code == 137 for code in exits.values())})
    return out


def sidecar_deadline(grace):
    """Seconds after T0 by which the sidecar releases the preStop hooks: G − min(2 s, G/2)."""
    if grace is None:
        return None
    return float(grace - min(2.0, grace / 2))


def quantile(xs, q):
    xs = sorted(xs)
    if not xs:
        return None
    k = max(0, min(len(xs) - 1, int(-(-q * len(xs) // 1)) - 1))  # nearest rank
    return xs[k]


def fmt(x, unit=""):
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.1f}{unit}"
    return f"{x}{unit}"


def machine():
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(open("/proc/meminfo").readline().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} cores ({cpu}){mem}, Linux {platform.release()}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--rate", type=int, required=True)
    ap.add_argument("--cleanup-millis", type=int, required=True)
    ap.add_argument("--grace", type=int, required=True)
    ap.add_argument("--variants", nargs="+", required=True)
    ap.add_argument("--annotation-only", nargs="*", default=[],
                    help="injected variants without an SDK (the annotation only)")
    a = ap.parse_args()
    o = lambda name: os.path.join(a.out, name)  # noqa: E731

    records = dict(l.split("\t") for l in open(o("records.tsv")).read().split("\n") if l)
    timings = {}
    for line in open(o("timings.tsv")).read().split("\n")[1:]:
        if line:
            v, ready, gone, load = line.split("\t")
            timings[v] = (float(ready), float(gone), int(load))
    sdps = {p["spec"]["targetRef"]["name"]: p for p in json.load(open(o("sdp.json")))["items"]}
    watch = read_watch(o("pods.watch.json"))
    after = json.load(open(o("pods.after.json")))["items"]

    result = {}
    for v in a.variants:
        r = json.load(open(o(f"{v}.load.json")))
        g = r.get("loadgen") or {}
        codes = r.get("status_codes") or {}
        ok = int(codes.get("200", 0))
        written = int(records.get(v, 0))
        sd = shutdowns(watch, v)
        durs = [s["seconds"] for s in sd if s["seconds"] is not None]
        sdp = sdps.get(v)
        st = (sdp or {}).get("status", {})
        rec = (st.get("recommendation") or {}).get("gracePeriodSeconds")
        new_grace = sorted({p["spec"].get("terminationGracePeriodSeconds") for p in after
                            if p["metadata"].get("labels", {}).get("app") == v
                            and not p["metadata"].get("deletionTimestamp")})
        d = st.get("durations") or {}
        killed_watch = sum(1 for s in sd if s["killed"])
        result[v] = {
            "injected": sdp is not None,
            "sdk": sdp is not None and v not in a.annotation_only,
            "refused_by_client": int((g.get("failures_by_kind") or {}).get("refused", 0)),
            "refused_by_lameduck": ((st.get("refused") or {}).get("total") if sdp else None),
            "requests": int(r["requests"]),
            "ok": ok,
            "failed": int(r["requests"]) - ok,
            "status_codes": codes,
            "failures_by_kind": g.get("failures_by_kind") or {},
            "loadgen_cpu_seconds": g.get("cpu_seconds"),
            "loadgen_wall_seconds": g.get("wall_seconds"),
            "errors": (r.get("errors") or [])[:5],
            "latency_p99_ms": round(r["latencies"]["99th"] / 1e6, 1),
            "records_acknowledged": ok,
            "records_written": written,
            "records_lost": max(ok - written, 0),
            "shutdowns_observed": len(sd),
            "sigkilled_exit_137": killed_watch,
            "sdp_killed": st.get("killed") if sdp else None,
            "sdp_timeouts": st.get("timeouts") if sdp else None,
            "sequence_p99_s": ((st.get("phases") or {}).get("sequence") or {}).get("p99"),
            "sdp_samples": st.get("samples") if sdp else None,
            "rollout_new_pods_ready_s": timings[v][0],
            "rollout_old_pods_gone_s": timings[v][1],
            "grace_before_s": a.grace,
            "grace_recommended_s": rec,
            "grace_of_new_pods_s": new_grace,
            "shutdown_p50_s": d.get("p50") if sdp else quantile(durs, 0.5),
            "shutdown_p99_s": d.get("p99") if sdp else quantile(durs, 0.99),
            "shutdown_source": "ShutdownPolicy status" if sdp else "finishedAt − deletion (1 s)",
            "per_pod_shutdown_s": durs,
            "phases": st.get("phases"),
        }

    vs = a.variants
    rows = [
        ("lameduck", lambda x: ("injected + SDK" if x["sdk"] else "annotation only, no SDK")
         if x["injected"] else "no"),
        ("requests sent", lambda x: fmt(x["requests"])),
        ("requests failed", lambda x: fmt(x["failed"]) + ("" if not x["failed"] else " (" + ", ".join(
            f"{k}: {n}" for k, n in sorted(x["failures_by_kind"].items())) + ")")),
        # The load generator's `connection refused` errors; for injected variants, lameduck's
        # own count of resets sent after the listeners closed (the policy's refused.total).
        ("connections refused (client / lameduck's count)",
         lambda x: f"{x['refused_by_client']} / {fmt(x['refused_by_lameduck'])}"),
        ("records acknowledged", lambda x: fmt(x["records_acknowledged"])),
        ("records lost", lambda x: fmt(x["records_lost"])),
        ("pods SIGKILLed (exit 137 / policy `killed`)",
         lambda x: f"{x['sigkilled_exit_137']} / {fmt(x['sdp_killed'])}"),
        ("shutdowns timed out (policy `timeouts`)", lambda x: fmt(x["sdp_timeouts"])),
        ("rollout: new pods ready", lambda x: fmt(x["rollout_new_pods_ready_s"], " s")),
        ("rollout: last old pod gone", lambda x: fmt(x["rollout_old_pods_gone_s"], " s")),
        ("grace period before → after tuning",
         lambda x: (f"{x['grace_before_s']} s → {fmt(x['grace_recommended_s'], ' s')}"
                    + (f" (new pods: {', '.join(map(str, x['grace_of_new_pods_s']))} s)"
                       if x["grace_of_new_pods_s"] else "")) if x["injected"] else "n/a"),
        ("shutdown p50 / p99",
         lambda x: f"{fmt(x['shutdown_p50_s'], ' s')} / {fmt(x['shutdown_p99_s'], ' s')}"),
        # The sidecar releases the hooks by G − min(2 s, G/2): what it leaves the sequence.
        ("sidecar deadline after tuning / sequence p99",
         lambda x: (f"{fmt(sidecar_deadline(x['grace_recommended_s']), ' s')} / "
                    f"{fmt(x['sequence_p99_s'], ' s')}") if x["injected"] else "n/a"),
        ("shutdowns observed", lambda x: fmt(x["shutdowns_observed"])),
    ]
    md = ["| | " + " | ".join(f"`{v}`" for v in vs) + " |", "|---" * (len(vs) + 1) + "|"]
    for name, f in rows:
        md.append(f"| {name} | " + " | ".join(f(result[v]) for v in vs) + " |")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = ""
    notes = [
        "",
        f"{when}, commit {commit}, {machine()}. Each variant: 3 replicas, rolling restart "
        f"(maxSurge 1, maxUnavailable 0) under {a.rate} req/s to its ClusterIP from a pod "
        f"(e2e/loadgen, vegeta's attacker, keep-alive; from 3 s before the restart until 3 s "
        f"after the last old pod was gone), "
        f"REQUEST_MILLIS 20, CLEANUP_MILLIS {a.cleanup_millis}, grace period {a.grace} s. "
        "Records: acknowledged (HTTP 200) minus lines flushed to the records directory after "
        "the rollout and a scale to 0, counted by a pod on each node. Failed requests by kind: "
        "refused (nothing listening), reset, eof (connection closed under the request), "
        "timeout, http-<code>. Shutdown p50/p99: the ShutdownPolicy's status "
        "(deletion → app exit; rollout and scale-to-0 shutdowns) for injected variants, "
        "container finishedAt − deletion time (1 s resolution) for go-naive.",
    ]
    text = "\n".join(md + notes) + "\n"
    open(o("table.md"), "w").write(text)
    json.dump({"date": when, "commit": commit, "machine": machine(), "rate_per_s": a.rate,
               "cleanup_millis": a.cleanup_millis, "variants": result},
              open(o("table.json"), "w"), indent=2)
    print("\n".join(md))
    print("\n".join(notes))
    for v in vs:
        for e in result[v]["errors"]:
            print(f"  {v} error: {e}")
    plot(result, vs, o("shutdown-durations.png"), a)


def plot(result, vs, path, a):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=120)
    colors = {"go-naive": "#c0392b", "go-naive-lameduck": "#7d3c98", "go-web": "#2471a3",
              "rust-web": "#d35400"}
    for i, v in enumerate(vs):
        x = result[v]
        durs = x["per_pod_shutdown_s"]
        c = colors.get(v, "gray")
        if durs:
            horizontal = ({"orientation": "horizontal"}
                          if tuple(map(int, matplotlib.__version__.split(".")[:2])) >= (3, 10)
                          else {"vert": False})
            ax.boxplot([durs], positions=[i], widths=0.5, showfliers=False,
                       medianprops={"color": c}, **horizontal)
            jitter = [i + ((k % 7) - 3) * 0.04 for k in range(len(durs))]
            ax.scatter(durs, jitter, s=28, color=c, alpha=0.7, zorder=3,
                       label=f"{v}: per pod (1 s resolution)")
        if x["injected"] and x["shutdown_p50_s"] is not None:
            ax.scatter([x["shutdown_p50_s"], x["shutdown_p99_s"]], [i + 0.32, i + 0.32],
                       marker="v", s=60, color="black", zorder=4,
                       label="ShutdownPolicy p50 / p99" if i == 1 else None)
        if x["grace_recommended_s"]:
            ax.plot([x["grace_recommended_s"]] * 2, [i - 0.4, i + 0.4], color=c, ls="--", lw=1)
            ax.annotate(f"tuned grace {x['grace_recommended_s']} s",
                        (x["grace_recommended_s"], i + 0.42), fontsize=7, color=c)
        killed = x["sigkilled_exit_137"]
        lost = x["records_lost"]
        ax.annotate(f"failed {x['failed']}/{x['requests']}, lost {lost}, SIGKILLed {killed}",
                    (0, i - 0.45), fontsize=7, color="dimgray")
    ax.axvline(a.grace, color="gray", ls=":", lw=1)
    ax.annotate(f"grace before tuning {a.grace} s", (a.grace, len(vs) - 0.45), fontsize=7,
                ha="right", color="gray")
    ax.set_yticks(range(len(vs)), vs)
    ax.set_ylim(-0.6, len(vs) - 0.3)
    ax.set_xlabel("shutdown duration: pod deletion → app container exit (s)")
    ax.set_title(f"lameduck demo: rolling restarts under {a.rate} req/s, cleanup "
                 f"{a.cleanup_millis} ms", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlim(left=-0.5, right=max(a.grace + 1, max(
        (max(result[v]["per_pod_shutdown_s"] or [0]) for v in vs)) + 2))
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    print(f"\nplot: {path}")


if __name__ == "__main__":
    main()
