"""A committee list, a chapter list and a list of company contacts on a real core, following the
sandbox through a day of churn: a term ends, people move chapter, members and a company lapse."""

from __future__ import annotations

from datetime import datetime, timezone


from tests.integration.helpers import expected, lists_for, mail_to, sync



def seated(records: list[dict], committees: set[str], positions: set[str] | None = None) -> dict[str, str]:
    """Who holds a current seat on these committees (in these positions) (address → name),
    worked out here, apart from the planner: any status, active records, a usable address."""
    now = datetime.now(timezone.utc)

    def current(seat: dict) -> bool:
        start = datetime.fromisoformat(seat["StartDate"]) if seat["StartDate"] else None
        end = datetime.fromisoformat(seat["EndDate"]) if seat["EndDate"] else None
        return (seat["CommitteeName"] in committees and (not positions or seat["PositionName"] in positions)
                and (not start or start <= now) and (not end or now < end))

    holders = [r for r in records if any(current(seat) for seat in r.get("Committees") or [])]
    return expected(holders, statuses=tuple({r["MemberStatus"] for r in records}), everyone=records)


def in_chapter(records: list[dict], chapter: str) -> dict[str, str]:
    return expected([r for r in records if ((r.get("CustomFields") or {}).get("Chapter") or {}).get("Value") == chapter],
                    everyone=records)


def contacts(records: list[dict], kinds=("PrimaryContactUniqueId", "BillingContactUniqueId")) -> dict[str, str]:
    """The primary and billing contacts (`kinds`) of member companies (current or in grace,
    active), any status of their own."""
    members = [r for r in records if r["CustomerType"] == "Company" and r["Active"]
               and r["MemberStatus"] in ("current", "grace_period")]
    named = {c[k] for c in members for k in kinds if c[k]}
    return expected([r for r in records if r["UniqueID"] in named and r["CustomerType"] == "Person"],
                    statuses=tuple({r["MemberStatus"] for r in records}), everyone=records)


def test_committee_chapter_and_contacts_lists_follow_a_day_of_churn(world, tmp_path):
    admin, novi = world["admin"], world["novi"]
    committee, chapter, contact = lists_for(world, "committees", "north", "contacts")
    rules = [{"list_id": committee, "committees": ["Finance Committee", "Events Committee"], "statuses": "any"},
             {"list_id": chapter, "custom_fields": {"Chapter": ["North"]}},
             {"list_id": contact, "contacts_of_companies": ["primary", "billing"], "max_eligible_drop": 1}]
    first, _ = sync(tmp_path, rules, mailman_block=world["mailman_block"])
    assert first.is_completed(), first.message
    records = novi.records()
    assert admin.roster(committee) == seated(records, {"Finance Committee", "Events Committee"})
    assert admin.roster(chapter) == in_chapter(records, "North")
    assert admin.roster(contact) == contacts(records)
    assert admin.roster(committee) and admin.roster(chapter) and admin.roster(contact)
    before = set(admin.roster(contact))

    done = novi.churn(end_term=2, change_chapter=6, lapse=4, lapse_company=1)
    assert len(done["end_term"]) == 2 and len(done["change_chapter"]) == 6 and len(done["lapse_company"]) == 1
    day, _ = sync(tmp_path, rules, mailman_block=world["mailman_block"])
    assert day.is_completed(), day.message
    records = novi.records()
    assert admin.roster(committee) == seated(records, {"Finance Committee", "Events Committee"})
    assert admin.roster(chapter) == in_chapter(records, "North")
    assert admin.roster(contact) == contacts(records)
    lapsed = next(r for r in records if r["UniqueID"] == done["lapse_company"][0]["id"])
    gone = {r["Email"].lower() for r in records if r["UniqueID"] == lapsed["PrimaryContactUniqueId"] and r["Email"]}
    assert gone and gone <= before and not gone & set(admin.roster(contact))  # its contact came off


def test_a_committee_list_takes_its_moderators_from_positions_and_never_unmakes_one_it_did_not_make(world, tmp_path):
    admin, novi = world["admin"], world["novi"]
    (committee,) = lists_for(world, "board")
    committees = {"Finance Committee", "Events Committee"}
    rules = [{"list_id": committee, "committees": sorted(committees), "statuses": "any",
              "moderators_from_positions": ["Chair"]}]
    admin.add_role(committee, "editor@example.org", "moderator")  # a moderator by hand
    first, _ = sync(tmp_path, rules, mailman_block=world["mailman_block"])
    assert first.is_completed(), first.message
    records = novi.records()
    chairs = set(seated(records, committees, {"Chair"}))
    assert chairs and admin.with_role(committee, "moderator") == chairs | {"editor@example.org"}

    # One chair steps down to an ordinary seat; the hand-made moderator stays.
    stepping_down = sorted(chairs)[0]
    record = next(r for r in records if (r["Email"] or "").lower() == stepping_down)
    novi.edit(record["UniqueID"], Committees=[{**s, "PositionName": "Member"} for s in record["Committees"]])
    second, _ = sync(tmp_path, rules, mailman_block=world["mailman_block"])
    assert second.is_completed(), second.message
    assert admin.with_role(committee, "moderator") == (chairs - {stepping_down}) | {"editor@example.org"}
    assert stepping_down in admin.roster(committee)  # still on the committee: a member, not a moderator
    again, sent = sync(tmp_path, rules, mailman_block=world["mailman_block"])
    assert again.is_completed() and not [s for s in sent if s[0] != "GET"]  # in step: nothing written
    assert not mail_to(world["core"], world["domain"])  # nobody was mailed for any of it


def test_a_webhook_for_an_unaffiliated_billing_contact_removes_nobody(world, tmp_path):
    """Issue 27, item 3: a company named an unaffiliated current person its billing contact; the
    full sync subscribed them, their webhook's member run removed them ("not a contact of a member
    company": it read only their own, absent, parent company), the next full sync added them back."""
    from flows.member import sync_member

    admin, novi = world["admin"], world["novi"]
    (contact,) = lists_for(world, "billing")
    rules = [{"list_id": contact, "contacts_of_companies": "billing", "max_eligible_drop": 1}]
    records = novi.records()
    company = next(r for r in records if r["CustomerType"] == "Company" and r["Active"]
                   and r["MemberStatus"] in ("current", "grace_period"))
    person = next(r for r in sorted(records, key=lambda r: r["UniqueID"])
                  if r["CustomerType"] == "Person" and not r.get("ParentCustomerUniqueID") and r["Active"]
                  and r["MemberStatus"] == "current" and (r["Email"] or "").strip() and " " not in r["Email"].strip()
                  and not r["UnsubscribeFromEmails"])
    novi.edit(company["UniqueID"], BillingContactUniqueId=person["UniqueID"])
    address = person["Email"].strip().lower()

    first, _ = sync(tmp_path, rules, mailman_block=world["mailman_block"])
    assert first.is_completed(), first.message
    assert address in admin.roster(contact)
    assert admin.roster(contact) == contacts(novi.records(), kinds=("BillingContactUniqueId",))

    webhook = sync_member(member_ids=[person["UniqueID"]], rules_path=str(tmp_path / "rules.yaml"),
                          novi_block="it-novi", mailman_block=world["mailman_block"], return_state=True)
    assert webhook.is_completed(), webhook.message
    assert address in admin.roster(contact)  # not removed on less than the full sync reads
    assert not webhook.result()["outcomes"]
    again, sent = sync(tmp_path, rules, mailman_block=world["mailman_block"])
    assert again.is_completed() and not sent, again.message  # no flap: nothing to add back
