"""The undo of a run, planned from the ledger's record of it and the rosters as they are now."""

from __future__ import annotations

import pandas as pd
import pytest

from tasks.core import addresses, guards
from tasks.core.rules import parse_rules
from tasks.core.schema import Action, Delivery, Outcome
from tasks.core.schema import REASON_ADDRESS_CHANGED, REASON_OPTED_OUT
from tasks.core.undo import plan_undo, to_put_back
from tasks.core.members import members_frame
from tests.conftest import novi_record, roster_frame

LIST = "members.example.org"


def applied(*rows: tuple, ids: dict[str, str | None] | None = None, reason: str = "status expired") -> pd.DataFrame:
    """The ledger's applied changes of a run: (action, email, display_name, previous[, delivery_mode[,
    moderation_action[, delivery_status]]]), as Ledger.applied_changes returns them. Each address
    is its own Novi member (`n-<email>`) unless `ids` says whose it is."""
    email = pd.Series([r[1].lower() for r in rows], dtype="string")
    return pd.DataFrame({
        "list_id": pd.Series([LIST] * len(rows), dtype="string"), "match_key": addresses.match_key(email),
        "email": email, "novi_id": pd.Series([(ids or {}).get(r[1], f"n-{r[1]}") for r in rows], dtype="string"),
        "action": pd.Series([r[0] for r in rows], dtype="string"),
        "outcome": pd.Series([Outcome.APPLIED] * len(rows), dtype="string"),
        "reason": pd.Series([reason] * len(rows), dtype="string"),
        "display_name": pd.Series([r[2] for r in rows], dtype="string"),
        "previous": pd.Series([r[3] for r in rows], dtype="string"),
        "delivery_mode": pd.Series([r[4] if len(r) > 4 else None for r in rows], dtype="string"),
        "moderation_action": pd.Series([r[5] if len(r) > 5 else None for r in rows], dtype="string"),
        "delivery_status": pd.Series([r[6] if len(r) > 6 else None for r in rows], dtype="string"),
    })


NONE_LATER = pd.DataFrame(columns=["list_id", "match_key", "run_name"])


RULES = parse_rules({"lists": [{"list_id": LIST}]}, "test")


def novi_now(changes: pd.DataFrame, **edits) -> pd.DataFrame:
    """The Novi records of everyone the undo would put back, as they are now: each at the address
    the run took off, current; `edits` maps a Novi id to the fields changed since (None: deleted)."""
    records = []
    for novi_id in to_put_back(changes):
        email = changes.loc[changes["novi_id"] == novi_id, "email"].iloc[0]
        edit = edits.get(novi_id, {})
        if edit is not None:
            records.append(novi_record(novi_id, email, **edit))
    return members_frame(records)


def undo_of(changes: pd.DataFrame, roster: list[tuple], later: pd.DataFrame = NONE_LATER,
            novi: pd.DataFrame | None = None, rules=RULES, bans: dict | None = None):
    novi = novi_now(changes) if novi is None else novi
    return plan_undo(changes, {LIST: roster_frame(LIST, roster)}, later, run_name="brave-otter", novi=novi,
                     rules=rules, bans=bans)


def by_email(frame: pd.DataFrame) -> dict[str, dict]:
    return {row["email"]: row for row in frame.astype(object).where(frame.notna(), None).to_dict("records")}


def test_each_applied_change_is_undone_by_its_inverse_with_the_name_and_preferences_it_had():
    run = applied((Action.UNSUBSCRIBE, "gone@example.org", "Novi Name", "Ann Gone", "digests", "hold", "by_user"),
                  (Action.SUBSCRIBE, "new@example.org", "Bo New", None),
                  (Action.HOLD, "held@example.org", "Cy Held", "Cy Held"),
                  (Action.RELEASE, "freed@example.org", "Di Freed", "Di Freed"),
                  (Action.RENAME, "named@example.org", "Ed New-Name", "Ed Old"))
    undo = undo_of(run, [("new@example.org", "Bo New"), ("held@example.org", "Cy Held", True),
                         ("freed@example.org", "Di Freed"), ("named@example.org", "Ed New-Name")])
    got = by_email(undo.changes)
    assert {email: change["action"] for email, change in got.items()} == {
        "gone@example.org": Action.SUBSCRIBE, "new@example.org": Action.UNSUBSCRIBE,
        "held@example.org": Action.RELEASE, "freed@example.org": Action.HOLD, "named@example.org": Action.RENAME}
    back = got["gone@example.org"]  # the name the roster had, not Novi's; their digest, moderation, own pause
    assert (back["display_name"], back["delivery_mode"], back["moderation_action"], back["delivery_status"]) == (
        "Ann Gone", "digests", "hold", Delivery.BY_USER)
    assert got["named@example.org"]["display_name"] == "Ed Old"
    assert got["held@example.org"]["member_id"] == "mid-held@example.org"  # a release writes to the member
    assert all(change["reason"].startswith("undo of brave-otter: ") for change in got.values())
    assert "status expired" in back["reason"] and undo.skipped.empty


@pytest.mark.parametrize(("change", "roster", "says"), [
    ((Action.UNSUBSCRIBE, "a@example.org", "A", "A"), [("a@example.org", "A")], "on the list again since"),
    ((Action.SUBSCRIBE, "a@example.org", "A", None), [], "no longer on the list"),
    ((Action.HOLD, "a@example.org", "A", "A"), [("a@example.org", "A", False)], "no longer held"),
    ((Action.RELEASE, "a@example.org", "A", "A"), [("a@example.org", "A", True)], "held again since"),
    ((Action.RENAME, "a@example.org", "A New", "A Old"), [("a@example.org", "A Other")], "renamed since, to 'A Other'"),
], ids=["re-added-by-hand", "removed-since", "released-since", "held-since", "renamed-since"])
def test_what_changed_since_is_left_as_it_is_and_said(change, roster, says):
    undo = undo_of(applied(change), roster)
    assert undo.changes.empty
    (skipped,) = undo.skipped.to_dict("records")
    assert skipped["email"] == "a@example.org" and says in skipped["reason"]


def test_an_address_a_later_run_changed_again_is_left_to_that_run():
    run = applied((Action.UNSUBSCRIBE, "a@example.org", "A", "A"), (Action.UNSUBSCRIBE, "b@example.org", "B", "B"))
    later = pd.DataFrame({"list_id": [LIST], "match_key": ["a@example.org"], "run_name": ["calm-heron"]})
    undo = undo_of(run, [], later)
    assert list(undo.changes["email"]) == ["b@example.org"]
    assert list(undo.skipped["reason"]) == ["changed again since, by run calm-heron"]


MOVE = {"old@example.org": "n-pat", "new@example.org": "n-pat"}


def test_an_address_change_novi_has_taken_back_is_undone_both_halves():
    run = applied((Action.UNSUBSCRIBE, "old@example.org", "Pat", "Pat Old"), (Action.SUBSCRIBE, "new@example.org", "Pat", None),
                  ids=MOVE, reason=REASON_ADDRESS_CHANGED)
    undo = undo_of(run, [("new@example.org", "Pat")])  # Novi gives Pat the old address again
    assert {(c["email"], c["action"]) for c in by_email(undo.changes).values()} == {
        ("old@example.org", Action.SUBSCRIBE), ("new@example.org", Action.UNSUBSCRIBE)}
    assert by_email(undo.changes)["old@example.org"]["novi_id"] == "n-pat"  # the ledger manages it with that id


def test_an_address_change_novi_still_has_is_not_undone_and_says_why():
    """Put back, the old address would be one nobody manages (Novi no longer gives it) and the
    member would get the list twice: both halves stay, each with its reason."""
    run = applied((Action.UNSUBSCRIBE, "old@example.org", "Pat", "Pat Old"), (Action.SUBSCRIBE, "new@example.org", "Pat", None),
                  ids=MOVE, reason=REASON_ADDRESS_CHANGED)
    undo = undo_of(run, [("new@example.org", "Pat")], novi=members_frame([novi_record("n-pat", "new@example.org")]))
    assert undo.changes.empty
    skipped = by_email(undo.skipped)
    assert "Novi now gives this member another address (new@example.org)" in skipped["old@example.org"]["reason"]
    assert "old address is not put back" in skipped["new@example.org"]["reason"]


@pytest.mark.parametrize(("edit", "says"), [
    (None, "no longer in Novi (deleted or merged)"),
    ({"UnsubscribeFromEmails": True}, "opted out of email in Novi since"),
    ({"Active": False}, "inactive in Novi now"),
    ({"Active": "yes"}, "Novi's record cannot be read now (Active is not true/false)"),
], ids=["deleted", "opted-out-since", "deactivated-since", "unreadable"])
def test_nobody_novi_now_keeps_off_is_put_back(edit, says):
    run = applied((Action.UNSUBSCRIBE, "a@example.org", "A", "A"), (Action.HOLD, "h@example.org", "H", "H"),
                  (Action.UNSUBSCRIBE, "b@example.org", "B", "B"))
    novi = novi_now(run, **{"n-a@example.org": edit, "n-h@example.org": edit})
    undo = undo_of(run, [("h@example.org", "H", True)], novi=novi)
    assert list(undo.changes["email"]) == ["b@example.org"]
    assert {s["email"]: s["action"] for s in by_email(undo.skipped).values()} == {
        "a@example.org": Action.SUBSCRIBE, "h@example.org": Action.RELEASE}
    assert all(says in reason for reason in undo.skipped["reason"])


def test_a_removal_that_was_the_members_own_choice_is_never_undone():
    run = applied((Action.UNSUBSCRIBE, "a@example.org", "A", "A"), reason=REASON_OPTED_OUT)
    undo = undo_of(run, [])  # even were they to opt back in since: they choose again, in Novi
    assert undo.changes.empty
    assert "opted out of email in Novi: their own choice, not undone" in undo.skipped["reason"].iloc[0]


def test_a_list_that_keeps_the_inactive_and_opted_out_puts_them_back():
    rules = parse_rules({"lists": [{"list_id": LIST, "active_only": False, "exclude_opted_out": False}]}, "test")
    run = applied((Action.UNSUBSCRIBE, "a@example.org", "A", "A"))
    undo = undo_of(run, [], novi=novi_now(run, **{"n-a@example.org": {"Active": False, "UnsubscribeFromEmails": True}}),
                   rules=rules)
    assert list(undo.changes["email"]) == ["a@example.org"]


def test_an_address_novi_never_knew_goes_back_as_it_was():
    """A mirror list's removal of an address added by hand: back, unmanaged, as before the run."""
    run = applied((Action.UNSUBSCRIBE, "staff@example.org", "Staff", "Staff"), ids={"staff@example.org": None},
                  reason="not in Novi")
    undo = undo_of(run, [], novi=members_frame([]))
    assert list(undo.changes["email"]) == ["staff@example.org"] and undo.changes["novi_id"].isna().all()


def test_a_change_recorded_before_names_were_kept_is_undone_without_a_name():
    """Ledgers from before the undo kept no name or preferences: Mailman's defaults, no crash."""
    undo = undo_of(applied((Action.UNSUBSCRIBE, "a@example.org", None, None)), [])
    (change,) = by_email(undo.changes).values()
    assert change["action"] == Action.SUBSCRIBE and change["display_name"] is None and change["delivery_mode"] is None


def test_an_undo_that_removes_too_many_is_refused_by_the_removal_guards():
    rules = parse_rules({"lists": [{"list_id": LIST}]}, "test")
    roster = [(f"m{i}@example.org", f"M{i}") for i in range(100)]
    run = applied(*[(Action.SUBSCRIBE, f"m{i}@example.org", f"M{i}", None) for i in range(60)])
    undo = undo_of(run, roster)
    (refusal,) = guards.undo_refusals(undo.changes, {LIST: roster_frame(LIST, roster)}, rules)
    assert "60 removals planned, 60% of its 100 members on the list" in refusal
    few = undo_of(run.head(5), roster)
    assert guards.undo_refusals(few.changes, {LIST: roster_frame(LIST, roster)}, rules) == []


def test_a_removal_of_someone_novi_does_not_know_reads_their_preferences_first():
    """An undo restores a removed member's digest setting and a delivery they paused: the
    planner reads them before every removal, not only for members Novi still knows (a purge
    or a bad export removes people as "no longer in Novi")."""
    from tasks.core.planner import plan_changes
    from tasks.core.members import members_frame
    from tests.conftest import novi_record

    rules = parse_rules({"lists": [{"list_id": LIST, "scope": "mirror"}]}, "test")
    roster = roster_frame(LIST, [("known@example.org", "Known"), ("gone@example.org", "Gone", "enabled", None)])
    plan = plan_changes(members_frame([novi_record("k", "known@example.org", first="Known", last="")]), {LIST: roster},
                    rules)
    assert list(plan.changes["email"]) == ["gone@example.org"]
    assert list(plan.wanting["member_id"]) == ["mid-gone@example.org"]


def test_an_address_banned_since_is_not_subscribed_again():
    run = applied((Action.UNSUBSCRIBE, "a@example.org", "A", "A"), (Action.UNSUBSCRIBE, "b@example.org", "B", "B"))
    undo = undo_of(run, [], bans={LIST: ["^a@.*"]})
    assert list(undo.changes["email"]) == ["b@example.org"]
    assert list(undo.skipped["reason"]) == ["banned in Mailman since"]


def test_a_removal_whose_settings_were_not_recorded_says_so_in_the_undo():
    undo = undo_of(applied((Action.UNSUBSCRIBE, "a@example.org", "A", "A")), [])
    assert undo.changes["reason"].iloc[0].endswith("their delivery settings were not recorded: Mailman's defaults")
    kept = undo_of(applied((Action.UNSUBSCRIBE, "a@example.org", "A", "A", "regular", "", "enabled")), [])
    assert "not recorded" not in kept.changes["reason"].iloc[0]


def test_the_ledger_finds_every_attempt_of_a_run_and_each_run_a_name_could_mean(tmp_path):
    from dataclasses import replace
    from datetime import timedelta

    from tasks.core.planner import settle
    from tasks.core.schema import RunKind
    from tasks.ledger import Ledger
    from tests.edge.test_ledger import T0, planned_run

    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    p, outcomes, run = planned_run(LIST, 3, run_id="flow-1")
    refused = replace(run, state="refused", message="refused")
    ledger.record(refused, [LIST], None, outcomes.assign(outcome=Outcome.REFUSED), p.figures)
    ledger.record(run, [LIST], settle(p.memory, outcomes), outcomes, p.figures)  # the approved attempt
    (found,) = ledger.find_runs("name-flow-1")
    assert len(found["keys"]) == 2 and len(ledger.applied_changes(found["keys"])) == 3
    assert ledger.applied_changes(found["keys"])["display_name"].notna().all()
    _, other, twin = planned_run("b.example.org", 1, run_id="flow-2", now=T0 + timedelta(hours=1))
    ledger.record(replace(twin, run_name="name-flow-1"), ["b.example.org"], None, other, p.figures)
    assert [r["flow_run_id"] for r in ledger.find_runs("name-flow-1")] == ["flow-2", "flow-1"]

    # An undo's record forgets what the ledger remembered of the addresses it removed, and
    # manages those it put back, with their Novi id.
    assert len(ledger.read([LIST])) == 3
    undone = outcomes.head(2).assign(action=Action.UNSUBSCRIBE)
    ledger.record(replace(run, run_id="flow-3", run_name="undo", kind=RunKind.UNDO), [LIST], None, undone, p.figures)
    assert len(ledger.read([LIST])) == 1
    back = outcomes.head(1).assign(action=Action.SUBSCRIBE, email="Back@Example.org", match_key="back@example.org",
                                   novi_id="n-back", delivery_mode="mime_digests")
    ledger.record(replace(run, run_id="flow-4", run_name="undo 2", kind=RunKind.UNDO), [LIST], None, back, p.figures)
    (row,) = ledger.read([LIST]).loc[lambda f: f["match_key"] == "back@example.org"].to_dict("records")
    assert (row["novi_id"], row["status"], row["on_roster"], row["eligible"], row["delivery_mode"]) == (
        "n-back", "member", True, True, "mime_digests")


def test_an_undo_reads_a_ledger_from_before_names_were_kept(tmp_path):
    """Its changes table lacks the name and preference columns until a real run upgrades it."""
    import sqlite3

    from tasks.ledger import Ledger
    from tests.edge.test_ledger import planned_run

    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(f"sqlite:///{path}")
    p, outcomes, run = planned_run(LIST, 2)
    ledger.record(run, [LIST], None, outcomes, p.figures)
    with sqlite3.connect(path) as conn:
        for column in ("display_name", "previous", "delivery_mode", "moderation_action", "delivery_status"):
            conn.execute(f"ALTER TABLE changes DROP COLUMN {column}")
    old = Ledger(f"sqlite:///{path}", create=False)
    (found,) = old.find_runs("name-run-1")
    changes = old.applied_changes(found["keys"])
    assert len(changes) == 2 and changes["display_name"].isna().all() and changes["delivery_mode"].isna().all()


def test_a_protected_address_is_not_removed_by_an_undo_either():
    run = applied((Action.SUBSCRIBE, "office@example.org", "Office", None), (Action.SUBSCRIBE, "b@example.org", "B", None))
    rules = parse_rules({"lists": [{"list_id": LIST, "protected": ["office@example.org"]}]}, "test")
    undo = undo_of(run, [("office@example.org", "Office"), ("b@example.org", "B")], rules=rules)
    assert list(undo.changes["email"]) == ["b@example.org"] and list(undo.skipped["reason"]) == ["protected address"]


def test_moderator_changes_are_left_to_the_positions_and_said():
    run = applied((Action.MODERATE, "chair@example.org", "C", "C"), (Action.UNMODERATE, "old@example.org", "O", "O"),
                  (Action.SUBSCRIBE, "new@example.org", "N", None))
    undo = undo_of(run, [("new@example.org", "N")])
    assert [(r.action, r.email) for r in undo.changes.itertuples()] == [(Action.UNSUBSCRIBE, "new@example.org")]
    assert by_email(undo.skipped)["chair@example.org"]["reason"] == "moderators follow the committee positions, not undone"
    assert set(undo.skipped["email"]) == {"chair@example.org", "old@example.org"}
