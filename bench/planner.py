"""The planner alone at scale: N Novi records against an N-address roster, time and peak memory.

    .venv/bin/python -m bench.planner 100000 1000000 [--repeat 3] [--routing]

Each size runs in a fresh process (so peak memory is that size's own) and prints a markdown
row: median, min and max seconds of `tasks.core.planner.plan_changes`, and the process's peak RSS.
The roster overlaps Novi by 99%; 10% of the records are not eligible; names match.
`--routing` turns issue 17's rules on: every record has a Chapter custom field and one in 20 a
Finance Committee seat (a quarter of them ended); the list selects by Chapter, and a second list
(its roster: the seated addresses) by a current committee seat, whatever the status.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def measure(n: int, repeat: int, routing: bool = False) -> dict:
    import numpy as np
    import pandas as pd

    from tasks.core import addresses
    from tasks.core.schema import MEMBER_COLUMNS, REGULAR, ROSTER_COLUMNS, Delivery
    from tasks.core.planner import plan_changes
    from tasks.core.rules import parse_rules

    CHAPTERS = ["North", "South", "East", "West"]

    rng = np.random.default_rng(1)
    email = pd.Series([f"m{i}@example.org" for i in range(n)], dtype="string")
    names = pd.Series([f"Member {i}" for i in range(n)], dtype="string")
    members = pd.DataFrame({
        "novi_id": pd.Series([f"id-{i:08d}" for i in range(n)], dtype="string"),
        "email": email, "match_key": addresses.match_key(email), "display_name": names,
        "status": pd.Series(rng.choice(["current", "grace_period", "expired"], n, p=[0.85, 0.05, 0.10]),
                            dtype="string"),
        "active": np.ones(n, dtype=bool), "customer_type": "Person", "is_person": True,
        "member_type": "Regular", "member_type_id": "t1", "group_ids": [[] for _ in range(n)],
        "group_names": [[] for _ in range(n)], "opted_out": np.zeros(n, dtype=bool), "expires": pd.NaT,
        "seats": [[("c1", "finance committee", "member", "2025-01-01T00:00:00-05:00",
                    "2026-06-30T23:59:59-04:00" if i % 80 == 0 else None)] if routing and i % 20 == 0 else []
                  for i in range(n)],
        "custom_fields": [{"Chapter": CHAPTERS[i % 4]} if routing else {} for i in range(n)],
        "quarantine": pd.Series(pd.NA, index=range(n), dtype="string"), "unreadable": [()] * n,
        **{c: pd.Series(pd.NA, index=range(n), dtype="string")
           for c in ("parent_id", "primary_contact_id", "billing_contact_id")},
    })[MEMBER_COLUMNS]
    shift = n // 100  # 1% of the roster is not in Novi, 1% of Novi not on the roster
    roster_email = pd.Series([f"m{i}@example.org" for i in range(shift, n)]
                             + [f"x{i}@example.org" for i in range(shift)], dtype="string")
    roster = pd.DataFrame({
        "list_id": "list.example.org", "email": roster_email, "match_key": addresses.match_key(roster_email),
        "display_name": pd.Series([f"Member {i}" for i in range(shift, n)] + ["X"] * shift, dtype="string"),
        "member_id": pd.Series([str(i) for i in range(n)], dtype="string"),
        # as the roster read brings them: regular delivery, the list's moderation, delivery on
        "delivery_mode": pd.Series(REGULAR, index=range(n), dtype="string"),
        "moderation_action": pd.Series("", index=range(n), dtype="string"),
        "delivery_status": pd.Series(Delivery.ENABLED, index=range(n), dtype="string"),
        "account": pd.Series(None, index=range(n), dtype="string")})[ROSTER_COLUMNS]
    lists = [{"list_id": "list.example.org"}]
    rosters = {"list.example.org": roster}
    if routing:
        lists = [{"list_id": "list.example.org", "custom_fields": {"Chapter": CHAPTERS}},
                 {"list_id": "committee.example.org", "committees": ["Finance Committee"], "statuses": "any"}]
        seated = roster.loc[roster["email"].isin(email[::20])]
        rosters["committee.example.org"] = seated.assign(list_id="committee.example.org")
    rules = parse_rules({"lists": lists})
    seconds, changes = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        result = plan_changes(members, rosters, rules)
        seconds.append(time.perf_counter() - start)
        changes = len(result.changes)
    return {"records": n, "roster": n, "changes": changes, "median_s": statistics.median(seconds),
            "min_s": min(seconds), "max_s": max(seconds),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sizes", nargs="*", type=int, default=[100_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--routing", action="store_true", help="committee and custom-field rules on (issue 17)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.repeat, args.routing)))
        return
    print("| Novi records × roster | changes | plan median (min–max) | peak RSS |")
    print("|---|---:|---:|---:|")
    for n in args.sizes:
        out = subprocess.run([sys.executable, "-m", "bench.planner", "--one", str(n), "--repeat", str(args.repeat),
                              *(["--routing"] if args.routing else [])],
                             check=True, capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        print(f"| {n:,} × {n:,} | {row['changes']:,} | {row['median_s']:.2f} s ({row['min_s']:.2f}–{row['max_s']:.2f})"
              f" | {row['peak_rss_mb']:,.0f} MB |", flush=True)


if __name__ == "__main__":
    main()
