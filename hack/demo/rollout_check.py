#!/usr/bin/env python3
"""Checks a `make bench-rollout` result (table.json) so that a run can fail: every variant
was restarted and loaded inside its windows, the counts hold together, and lameduck with
the SDK failed no request, lost no record and was never SIGKILLed.

  hack/demo/rollout_check.py out/bench-rollout-smoke/table.json
"""

import json
import sys


def problems(table):
    out = []
    for name, v in (table.get("variants") or {}).items():
        if v["rollouts"] < 1:
            out.append(f"{name}: not restarted")
        if v["requests_in_windows"] <= 0:
            out.append(f"{name}: no request sent inside its disruption windows")
        if v["failed_in_windows"] > v["failed_total"] or v["requests_in_windows"] > v["requests_total"]:
            out.append(f"{name}: window counts exceed the whole run's")
        if v["failure_rate_upper95"] is None or v["failure_rate_upper95"] < (v["failure_rate"] or 0):
            out.append(f"{name}: upper bound below the rate")
        if name == "lameduck-sdk":
            if v["failed_total"]:
                out.append(f"{name}: {v['failed_total']} requests failed ({v['failures_by_kind']})")
            if v["records_lost"]:
                out.append(f"{name}: {v['records_lost']} records lost")
            if v["sigkilled"]:
                out.append(f"{name}: {v['sigkilled']} containers SIGKILLed")
    if not table.get("variants"):
        out.append("no variants")
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    table = json.load(open(sys.argv[1]))
    found = problems(table)
    for name, v in table["variants"].items():
        print(f"rollout check: {name}: {v['rollouts']} rollouts, {v['requests_in_windows']} requests "
              f"in windows, {v['failed_in_windows']} failed, rollout p50 {v['rollout_p50_s']} s")
    if found:
        print("rollout check FAILED:\n  " + "\n  ".join(found), file=sys.stderr)
        sys.exit(1)
    print("rollout check: ok")


if __name__ == "__main__":
    main()
