"""Whole syncs against the Novi sandbox (over HTTP) and a real Mailman core with mail runners."""

from __future__ import annotations

import json
import time

from prefect.artifacts import Artifact

from tasks.report import PLAN_KEY, artifact_key
from tests.integration.helpers import expected, lists_for, sync, wait_for


def test_first_sync_fills_empty_lists_with_exactly_the_eligible_and_their_names(world, tmp_path):
    members, board = lists_for(world, "members", "board")
    hand = {"office@example.org": "Office", f"partner@{world['domain']}": "Partner"}
    for email, name in hand.items():
        world["admin"].add_member(members, email, name)
    state, writes = sync(tmp_path, [{"list_id": members},
                                    {"list_id": board, "groups": ["Board of Directors"], "allow_empty": True}])
    assert state.is_completed(), state.message
    records = world["novi"].records()
    assert world["admin"].roster(members) == expected(records) | hand
    assert world["admin"].roster(board) == expected(records, group="Board of Directors")
    subscribes = len(expected(records)) + len(expected(records, group="Board of Directors"))
    assert len(writes) == subscribes and {m for m, _ in writes} == {"POST"}


def test_churn_is_applied_exactly_and_a_second_run_writes_nothing(world, tmp_path):
    members, held_list = lists_for(world, "members", "hold")
    world["admin"].add_member(members, "staff@example.org", "Staff")
    rules = [{"list_id": members}, {"list_id": held_list, "lapsed": "hold"}]
    assert sync(tmp_path, rules)[0].is_completed()
    before = expected(world["novi"].records())

    churn = world["novi"].churn(lapse=4, renew=3, rename=2, change_address=2, opt_out=1, add=2, remove=1)
    after = expected(world["novi"].records())
    state, writes = sync(tmp_path, rules)
    assert state.is_completed(), state.message

    assert world["admin"].roster(members) == after | {"staff@example.org": "Staff"}
    moved_out = {c["old"].lower() for c in churn["change_address"]}
    gone = set(before) - set(after)
    # on the hold list, those who no longer belong are held, except old addresses, which go
    assert set(world["admin"].roster(held_list)) == (set(before) | set(after)) - moved_out
    assert world["admin"].held(held_list) == gone - moved_out
    renamed = {a for a in set(before) & set(after) if before[a] != after[a]}
    assert renamed and all(world["admin"].roster(members)[a] == after[a] for a in renamed)

    by_list = {item["list_id"]: item["changes"] for item in state.result()["lists"]}
    assert by_list[members] == {"subscribe": len(set(after) - set(before)), "unsubscribe": len(gone),
                                "hold": 0, "release": 0, "rename": len(renamed),
                                "moderate": 0, "unmoderate": 0}
    assert by_list[held_list]["hold"] == len(gone - moved_out)
    assert by_list[held_list]["unsubscribe"] == len(moved_out)
    # a subscribe per list, one rename per address (the name lives on the address), a hold
    # per held member, one mass unsubscribe per list
    expected_writes = 2 * len(set(after) - set(before)) + len(renamed) + len(gone - moved_out) + 2
    assert len(writes) == expected_writes

    again, writes = sync(tmp_path, rules)
    assert again.is_completed() and again.name == "Completed" and again.message.startswith("No changes") and writes == []

    # The lapsed renew: back on the members list, released on the hold list.
    for item in churn["lapse"]:
        world["novi"].edit(item["id"], MemberStatus="current", MembershipExpires="2027-12-31T00:00:00")
    renewed = expected(world["novi"].records())
    back, _ = sync(tmp_path, rules)
    assert back.is_completed(), back.message
    assert world["admin"].roster(members) == renewed | {"staff@example.org": "Staff"}
    lapsed_back = set(renewed) - set(after)
    assert lapsed_back and world["admin"].held(held_list) == (gone - moved_out) - lapsed_back
    changes = {item["list_id"]: item["changes"] for item in back.result()["lists"]}
    assert changes[members]["subscribe"] == len(lapsed_back) and changes[held_list]["release"] == len(lapsed_back)


def test_dry_run_writes_nothing(world, tmp_path, isolated_ledger):
    (members,) = lists_for(world, "members")
    world["admin"].add_member(members, "keep@example.org", "Keep")
    state, writes = sync(tmp_path, [{"list_id": members}], dry_run=True)
    assert state.is_completed() and state.result()["changes"] == len(expected(world["novi"].records()))
    assert writes == [] and world["admin"].roster(members) == {"keep@example.org": "Keep"}
    assert not isolated_ledger.exists()


def test_no_mail_unless_a_list_asks_for_it(world, tmp_path):
    core = world["core"]
    quiet, loud = lists_for(world, "quiet", "loud")
    core.clear_messages()
    rules = [{"list_id": quiet}, {"list_id": loud, "send_welcome": True, "send_goodbye": True}]
    assert sync(tmp_path, rules)[0].is_completed()
    eligible = expected(world["novi"].records())
    plain = {r["Email"].lower(): r["UniqueID"] for r in world["novi"].records()
             if r["Email"] and r["Email"] == r["AccountEmail"] and r["Email"].lower() in eligible}
    leaving = sorted(plain)[0]
    world["novi"].edit(plain[leaving], MemberStatus="expired")
    eligible = expected(world["novi"].records()) | {leaving: eligible[leaving]}  # welcomed before it left
    assert sync(tmp_path, rules)[0].is_completed()

    def sent() -> list[tuple[str, str, str]]:
        """(list, recipient, subject) of every message that reached the SMTP sink."""
        return [(str(m.get("List-Id", "")).strip("<> "), str(m["X-RcptTo"]).lower(), str(m["Subject"]))
                for m in core.messages()]

    def loud_done() -> bool:
        mail = sent()
        return (sum(1 for lst, _, subject in mail if lst == loud and subject.startswith("Welcome")) >= len(eligible)
                and any(lst == loud and to == leaving and "unsubscribed" in subject.lower()
                        for lst, to, subject in mail))

    assert wait_for(loud_done), f"the loud list's mail did not all arrive: {sent()}"
    time.sleep(3)  # the quiet list's runners had as long as the loud list's, and more
    mail = sent()
    welcomed = {to for lst, to, subject in mail if lst == loud and subject.startswith("Welcome")}
    assert welcomed == set(eligible)
    assert [to for lst, to, subject in mail if lst == loud and not subject.startswith("Welcome")] == [leaving]
    # Nothing at all about the quiet list, to anyone: every message is one of the above.
    assert len(mail) == len(eligible) + 1 and {lst for lst, _, _ in mail} == {loud}


def test_artifacts_list_the_changes_mailman_shows_afterwards(world, tmp_path):
    (members,) = lists_for(world, "members")
    sync(tmp_path, [{"list_id": members}])
    world["novi"].churn(lapse=3, rename=2, add=2, change_address=1)
    state, _ = sync(tmp_path, [{"list_id": members}])
    table = [row for row in json.loads(Artifact.get(artifact_key(PLAN_KEY, False, members)).data)
             if row["action"] not in ("left alone", "bouncing")]
    roster = world["admin"].roster(members)
    assert table and all(row["outcome"] == "applied" for row in table)
    moved = [row for row in table if row["action"] == "address change"]
    assert len(moved) == 1 and moved[0]["change"].endswith(f" → {moved[0]['email']}")
    for row in table:
        email = row["email"].lower()
        if row["action"] in ("subscribe", "address change"):
            assert email in roster
        if row["action"] == "address change":
            assert row["change"].split(" → ")[0].lower() not in roster
        elif row["action"] == "unsubscribe":
            assert email not in roster
        elif row["action"] == "rename":
            assert roster[email] == expected(world["novi"].records())[email]
            assert row["change"].endswith(f" → {roster[email]}")
    # every change is a row, an address change one row for its two changes
    assert len(table) + len(moved) == state.result()["changes"]
