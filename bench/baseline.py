"""The old bridge's algorithm, written faithfully as the benchmark's baseline.

    NOVI_API_KEY=… MAILMAN_USER=… MAILMAN_PASSWORD=… .venv/bin/python -m bench.baseline NOVI_URL MAILMAN_URL LIST_ID

The bridge this project replaced read every Novi member and then, one member after another,
sent one call per member to Mailman: a subscribe for a current member, an unsubscribe for
everyone else, whether or not anything had changed since the night before. No roster read,
no diff, no batching, no threads. Nothing of it is used by the tool; it lives here only so
`make bench` can run it on the same data, against a real core, in the same run.

It reads Novi through the same `/api/members` pages as the tool, at the same pace (Novi allows
600 requests a minute per key; the tool's block defaults to 8 a second), so the comparison
measures the Mailman side, which is where the algorithms differ. Prints one JSON object: the calls by
kind, the answers by status, and the seconds spent reading and writing.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from urllib.parse import quote

import requests

ELIGIBLE_STATUSES = {"current", "grace_period"}
NOVI_PER_SECOND = 8.0  # what the tool's NoviCredentials block sends by default


def old_bridge(novi_url: str, novi_key: str, mailman_url: str, list_id: str, mailman_auth: tuple[str, str]) -> dict:
    calls: Counter[str] = Counter()
    answers: Counter[str] = Counter()
    novi = requests.Session()
    novi.headers["Authorization"] = f"Basic {novi_key}"
    mailman = requests.Session()
    mailman.auth = mailman_auth
    started = time.monotonic()

    records, offset, total, next_page_at = [], 0, None, 0.0
    while total is None or offset < total:
        time.sleep(max(0.0, next_page_at - time.monotonic()))
        next_page_at = time.monotonic() + 1 / NOVI_PER_SECOND
        body = novi.get(f"{novi_url}/api/members", params={"pageSize": 1000, "offset": offset}, timeout=60).json()
        calls["novi_page"] += 1
        total = body["TotalCount"]
        if not body["Results"]:
            break
        records += body["Results"]
        offset += len(body["Results"])
    read_s = time.monotonic() - started

    for record in records:  # one call per member, every run, one after another
        email = record.get("Email")
        if not email:
            answers["skipped: no address"] += 1
            continue
        if (record.get("MemberStatus") in ELIGIBLE_STATUSES and record.get("Active")
                and not record.get("UnsubscribeFromEmails")):
            response = mailman.post(f"{mailman_url}/3.1/members", timeout=60, data={
                "list_id": list_id, "subscriber": email, "display_name": record.get("Name") or "",
                "pre_verified": "true", "pre_confirmed": "true", "pre_approved": "true",
                "send_welcome_message": "false"})
            calls["subscribe"] += 1
            answers[f"subscribe {response.status_code}"] += 1
        else:
            response = mailman.delete(f"{mailman_url}/3.1/lists/{list_id}/member/{quote(email, safe='')}",
                                      timeout=60)
            calls["unsubscribe"] += 1
            answers[f"unsubscribe {response.status_code}"] += 1
    return {"calls": dict(calls), "answers": dict(answers), "members": len(records),
            "read_s": round(read_s, 3), "write_s": round(time.monotonic() - started - read_s, 3),
            "total_s": round(time.monotonic() - started, 3)}


def main() -> None:
    novi_url, mailman_url, list_id = sys.argv[1:4]
    auth = (os.environ["MAILMAN_USER"], os.environ["MAILMAN_PASSWORD"])
    print(json.dumps(old_bridge(novi_url, os.environ["NOVI_API_KEY"], mailman_url, list_id, auth)))


if __name__ == "__main__":
    main()
