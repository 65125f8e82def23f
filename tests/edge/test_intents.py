"""What a run that died mid-apply left intended, settled against the roster (issue 28)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from tasks.core.intents import APPLIED, INTENT_COLUMNS, NOT_APPLIED, UNDECIDED, settle_intents
from tasks.core.schema import Action, Delivery, Outcome, RunState
from tests.conftest import last_run, roster_frame

L = "members.example.org"
T0 = datetime(2026, 12, 7, 2, 15, tzinfo=timezone.utc)


def intent(action: str, email: str = "a@example.org", name: str | None = "Ann", lease: str = "dead-lease",
           **extra) -> dict:
    return {"intent_id": 1, "run_id": "flow-dead", "run_name": "dead-otter", "kind": "full", "lease": lease,
            "started_at": T0, "at": T0 + timedelta(minutes=1), "list_id": L, "action": action, "email": email,
            "match_key": email.lower(), "novi_id": "n-ann", "display_name": name, "previous": "Old",
            "reason": "eligible, not on the list", "delivery_mode": "regular", "moderation_action": "",
            "delivery_status": "enabled", **extra}


def frame(*intents: dict) -> pd.DataFrame:
    return pd.DataFrame(list(intents), columns=INTENT_COLUMNS)


HELD, ENABLED = Delivery.BY_MODERATOR, Delivery.ENABLED


@pytest.mark.parametrize(("action", "roster", "verdict"), [
    (Action.SUBSCRIBE, [("a@example.org", "Ann")], APPLIED),
    (Action.SUBSCRIBE, [], NOT_APPLIED),
    (Action.UNSUBSCRIBE, [], APPLIED),
    (Action.UNSUBSCRIBE, [("a@example.org", "Ann")], NOT_APPLIED),
    (Action.HOLD, [("a@example.org", "Ann", HELD)], APPLIED),
    (Action.HOLD, [("a@example.org", "Ann", ENABLED)], NOT_APPLIED),
    (Action.HOLD, [], NOT_APPLIED),
    (Action.RELEASE, [("a@example.org", "Ann", ENABLED)], APPLIED),
    (Action.RELEASE, [("a@example.org", "Ann", HELD)], NOT_APPLIED),
    (Action.RENAME, [("a@example.org", "Ann")], APPLIED),
    (Action.RENAME, [("a@example.org", "Old")], NOT_APPLIED),
], ids=["subscribe-found", "subscribe-not", "unsubscribe-gone", "unsubscribe-still-there", "hold-held",
        "hold-not-held", "hold-gone", "release-released", "release-still-held", "rename-named", "rename-not"])
def test_each_change_is_settled_by_what_the_roster_shows(action, roster, verdict):
    assert settle_intents(frame(intent(action)), {L: roster_frame(L, roster)}).tolist() == [verdict]


@pytest.mark.parametrize(("action", "moderating", "verdict"), [
    (Action.MODERATE, True, APPLIED), (Action.MODERATE, False, NOT_APPLIED),
    (Action.UNMODERATE, False, APPLIED), (Action.UNMODERATE, True, NOT_APPLIED),
], ids=["moderate-found", "moderate-not", "unmoderate-gone", "unmoderate-still"])
def test_moderator_changes_are_settled_by_the_moderator_roster(action, moderating, verdict):
    moderators = pd.DataFrame({"match_key": ["a@example.org"] if moderating else []}, dtype="string")
    assert settle_intents(frame(intent(action)), {L: roster_frame(L, [])}, {L: moderators}).tolist() == [verdict]


def test_what_was_not_read_is_undecided_never_guessed():
    intents = frame(intent(Action.SUBSCRIBE), intent(Action.MODERATE), intent(Action.SUBSCRIBE, list_id="other.org"))
    assert settle_intents(intents, {L: roster_frame(L, [("a@example.org", "Ann")])}).tolist() == [
        APPLIED, UNDECIDED, UNDECIDED]


def test_the_ledger_holds_intents_until_the_run_ends_and_settles_a_dead_runs(ledger_url):
    """Written before a batch is sent, marked after; the run's record removes its own; another
    run's (a dead one: the lock says so) are settled in one transaction: the crashed run with what
    reached Mailman, whom it subscribed managed with the intent's Novi id, its intents gone."""
    from tasks.ledger import Journal, Lease, Ledger, RunRecord
    from tests.edge.test_ledger import planned_run

    ledger = Ledger(ledger_url)
    dead = Journal(ledger, Lease([L], "dead-lease"), "flow-dead", "dead-otter", "full", T0)
    changes = [{"list_id": L, "email": f"m{i}@example.org", "match_key": f"m{i}@example.org", "novi_id": f"n{i}",
                "display_name": f"M {i}", "previous": None, "reason": "eligible, not on the list",
                "delivery_mode": "mime_digests" if i == 0 else "regular", "moderation_action": "",
                "delivery_status": "enabled", "member_id": None, "mail": False, "request": None} for i in range(3)]
    dead.intend("batch-1", Action.SUBSCRIBE, changes)
    dead.intend("batch-1", Action.SUBSCRIBE, changes)  # the batch task retried: the same intents, once
    dead.settled("batch-1", [{"email": c["email"], "outcome": Outcome.APPLIED, "detail": ""} for c in changes[:2]])

    live = Lease([L], "live-lease")
    intents = ledger.leftover_intents([L], live)
    assert len(intents) == 3 and set(intents["lease"]) == {"dead-lease"}
    assert ledger.leftover_intents([L], Lease([L], "dead-lease")).empty  # its own are not leftovers

    # m0 and m1 reached Mailman, m2 did not (the kill came first)
    verdicts = settle_intents(intents, {L: roster_frame(L, [("m0@example.org", "M 0"), ("m1@example.org", "M 1")])})
    (crashed,) = ledger.settle_crashed(intents, verdicts)
    assert (crashed["applied"], crashed["not applied"], crashed["undecided"]) == (2, 1, 0)
    assert ledger.leftover_intents([L], live).empty
    remembered = ledger.read([L]).set_index("match_key")
    assert sorted(remembered.index) == ["m0@example.org", "m1@example.org"]
    assert remembered.loc["m0@example.org", "novi_id"] == "n0" and remembered.loc["m0@example.org", "status"] == "member"
    assert remembered.loc["m0@example.org", "delivery_mode"] == "mime_digests"
    (run,) = ledger.find_runs("dead-otter")
    assert run["flow_run_id"] == "flow-dead" and len(ledger.applied_changes(run["keys"])) == 2
    assert last_run(ledger, RunState.CRASHED)["message"].startswith("crashed mid-apply")
    history = ledger.history("m0@example.org")
    assert list(history["run_name"]) == ["dead-otter"] and list(history["outcome"]) == [Outcome.APPLIED]

    # A run that ends removes its own intents with its record
    mine = Journal(ledger, live, "flow-live", "live-heron", "full", T0)
    mine.intend("batch-2", Action.SUBSCRIBE, changes[2:])
    p, outcomes, record = planned_run(L, 1, run_id="flow-live")
    ledger.record(record, [L], None, outcomes, p.figures, lease=live)
    assert ledger.leftover_intents([L], Lease([L], "another")).empty
    assert isinstance(record, RunRecord)


def test_a_dead_runs_intents_on_lists_the_settling_run_does_not_hold_wait_for_one_that_does(ledger_url):
    """A batch of one address's subscribes spans its lists: a run holding one of them settles
    that one, and leaves the other's intents for the run that reads it (review of issue 28)."""
    from tasks.ledger import Journal, Lease, Ledger

    ledger = Ledger(ledger_url)
    other = "other.example.org"
    dead = Journal(ledger, Lease([L, other], "dead-lease"), "flow-dead", "dead-otter", "full", T0)
    change = {"email": "z@example.org", "match_key": "z@example.org", "novi_id": "n-z", "display_name": "Z",
              "previous": None, "reason": "eligible, not on the list", "delivery_mode": "regular",
              "moderation_action": "", "delivery_status": "enabled", "member_id": None, "mail": False, "request": None}
    dead.intend("b1", Action.SUBSCRIBE, [{**change, "list_id": L}, {**change, "list_id": other}])
    mine = ledger.leftover_intents([L], Lease([L], "live"))
    assert list(mine["list_id"]) == [L]
    ledger.settle_crashed(mine, settle_intents(mine, {L: roster_frame(L, [("z@example.org", "Z")])}))
    waiting = ledger.leftover_intents([other], Lease([other], "later"))
    assert list(waiting["list_id"]) == [other]  # not lost with the first list's settling
    ledger.settle_crashed(waiting, settle_intents(waiting, {other: roster_frame(other, [("z@example.org", "Z")])}))
    assert set(ledger.read([L, other])["list_id"]) == {L, other}
    assert len(ledger.history("z@example.org")) == 2


def test_a_ledger_from_before_intents_upgrades_and_a_dry_run_reads_it_as_it_is(tmp_path):
    """Ledgers out there have no intents table (tests/fixtures/ledgers, the last column set
    before intents): a dry run (which creates nothing) finds none to settle, a real run's open
    adds the table, and the run's intents then work."""
    import shutil

    from sqlalchemy import inspect

    from tasks.ledger import Journal, Lease, Ledger
    from tests.fixtures.ledgers.make import FIXTURES

    path = tmp_path / "ledger.sqlite"
    shutil.copy(FIXTURES / "ledger-7-315f0a6.sqlite", path)
    dry = Ledger(f"sqlite:///{path}", create=False)
    assert dry.leftover_intents([L], Lease([L], "x")).empty
    assert not inspect(dry.engine).has_table("intents")  # a dry run wrote nothing
    real = Ledger(f"sqlite:///{path}")
    assert inspect(real.engine).has_table("intents")
    Journal(real, Lease([L], "dead"), "flow-x", "x", "full", T0).intend(
        "b", Action.SUBSCRIBE, [{"list_id": L, "email": "a@example.org", "match_key": "a@example.org"}])
    assert len(real.leftover_intents([L], Lease([L], "live"))) == 1
