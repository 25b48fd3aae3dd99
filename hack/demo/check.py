#!/usr/bin/env python3
"""Checks a `make demo` result (out/demo/table.json) for what the demo exists to show, so
that a run can fail: every variant was loaded; the injected variants (an SDK each) failed
no request, lost no record and were never SIGKILLed, and their ShutdownPolicies observed
the shutdowns; an injected variant without an SDK failed no request and was never
SIGKILLed (its records are its own business); the variant without lameduck lost its
records (the measurement can see harm). Prints what it checked; exits 1 with the reasons otherwise.

  hack/demo/check.py out/demo/table.json
"""

import json
import sys


def problems(table):
    out = []
    variants = table.get("variants") or {}
    if not variants:
        return ["no variants in the table"]
    for name, v in variants.items():
        if v["requests"] <= 0:
            out.append(f"{name}: no request was sent")
        if v["shutdowns_observed"] <= 0:
            out.append(f"{name}: no shutdown observed in the pod watch")
        if v["injected"]:
            if v["failed"]:
                out.append(f"{name}: {v['failed']} requests failed ({v.get('failures_by_kind')})")
            if v.get("sdk", True) and v["records_lost"]:
                out.append(f"{name}: {v['records_lost']} records lost")
            if v.get("sdk", True) and v["records_written"] <= 0:
                out.append(f"{name}: no record reached the disk")
            if v["sigkilled_exit_137"] or v["sdp_killed"]:
                out.append(f"{name}: SIGKILLed ({v['sigkilled_exit_137']} exits 137, policy killed {v['sdp_killed']})")
            if not v["sdp_samples"]:
                out.append(f"{name}: its ShutdownPolicy recorded no shutdown")
        elif v["records_lost"] <= 0:
            out.append(f"{name}: without lameduck it lost no record: the records count cannot see harm")
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    table = json.load(open(sys.argv[1]))
    found = problems(table)
    for name, v in table["variants"].items():
        print(f"demo check: {name}: {v['requests']} requests, {v['failed']} failed, "
              f"{v['records_lost']} of {v['records_acknowledged']} records lost, "
              f"{v['sigkilled_exit_137']} SIGKILLed, policy samples {v['sdp_samples']}")
    if found:
        print("demo check FAILED:\n  " + "\n  ".join(found), file=sys.stderr)
        sys.exit(1)
    print("demo check: ok")


if __name__ == "__main__":
    main()
