"""The change digest's text: what a run did to a list, for the people who look after its members."""

from __future__ import annotations

import pandas as pd
import pytest

from tasks.core.digest import compose
from tasks.core.planner import REASON_ADDRESS_CHANGED, REASON_BANNED, REASON_MODERATOR, REASON_NOT_MODERATOR
from tasks.core.rules import parse_rules
from tasks.core.schema import (BOUNCING_COLUMNS, LEFT_ALONE_COLUMNS, OUTCOME_COLUMNS, Action, Outcome)

LIST, OTHER = "members.example.org", "board.example.org"


def outcomes(*rows: tuple) -> pd.DataFrame:
    """(list, action, email, novi_id, display_name, previous, reason, outcome) rows."""
    keys = ["list_id", "action", "email", "novi_id", "display_name", "previous", "reason", "outcome"]
    frame = pd.DataFrame([dict(zip(keys, row)) for row in rows], columns=OUTCOME_COLUMNS)
    return frame.assign(detail=frame["outcome"].map({Outcome.FAILED: "Mailman said no"}).fillna(""))


NOTHING_LEFT = pd.DataFrame(columns=LEFT_ALONE_COLUMNS)
NO_BOUNCES = pd.DataFrame(columns=BOUNCING_COLUMNS)
NONE_QUARANTINED = pd.DataFrame(columns=["novi_id", "email", "quarantine"])

DAY = outcomes(
    (LIST, Action.SUBSCRIBE, "ada@example.org", "n-ada", "Ada Lovelace", None, "eligible, not on the list", Outcome.APPLIED),
    (LIST, Action.UNSUBSCRIBE, "bo@example.org", "n-bo", "Bo Novi", "Bo Roster", "status expired", Outcome.APPLIED),
    (LIST, Action.UNSUBSCRIBE, "cy.old@example.org", "n-cy", "Cy Moved", "Cy Moved", REASON_ADDRESS_CHANGED, Outcome.APPLIED),
    (LIST, Action.SUBSCRIBE, "cy.new@example.org", "n-cy", "Cy Moved", None, "eligible, not on the list", Outcome.APPLIED),
    (LIST, Action.RENAME, "di@example.org", "n-di", "Di New", "Di Old", "name changed in Novi", Outcome.APPLIED),
    (LIST, Action.HOLD, "ed@example.org", "n-ed", "Ed Held", "Ed Held", "status expired", Outcome.APPLIED),
    (LIST, Action.SUBSCRIBE, "fay@example.org", "n-fay", "Fay Failed", None, "eligible, not on the list", Outcome.FAILED),
    (OTHER, Action.SUBSCRIBE, "gus@example.org", "n-gus", "Gus Board", None, "eligible, not on the list", Outcome.APPLIED),
)


def test_a_lists_digest_names_each_person_with_their_novi_id_under_what_happened_to_them():
    banned = pd.DataFrame([{"list_id": LIST, "email": "hal@example.org", "novi_id": "n-hal", "reason": REASON_BANNED}])
    bouncing = pd.DataFrame([{"list_id": LIST, "email": "ivy@example.org", "novi_id": "n-ivy", "display_name": "Ivy",
                              "state": "delivery disabled by bounces"}])
    quarantined = pd.DataFrame([{"novi_id": "n-jo", "email": "jo@example", "quarantine": "invalid address"}])
    digest = compose([LIST], DAY, banned, bouncing, quarantined, "calm-heron", "http://ui/runs/flow-run/1")
    body = digest.body
    assert digest.subject == f"[novi-mailman] +2 −2 held 1 renamed 1 on {LIST} (run calm-heron)"
    for line in ("Joined (1):\n  Ada Lovelace <ada@example.org> (Novi n-ada)",
                 "Left (1):\n  Bo Novi <bo@example.org> (Novi n-bo): status expired",
                 "Moved to a new address (1):\n  Cy Moved <cy.old@example.org> → <cy.new@example.org> (Novi n-cy)",
                 "Renamed (1):\n  Di Old → Di New <di@example.org> (Novi n-di)",
                 "Held (delivery stopped) (1):\n  Ed Held <ed@example.org> (Novi n-ed): status expired",
                 "Not done (failed) (1):\n  subscribe Fay Failed <fay@example.org> (Novi n-fay): Mailman said no",
                 "Banned in Mailman, left off (1):\n  <hal@example.org> (Novi n-hal)",
                 "Address bouncing (1):\n  Ivy <ivy@example.org> (Novi n-ivy): delivery disabled by bounces",
                 "Novi records not synced until fixed in Novi (1):\n  Novi n-jo <jo@example>: invalid address",
                 "The run, with every change and its reason: http://ui/runs/flow-run/1"):
        assert line in body, line
    assert "gus@example.org" not in body  # another list's change is not this digest's


def test_lists_sharing_a_destination_share_one_message():
    digest = compose([LIST, OTHER], DAY, NOTHING_LEFT, NO_BOUNCES, NONE_QUARANTINED, "calm-heron", None)
    assert f"== {LIST} ==" in digest.body and f"== {OTHER} ==" in digest.body
    assert digest.subject == f"[novi-mailman] +1 on {OTHER}; +2 −2 held 1 renamed 1 on {LIST} (run calm-heron)"


@pytest.mark.parametrize("outcome", [Outcome.PLANNED, Outcome.REFUSED, Outcome.FAILED])
def test_a_run_that_applied_nothing_sends_nothing(outcome):
    """A dry run's changes are planned, a refused run's refused: no digest for either."""
    nothing = DAY.assign(outcome=outcome)
    assert compose([LIST], nothing, NOTHING_LEFT, NO_BOUNCES, NONE_QUARANTINED, "calm-heron", None) is None
    quiet = DAY.head(0)  # a run with nothing to do
    assert compose([LIST], quiet, NOTHING_LEFT, NO_BOUNCES, NONE_QUARANTINED, "calm-heron", None) is None


def test_a_digest_setting_needs_one_way_to_send_and_addresses_or_owners():
    good = parse_rules({"lists": [{"list_id": LIST, "digest": {"email_block": "smtp"}}]}, "t")
    assert good.lists[0].digest.to == "owners"
    for bad in ({"to": ["staff@example.org"]}, {"email_block": "smtp", "notify_block": "slack-webhook/x"},
                {"email_block": "smtp", "to": ["not an address"]}, {"email_block": "smtp", "to": []}):
        with pytest.raises(Exception, match="digest"):
            parse_rules({"lists": [{"list_id": LIST, "digest": bad}]}, "t")


def test_each_lists_owners_hear_of_their_own_list_only_and_staff_hear_of_all(monkeypatch):
    """A chapter chair must not receive other lists' members; records quarantined anywhere in
    Novi are membership staff's, not an owner's."""
    import tasks.digest as sending

    sent = []
    monkeypatch.setattr(sending, "_email", lambda settings, digest, list_ids, mailman: sent.append((list_ids, digest)))
    monkeypatch.setattr(sending, "run_url", lambda: None)
    owners = {"email_block": "smtp", "to": "owners"}
    staff = {"email_block": "smtp", "to": ["membership@example.org"]}
    rules = parse_rules({"lists": [{"list_id": LIST, "digest": owners}, {"list_id": OTHER, "digest": owners},
                                   {"list_id": "third.example.org", "digest": staff},
                                   {"list_id": "fourth.example.org", "digest": staff}]}, "t")
    day = pd.concat([DAY, DAY.loc[DAY["list_id"] == OTHER].assign(list_id="third.example.org"),
                     DAY.loc[DAY["list_id"] == OTHER].assign(list_id="fourth.example.org")], ignore_index=True)
    quarantined = pd.DataFrame([{"novi_id": "n-jo", "email": "jo@example", "quarantine": "invalid address"}])
    problems = sending.send_digests(rules, day, NOTHING_LEFT, NO_BOUNCES, quarantined, None, "calm-heron")
    assert problems == []
    by_lists = {tuple(list_ids): digest for list_ids, digest in sent}
    assert set(by_lists) == {(LIST,), (OTHER,), ("third.example.org", "fourth.example.org")}
    assert "n-jo" not in by_lists[(LIST,)].body and "gus@example.org" not in by_lists[(LIST,)].body
    assert "Novi n-jo <jo@example>: invalid address" in by_lists[("third.example.org", "fourth.example.org")].body


def test_moderator_changes_have_their_own_lines_and_count():
    day = outcomes(
        (LIST, Action.MODERATE, "kim@example.org", "n-kim", "Kim Chair", None, REASON_MODERATOR, Outcome.APPLIED),
        (LIST, Action.UNMODERATE, "lu@example.org", "n-lu", "Lu Former", None, REASON_NOT_MODERATOR, Outcome.APPLIED))
    digest = compose([LIST], day, NOTHING_LEFT, NO_BOUNCES, NONE_QUARANTINED, "calm-heron", "http://ui/runs/flow-run/1")
    assert digest.subject == f"[novi-mailman] moderators +1 moderators −1 on {LIST} (run calm-heron)"
    assert f"Made moderators (1):\n  Kim Chair <kim@example.org> (Novi n-kim): {REASON_MODERATOR}" in digest.body
    assert f"No longer moderators (1):\n  Lu Former <lu@example.org> (Novi n-lu): {REASON_NOT_MODERATOR}" in digest.body


def test_novi_text_cannot_mention_the_room_or_make_links_in_a_chat_digest(monkeypatch):
    """Issue 27, item 11: `<!channel>` and `<url|text>` in a Novi name reached Slack as is."""
    import contextlib

    import tasks.digest as sending

    said = []

    class Room:  # a saved notification block, as Block.load returns it
        def raise_on_failure(self):
            return contextlib.nullcontext()

        def notify(self, body, subject=None):
            said.append((subject, body))

    monkeypatch.setattr(sending.Block, "load", staticmethod(lambda name: Room()))
    monkeypatch.setattr(sending, "run_url", lambda: None)
    rules = parse_rules({"lists": [{"list_id": LIST, "digest": {"notify_block": "slack-webhook/room",
                                                               "to": ["staff@example.org"]}}]}, "t")
    day = outcomes((LIST, Action.SUBSCRIBE, "eve@example.org", "n-eve", "<!channel> <https://evil.example|Pay here> &",
                    None, "eligible, not on the list", Outcome.APPLIED))
    assert sending.send_digests(rules, day, NOTHING_LEFT, NO_BOUNCES, NONE_QUARANTINED, None, "calm-heron") == []
    ((subject, body),) = said
    assert "<" not in body and ">" not in body and "<" not in subject
    assert "&lt;!channel&gt; &lt;https://evil.example|Pay here&gt; &amp;" in body  # still readable, as text
