"""The benchmark's arithmetic and its baseline; never its timings (those are read, not tested)."""

from __future__ import annotations

import json

import responses
from responses import matchers

from bench.baseline import old_bridge
from bench.run import churn_counts, lower_bound, markdown
from tests.conftest import novi_record

NOVI, MAILMAN, LIST = "http://novi.test", "http://mailman.test", "members.example.org"


def summary(novi_members: int, **changes: int) -> dict:
    counts = {a: changes.get(a, 0) for a in ("subscribe", "unsubscribe", "hold", "release", "rename")}
    reasons = {"unsubscribe": {"status expired": counts["unsubscribe"]}} if counts["unsubscribe"] else {}
    return {"novi_members": novi_members, "lists": [{"list_id": LIST, "changes": counts, "reasons": reasons}]}


def test_the_lower_bound_is_pages_plus_single_writes_plus_removal_batches():
    bound = lower_bound(summary(2_500, subscribe=3, unsubscribe=250, rename=2, hold=1), roster_before=1_001,
                        held_before=0)
    # a preference read per member removed while Novi knows them, and per hold
    assert bound == {"mailman_read": 2, "novi_page": 3, "roster_page": 2, "bouncing_page": 1, "held_page": 1,
                     "ban_page": 2, "request_page": 1, "preferences_read": 251, "subscribe": 3, "rename": 2,
                     "hold": 1, "mass_unsubscribe": 3}
    # nothing to change: the reads alone, and an empty collection still costs its one page; an
    # empty roster has nobody to search for a delivery status
    assert lower_bound(summary(0), roster_before=0, held_before=0) == {"mailman_read": 2, "novi_page": 1,
                                                                       "roster_page": 1, "ban_page": 2,
                                                                       "request_page": 1}
    # the list's bans and the global ones: one page each, more past a thousand
    assert lower_bound(summary(0), roster_before=0, held_before=0, bans=(1_001, 3))["ban_page"] == 3
    # a list whose rule holds nobody needs no held-member search
    assert "held_page" not in lower_bound(summary(10), roster_before=5, held_before=None)


def test_the_bound_reads_the_preferences_of_everyone_removed_also_those_novi_no_longer_knows():
    """The planner reads them so that an undo restores their settings (ff2391d); the bound did
    not count them, and a 10,000-member day read 5 more than its bound."""
    day = summary(100, unsubscribe=10)
    day["lists"][0]["reasons"] = {"unsubscribe": {"status expired": 6, "no longer in Novi": 4}}
    assert lower_bound(day, roster_before=100, held_before=None)["preferences_read"] == 10


def test_a_day_of_churn_is_the_asked_share_with_every_kind():
    counts = churn_counts(100_000, 0.01)
    assert set(counts) == {"lapse", "renew", "add", "rename", "change_address", "opt_out", "remove"}
    assert 990 <= sum(counts.values()) <= 1_010 and min(counts.values()) >= 1
    assert min(churn_counts(1_000, 0.01).values()) >= 1


@responses.activate
def test_the_old_bridge_makes_one_call_per_member_whatever_changed():
    records = [novi_record("a", "a@example.org"), novi_record("b", "b@example.org", status="expired"),
               novi_record("c", None), novi_record("d", "d@example.org", opted_out=True)]
    responses.get(f"{NOVI}/api/members", json={"TotalCount": 4, "Results": records},
                  match=[matchers.query_param_matcher({"pageSize": "1000", "offset": "0"})])
    subscribe = responses.post(f"{MAILMAN}/3.1/members", status=409, json={"title": "Member already subscribed"})
    remove_b = responses.delete(f"{MAILMAN}/3.1/lists/{LIST}/member/b%40example.org", status=404)
    remove_d = responses.delete(f"{MAILMAN}/3.1/lists/{LIST}/member/d%40example.org", status=204)

    result = old_bridge(NOVI, "key", MAILMAN, LIST, ("user", "pass"))

    assert result["calls"] == {"novi_page": 1, "subscribe": 1, "unsubscribe": 2}
    assert subscribe.call_count == remove_b.call_count == remove_d.call_count == 1
    assert result["answers"] == {"subscribe 409": 1, "unsubscribe 404": 1, "unsubscribe 204": 1,
                                 "skipped: no address": 1}


def test_the_tables_show_every_size_and_day_including_runs_without_the_old_bridge():
    run = {"size": 1_000, "day": "no changes", "calls": {"novi_page": 1, "roster_page": 1, "held_page": 1},
           "lower_bound": {"novi_page": 1, "roster_page": 1, "held_page": 1}, "over_bound": {}, "ratio": 1.0,
           "changes": 0,
           "phases_s": {"extract_members": 0.2, "plan": 0.1}, "flow_s": 0.5, "process_s": 4.5,
           "prefect_overhead_s": 4.0, "peak_rss_mb": 170.0, "task_runs": 5,
           "old_bridge": {"calls": {"novi_page": 1, "subscribe": 900}, "wall_s": 3.0, "peak_rss_mb": 30.0}}
    over = {**run, "size": 10_000, "calls": {**run["calls"], "member_lookup": 2}, "over_bound": {"member_lookup": 2},
            "ratio": 5 / 3}
    result = {"started_at": "2026-11-29 06:00 UTC", "machine": "2 cores", "repeat": 1, "runs": [
        run, over, {**run, "size": 100_000, "old_bridge": None}], "throughput": [], "planner": []}
    text = markdown(json.loads(json.dumps(result)))
    rows = [line for line in text.splitlines() if line.startswith("| 1,000 | no changes")]
    assert len(rows) == 3 and "| 0 | 3 | 3 | 1 of 1 | 1.000 | 901 | 300× |" in rows[0]
    assert any(line.startswith("| 100,000 | no changes") and line.endswith("| – | – |") for line in text.splitlines())
    # a run above the bound shows: the call of another kind, and not exact
    (above,) = [line for line in text.splitlines() if line.startswith("| 10,000 | no changes") and "of 1" in line]
    assert "| 2 | 5 | 3 | 0 of 1 | 1.667 |" in above


def test_the_planner_bench_plans_its_own_frames():
    """bench.planner built a roster without the preference columns the planner reads: `make bench`
    ended there (KeyError) after 110 minutes. Its frames must be the planner's contract."""
    from bench.planner import measure

    row = measure(1_000, repeat=1)
    assert row["records"] == 1_000 and row["changes"] > 0
    routed = measure(1_000, repeat=1, routing=True)  # make bench runs the routing rules too
    assert routed["changes"] > row["changes"]  # the committee list's seats are subscribed as well


def test_the_planner_table_names_the_rules_of_each_row():
    rows = [{"records": 1_000_000, "roster": 1_000_000, "changes": 5, "median_s": 8.0, "min_s": 7.9, "max_s": 8.2,
             "peak_rss_mb": 2400.0, "routing": routing} for routing in (False, True)]
    text = markdown({"started_at": "x", "machine": "2 cores", "repeat": 3, "runs": [], "throughput": [],
                     "planner": rows})
    assert "| 1,000,000 × 1,000,000 | one list | 5 | 8.00 (7.90–8.20) | 2,400 MB |" in text
    assert "| 1,000,000 × 1,000,000 | chapter + committee lists |" in text


def test_the_floor_is_the_slower_read_alone_plus_the_bare_apply():
    from bench.run import floor_of

    alone = {"novi_s": {1: 15.0, 2: 13.0}, "roster_s": {1: 20.0, 2: 11.0, 3: 10.5}}
    # 101 pages at 8 a second: 12.6 s; the roster with the tool's 2 pages in flight: 11.0 s
    floor = floor_of(alone, {"http_calls": {"novi_page": 101}}, bare_s=9.5)
    assert floor == {"novi_paced_s": 12.625, "roster_s": 11.0, "bare_apply_s": 9.5, "floor_s": 22.125}
    slow_roster = {**alone, "roster_s": {1: 40.0, 2: 25.0, 3: 24.0}}
    assert floor_of(slow_roster, {"http_calls": {"novi_page": 101}}, bare_s=0.0)["floor_s"] == 25.0


def test_the_floor_table_shows_the_reads_alone_and_the_flow_against_its_floor():
    run = {"size": 100_000, "day": "1% churn", "calls": {}, "lower_bound": {}, "over_bound": {}, "ratio": 1.0,
           "changes": 1_000, "phases_s": {"read": 14.0, "plan": 1.0}, "flow_s": 27.5, "process_s": 31.0,
           "prefect_overhead_s": 3.5, "peak_rss_mb": 500.0, "old_bridge": None,
           "alone": {"novi_s": {1: 15.0, 2: 13.0}, "roster_s": {1: 20.0, 2: 11.0, 3: 10.5}},
           "floor": {"novi_paced_s": 12.625, "roster_s": 11.0, "bare_apply_s": 9.5, "floor_s": 22.125}}
    text = markdown(json.loads(json.dumps({"started_at": "x", "machine": "2 cores", "repeat": 1, "runs": [run],
                                           "throughput": [], "planner": []})))
    (row,) = [line for line in text.splitlines() if line.startswith("| 100,000 | 1% churn | 12.62")]
    # reads alone 15.00 / 13.00 and 20.00 / 11.00 / 10.50; one after another 35.00; the flow 1.24× its floor
    assert "| 15.00 / 13.00 | 20.00 / 11.00 / 10.50 | 35.00 | 9.50 | 22.12 | 14.00 | 27.50 | 1.24× | 31.00 |" in row
