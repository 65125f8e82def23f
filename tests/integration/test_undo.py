"""Undo a run on a real core: a mass lapse applied with the guards lifted, then taken back."""

from __future__ import annotations

import time

import yaml

from flows.undo import undo_run
from tasks.core.schema import Action, Outcome, RunState
from tasks.ledger import Ledger
from tests.integration.helpers import expected, lists_for, sync, wait_for



def test_a_mass_lapse_applied_with_the_guards_lifted_is_undone_as_it_was(world, tmp_path):
    admin, novi, core = world["admin"], world["novi"], world["core"]
    (members,) = lists_for(world, "undo")
    # A list that welcomes people: the undo must still put them back without a word.
    rules = [{"list_id": members, "send_welcome": True}]
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump({"lists": rules}))
    core.clear_messages()
    assert sync(tmp_path, rules, mailman_block=world["mailman_block"])[0].is_completed()
    eligible = expected(novi.records())
    welcomes = lambda: [m for m in core.messages() if str(m["Subject"]).startswith("Welcome")]  # noqa: E731
    assert wait_for(lambda: len(welcomes()) >= len(eligible)), "the first sync's welcome mail did not arrive"

    plain = sorted((r for r in novi.records() if (r["Email"] or "").strip().lower() in eligible
                    and " " not in r["Email"].strip()), key=lambda r: r["UniqueID"])
    lapsing = plain[:40]
    address = {r["UniqueID"]: r["Email"].strip().lower() for r in lapsing}
    reader, poster, quiet, by_hand = (address[r["UniqueID"]] for r in lapsing[:4])
    admin.set_preferences(members, reader, delivery_mode="mime_digests")
    admin.set_preferences(members, poster, moderation_action="hold")
    admin.set_preferences(members, quiet, delivery_status="by_user")
    before = admin.roster(members)
    settings_before = {a: admin.settings(members, a) for a in (reader, poster, quiet)}

    for record in lapsing:
        novi.edit(record["UniqueID"], MemberStatus="expired")
    refused, _ = sync(tmp_path, rules, mailman_block=world["mailman_block"])
    assert refused.name == "Failed" and refused.message.startswith("Refused: ")
    lapse, _ = sync(tmp_path, rules, mailman_block=world["mailman_block"], override_guards=True)
    assert lapse.is_completed(), lapse.message
    assert not set(address.values()) & set(admin.roster(members))
    admin.add_member(members, by_hand, "Added By Hand")  # an owner put one back by hand meanwhile

    lapse_run = lapse.result()["flow_run_id"]
    dry = undo_run(run=lapse_run, mailman_block=world["mailman_block"], novi_block="it-novi", return_state=True)
    assert dry.is_completed() and "nothing written" in dry.message
    assert set(admin.roster(members)) == set(before) - set(address.values()) | {by_hand}

    welcomed = len(welcomes())
    undone = undo_run(run=lapse_run, dry_run=False, rules_path=str(rules_file), mailman_block=world["mailman_block"],
                      novi_block="it-novi", return_state=True)
    assert undone.is_completed(), undone.message
    summary = undone.result()
    assert summary["message"].startswith(f"Undo of {summary['undoes']}: +39 on {members}")
    from prefect import get_client

    with get_client(sync_client=True) as client:  # the runs list says what it is
        ran = client.read_flow_run(summary["flow_run_id"])
    assert ran.name == f"undo-{lapse_run}" and "undo" in ran.tags and "dry-run" not in ran.tags
    (skipped,) = summary["skipped"]
    assert skipped["email"] == by_hand and "on the list again since" in skipped["reason"]

    roster = admin.roster(members)
    # Every address back, with the name it had (Mailman keeps a known address's name, also for
    # the one added back by hand).
    assert roster == before
    assert {a: admin.settings(members, a) for a in (reader, poster, quiet)} == settings_before
    time.sleep(5)  # the runners that sent the first welcomes have had their time
    assert len(welcomes()) == welcomed, "the undo sent welcome mail"

    history = Ledger().history(reader)
    history = history.loc[history["outcome"] == Outcome.APPLIED]  # the refused attempt is there too
    assert list(history["action"]) == [Action.SUBSCRIBE, Action.UNSUBSCRIBE, Action.SUBSCRIBE]
    assert history["reason"].iloc[0].startswith(f"undo of {summary['undoes']}: it removed the address")

    again = undo_run(run=summary["flow_run_id"], dry_run=False, mailman_block=world["mailman_block"],
                     return_state=True)
    assert again.is_failed() and "undoing an undo is refused" in again.message
    twice = undo_run(run=lapse_run, dry_run=False, mailman_block=world["mailman_block"], novi_block="it-novi",
                     return_state=True)
    assert twice.is_completed() and twice.result()["state"] == RunState.COMPLETED
    assert "nothing left to undo" in twice.message and admin.roster(members) == roster


def _plain(novi, eligible: dict) -> list[dict]:
    """Eligible records whose address needs no repair, in a stable order."""
    return sorted((r for r in novi.records() if (r["Email"] or "").strip().lower() in eligible
                   and " " not in r["Email"].strip()), key=lambda r: r["UniqueID"])


def test_an_undo_puts_back_only_whom_novi_still_wants_and_leaves_nothing_unmanaged(world, tmp_path):
    """Issue 27, items 1 and 2: an undone address change left the old address on the list for
    good; an undo re-subscribed people who had opted out (before the run, and since)."""
    admin, novi = world["admin"], world["novi"]
    (members,) = lists_for(world, "undo-consent")
    rules = [{"list_id": members}]
    block = {"mailman_block": world["mailman_block"]}
    assert sync(tmp_path, rules, **block)[0].is_completed()
    renews, chooser, later_chooser, mover = _plain(novi, expected(novi.records()))[:4]
    address = lambda record: record["Email"].strip().lower()  # noqa: E731

    # One run: three lapse, one opts out; one member moves address.
    for record in (renews, later_chooser):
        novi.edit(record["UniqueID"], MemberStatus="expired")
    novi.edit(chooser["UniqueID"], UnsubscribeFromEmails=True)
    moved_to = f"moved-{world['tag']}@{world['domain']}"
    novi.edit(mover["UniqueID"], Email=moved_to)
    run, _ = sync(tmp_path, rules, **block)
    assert run.is_completed(), run.message
    roster = set(admin.roster(members))
    assert not {address(renews), address(chooser), address(later_chooser), address(mover)} & roster
    assert moved_to in roster

    # Since: one renews, another opts out; the mover's new address stays in Novi.
    novi.edit(renews["UniqueID"], MemberStatus="current")
    novi.edit(later_chooser["UniqueID"], UnsubscribeFromEmails=True)
    undone = undo_run(run=run.result()["flow_run_id"], dry_run=False, novi_block="it-novi", return_state=True, **block)
    assert undone.is_completed(), undone.message
    summary = undone.result()
    assert [(c["email"], c["action"]) for c in summary["changes"]] == [(address(renews), Action.SUBSCRIBE)]
    skipped = {s["email"]: s["reason"] for s in summary["skipped"]}
    assert "their own choice, not undone" in skipped[address(chooser)]
    assert "opted out of email in Novi since" in skipped[address(later_chooser)]
    assert f"another address ({moved_to})" in skipped[address(mover)]
    assert "old address is not put back" in skipped[moved_to]
    roster = set(admin.roster(members))
    assert address(renews) in roster and moved_to in roster
    assert not {address(chooser), address(later_chooser), address(mover)} & roster

    # The one put back is managed: when Novi moves them before any sync, the old address goes.
    renewed_at = f"renewed-{world['tag']}@{world['domain']}"
    novi.edit(renews["UniqueID"], Email=renewed_at)
    for _ in range(2):
        again, _ = sync(tmp_path, rules, **block)
        assert again.is_completed(), again.message
    roster = set(admin.roster(members))
    assert address(renews) not in roster and renewed_at in roster
    assert roster == set(expected(novi.records()))  # and nothing else: no address nobody manages
    history = Ledger().history(address(renews))
    assert history["reason"].iloc[0] == "address changed in Novi"
