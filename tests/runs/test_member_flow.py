"""The one-member sync reaches the outcome the full sync reaches on the same data."""

from __future__ import annotations

import copy
import sqlite3

import pytest
import responses

from flows.member import sync_member
from flows.sync import sync_lists
from tasks.blocks import MailmanCredentials, NoviCredentials
from tasks.report import MEMBER_SUMMARY_KEY as SUMMARY_KEY
from tests.conftest import last_run, novi_record
from tests.fakes import MAILMAN_REST, NOVI_SITE, FakeMailman, FakeNovi


LIST = "members.example.org"


def guid(n: int) -> str:
    return f"5a1d0000-0000-4000-8000-{n:012d}"


@pytest.fixture(scope="module")
def member_blocks(prefect_server):
    NoviCredentials(site_url=NOVI_SITE, api_key="member-key").save("m-novi", overwrite=True)
    MailmanCredentials(rest_url=MAILMAN_REST, password="member-pw").save("m-mailman", overwrite=True)


def full(novi, mailman, tmp_path, rules):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        novi.install(mock)
        mailman.install(mock)
        return sync_lists(rules_path=str(rules), novi_block="m-novi", mailman_block="m-mailman",
                          reports_dir=str(tmp_path), return_state=True)


def one(novi, mailman, member_ids, rules, **options):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        novi.install(mock)
        mailman.install(mock)
        state = sync_member(member_ids=member_ids, rules_path=str(rules), novi_block="m-novi",
                            mailman_block="m-mailman", return_state=True, **options)
        reads = [c.request.url for c in mock.calls if c.request.method == "GET"]
    return state, reads


def population():
    records = [novi_record(guid(i), f"m{i}@example.org", first="Mem", last=str(i)) for i in range(20)]
    records[3]["MemberStatus"] = "expired"  # not on the list at first
    # A member company (no address of its own) naming m10 its primary and m11 its billing
    # contact; m10 to m12 and m21 are its people, m21 a member through it alone.
    records.append(novi_record(guid(20), None, person=False, first=None, last="", Name="Acme Ltd",
                               PrimaryContactUniqueId=guid(10), BillingContactUniqueId=guid(11)))
    records.append(novi_record(guid(21), "m21@example.org", first="Mem", last="21", status="inheriting"))
    for i in (10, 11, 12, 21):
        records[i]["ParentCustomerUniqueID"] = guid(20).upper()  # ids in any case
    return records


def lapse(r):
    r["MemberStatus"] = "expired"


def change(**fields):
    return lambda r: r.update(fields)


SCENARIOS = [
    ("subscribe-renewed", 3, change(MemberStatus="current"), {}),
    ("lapse-unsubscribe", 5, lapse, {}),
    ("lapse-hold", 5, lapse, {"lapsed": "hold"}),
    ("lapse-keep", 5, lapse, {"lapsed": "keep"}),
    ("rename", 6, change(LastName="Renamed"), {}),
    ("address-change", 7, change(Email="moved7@example.org"), {}),
    ("opt-out", 8, change(UnsubscribeFromEmails=True), {}),
    ("inactive", 9, change(Active=False), {}),
    ("committee-seat-begins", 4, change(Committees=[{
        "CommitteeUniqueID": "c1", "CommitteeName": "Finance", "PositionName": "Chair",
        "StartDate": "2025-01-01T00:00:00-05:00", "EndDate": None}]),
     {"committees": ["Finance"], "statuses": "any", "allow_empty": True}),
    ("chapter-change", 6, change(CustomFields={"Chapter": {"CustomFieldName": "Chapter", "Value": "North"}}),
     {"custom_fields": {"Chapter": ["North"]}, "allow_empty": True}),
    # Company routing: the webhook names the company (its contacts follow) or a person (their company is read).
    ("contacts-company-lapses", 20, lapse,
     {"contacts_of_companies": "primary", "allow_empty": True, "max_eligible_drop": 1}),
    ("contacts-primary-changes", 20, change(PrimaryContactUniqueId=guid(12)), {"contacts_of_companies": "primary"}),
    ("contacts-all-company-lapses", 20, lapse,
     {"contacts_of_companies": "all", "allow_empty": True, "max_eligible_drop": 1}),
    ("inheriting-company-lapses", (20, 21), lapse, {"inheriting": "include"}),
    ("inheriting-person-joins-company", 3, change(MemberStatus="inheriting", ParentCustomerUniqueID=guid(20)),
     {"inheriting": "include"}),
]


# Whether someone is a company's contact needs every company, and Novi cannot be asked which
# companies name a person: a member run adds what the full sync adds, and leaves its removals
# to the full sync (issue 27: a webhook removed a contact the full sync then added back).
LEFT_TO_THE_FULL_SYNC = {"contacts-company-lapses", "contacts-primary-changes", "contacts-all-company-lapses"}


@pytest.mark.parametrize(("name", "index", "mutate", "rule"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_member_sync_reaches_what_the_full_sync_reaches(name, index, mutate, rule, member_blocks, tmp_path,
                                                        isolated_ledger, monkeypatch):
    rules = tmp_path / "rules.yaml"
    import yaml
    rules.write_text(yaml.safe_dump({"lists": [{"list_id": LIST, **rule}]}))
    novi, mailman = FakeNovi(population()), FakeMailman({LIST: {"staff@example.org": "Staff"}})
    assert full(novi, mailman, tmp_path, rules).is_completed()
    mutated, synced = index if isinstance(index, tuple) else (index, index)
    mutate(novi.records[mutated])

    # the same data twice: rosters and ledger copied before either run
    twin = copy.deepcopy(mailman)
    twin_ledger = tmp_path / "twin-ledger.sqlite"
    with sqlite3.connect(isolated_ledger) as source, sqlite3.connect(twin_ledger) as copy_:
        source.backup(copy_)  # WAL mode: a file copy could miss the last run
    by_full = full(novi, mailman, tmp_path, rules)
    assert by_full.is_completed(), by_full.message
    if rule.get("lapsed") != "keep":  # a kept member is the one scenario with nothing to write
        assert by_full.result()["outcomes"].get("applied"), name  # the scenario does change the list
    monkeypatch.setenv("NOVI_MAILMAN_LEDGER", str(twin_ledger))
    before = copy.deepcopy(twin.rosters)
    state, reads = one(FakeNovi(copy.deepcopy(novi.records)), twin, [guid(synced)], rules)
    assert state.is_completed(), state.message
    if name in LEFT_TO_THE_FULL_SYNC:
        removed = set(before[LIST]) - set(mailman.rosters[LIST])
        assert removed and set(twin.rosters[LIST]) == set(mailman.rosters[LIST]) | removed
        assert full(FakeNovi(copy.deepcopy(novi.records)), twin, tmp_path, rules).is_completed()
    assert twin.rosters == mailman.rosters
    assert not any("roster/member" in url for url in reads)  # no whole roster was read
    assert not any("offset=" in url and "email=" not in url and "parentName=" not in url
                   for url in reads)  # nor the whole of Novi


def test_member_not_found_removes_nobody_and_is_reported(member_blocks, tmp_path):
    import yaml

    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"lists": [{"list_id": LIST}]}))
    novi, mailman = FakeNovi(population()), FakeMailman({LIST: {}})
    assert full(novi, mailman, tmp_path, rules).is_completed()
    before = copy.deepcopy(mailman.rosters)
    state, _ = one(novi, mailman, [guid(999)], rules)
    assert state.is_completed()
    summary = state.result()
    assert summary["not_found"] == [guid(999)] and "left to the full sync" in summary["message"]
    assert mailman.rosters == before and not mailman.writes.get("mass_unsubscribe", 0) > 1


def test_a_duplicate_address_resolves_as_in_the_full_sync(member_blocks, tmp_path):
    import yaml
    from prefect.artifacts import Artifact

    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"lists": [{"list_id": LIST}]}))
    records = population()
    records.append(novi_record(guid(50), "m4@example.org", status="expired"))  # a lapsed twin of member 4
    novi, mailman = FakeNovi(records), FakeMailman({LIST: {}})
    assert full(novi, mailman, tmp_path, rules).is_completed()
    state, _ = one(novi, mailman, [guid(50)], rules)  # the lapsed twin changes: member 4 must stay
    assert state.is_completed() and "m4@example.org" in mailman.names(LIST)
    assert "Member sync" in Artifact.get(SUMMARY_KEY).data


def test_member_ids_must_be_guids_and_a_bad_one_is_one_line(member_blocks, caplog):
    state = sync_member(member_ids=["not-a-guid"], list_id=LIST, return_state=True)
    assert state.is_failed() and state.message == "member_ids must be 1 to 1000 Novi UniqueIDs (1 are not)"
    assert "Traceback" not in caplog.text


def test_a_wildcard_address_in_novi_looks_up_and_touches_only_itself(member_blocks, tmp_path):
    """`*@example.org` on a mirror list: once planned as the removal of every member of the
    domain (21 of 21 in the trial). The lookup is exact, the record quarantined, nobody goes."""
    import yaml

    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"lists": [{"list_id": LIST, "scope": "mirror"}]}))
    records = population()
    novi, mailman = FakeNovi(records), FakeMailman({LIST: {"hand-added@example.org": "Staff"}})
    records.append(novi_record(guid(77), "*@example.org"))
    before = {e for e in mailman.rosters[LIST]}
    state, reads = one(novi, mailman, [guid(77)], rules)
    assert state.is_completed(), state.message
    assert set(mailman.rosters[LIST]) == before and not mailman.writes
    assert not any("/3.1/" in url and "%2A" in url for url in reads)  # never asked of Mailman (it answers 500)
    assert state.result()["quarantine_reasons"] == {"a * in the address (a wildcard to Mailman's search)": 1}


def test_a_member_sync_that_finds_its_members_gone_from_mailman_is_refused(member_blocks, tmp_path):
    """Mailman answering "not a member" for every lookup once must not teach the ledger that
    20 members left by themselves."""
    import yaml

    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"lists": [{"list_id": LIST}]}))
    novi, mailman = FakeNovi(population()), FakeMailman({LIST: {}})
    assert full(novi, mailman, tmp_path, rules).is_completed()
    from tasks.ledger import Ledger
    remembered = Ledger().read([LIST])
    full_roster = mailman.rosters[LIST]
    mailman.rosters[LIST] = {}
    state, _ = one(novi, mailman, [guid(i) for i in range(20)], rules)
    assert state.is_failed() and "the roster lacks 19 of the 19 members" in state.message
    assert len(Ledger().read([LIST])) == len(remembered) and set(Ledger().read([LIST])["status"]) == {"member"}
    mailman.rosters[LIST] = full_roster


def test_a_member_sync_over_max_removals_is_refused_and_approving_or_lifting_the_guards_applies_it(member_blocks, tmp_path):
    """The member run once had its own inline guard and message; it now ends as the full run
    does: refused in the UI and the ledger, nothing written, and liftable for one run."""
    import yaml

    from tasks.ledger import Ledger

    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"lists": [{"list_id": LIST, "max_removals": 1}]}))
    novi, mailman = FakeNovi(population()), FakeMailman({LIST: {}})
    assert full(novi, mailman, tmp_path, rules).is_completed()
    lapse(novi.records[5])
    lapse(novi.records[6])
    writes = dict(mailman.writes)

    state, _ = one(novi, mailman, [guid(5), guid(6)], rules)
    assert state.is_failed() and state.name == "Failed" and state.message.startswith("Refused: ")
    assert state.message.startswith(f"Refused: {LIST}: 2 removals planned, more than max_removals = 1.")
    fingerprint = state.result(raise_on_failure=False).summary["plan_fingerprint"]
    assert "Nothing was written" in state.message and f"approve = {fingerprint}" in state.message
    assert {"m5@example.org", "m6@example.org"} <= set(mailman.names(LIST)) and mailman.writes == writes
    refused = state.result(raise_on_failure=False).summary
    assert refused["state"] == "refused" and refused["guards"] and refused["members"] == [guid(5), guid(6)]
    run = last_run(Ledger(), state="refused", kind="member")
    assert run is not None and run["changes"] == 2 and run["failed"] == 0
    assert set(Ledger().read([LIST]).query("match_key in ['m5@example.org', 'm6@example.org']")["status"]) == {
        "member"}

    approved, _ = one(novi, mailman, [guid(5), guid(6)], rules, approve=fingerprint)
    assert approved.is_completed(), approved.message
    assert approved.message == (f"2 members: −2 on {LIST} (2 changes applied); plan {fingerprint} applied as "
                                "approved by the operator")
    assert not {"m5@example.org", "m6@example.org"} & set(mailman.names(LIST))

    lapse(novi.records[7])
    lapse(novi.records[8])
    lifted, _ = one(novi, mailman, [guid(7), guid(8)], rules, override_guards=True)
    assert lifted.is_completed(), lifted.message
    assert lifted.result()["guards_overridden"] is True
    assert not {"m7@example.org", "m8@example.org"} & set(mailman.names(LIST))


def test_a_member_sync_whose_only_member_lapsed_is_not_refused_as_an_empty_source(member_blocks, tmp_path):
    """A few members are not the list: no eligible member among them says nothing."""
    import yaml

    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"lists": [{"list_id": LIST}]}))
    novi, mailman = FakeNovi(population()), FakeMailman({LIST: {}})
    assert full(novi, mailman, tmp_path, rules).is_completed()
    lapse(novi.records[5])
    state, _ = one(novi, mailman, [guid(5)], rules)
    assert state.is_completed(), state.message
    assert state.result()["lists"][0]["eligible"] == 0
    assert "m5@example.org" not in mailman.names(LIST)


def test_a_member_sync_honours_bans_as_the_full_sync_does(member_blocks, tmp_path):
    import yaml

    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"lists": [{"list_id": LIST}]}))
    records = population()
    novi, mailman = FakeNovi(records), FakeMailman({LIST: {}})
    assert full(novi, mailman, tmp_path, rules).is_completed()
    mailman.bans = {None: [r"^m3@example\.org$"]}
    records[3]["MemberStatus"] = "current"  # renews, but is banned everywhere
    state, _ = one(novi, mailman, [guid(3)], rules)
    assert state.is_completed(), state.message
    assert "m3@example.org" not in mailman.names(LIST) and mailman.writes["subscribe"] == 19
    assert state.result()["lists"][0]["left_alone"] == {"banned in Mailman": 1}


def test_a_webhook_never_removes_a_contact_the_full_sync_keeps(member_blocks, tmp_path):
    """Issue 27, item 3: a company names an unaffiliated person (no parent company) its billing
    contact; the full sync subscribes them; their own webhook read only their (absent) parent
    company and removed them, and every full sync added them back: a flap on every webhook."""
    import yaml

    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"lists": [{"list_id": LIST, "contacts_of_companies": "billing"}]}))
    records = population()
    records[20]["BillingContactUniqueId"] = guid(5)  # m5 stands alone: no ParentCustomerUniqueID
    assert records[5]["ParentCustomerUniqueID"] is None
    novi, mailman = FakeNovi(records), FakeMailman({LIST: {}})
    assert full(novi, mailman, tmp_path, rules).is_completed()
    assert "m5@example.org" in mailman.rosters[LIST]
    state, _ = one(novi, mailman, [guid(5)], rules)
    assert state.is_completed(), state.message
    assert "m5@example.org" in mailman.rosters[LIST]
    assert not state.result()["outcomes"]  # nothing written
    again = full(novi, mailman, tmp_path, rules)
    assert again.message.startswith("No changes"), again.message  # no flap: the full sync has nothing to add back


def test_a_webhook_after_a_run_that_died_settles_it_and_plans_only_its_members(member_blocks, tmp_path):
    """Review of issue 28: the member run read the dead run's addresses into its plan, where
    Novi's records for them were missing: on a mirror list it removed them as "not in Novi"."""
    import yaml
    from datetime import datetime, timezone

    from tasks.core.schema import Action, RunState
    from tasks.ledger import Journal, Lease, Ledger

    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"lists": [{"list_id": LIST, "scope": "mirror"}]}))
    novi, mailman = FakeNovi(population()), FakeMailman({LIST: {}})
    assert full(novi, mailman, tmp_path, rules).is_completed()
    # A run died after Mailman took its subscribe of m3 (renewed meanwhile) and before it recorded it
    novi.records[3]["MemberStatus"] = "current"
    mailman.rosters[LIST]["m3@example.org"] = mailman.new_member(LIST, "m3@example.org", "Mem 3")
    dead = Journal(Ledger(), Lease([LIST], "dead-lease"), "flow-dead", "dead-otter", "full",
                   datetime.now(timezone.utc))
    dead.intend("b1", Action.SUBSCRIBE, [{"list_id": LIST, "email": "m3@example.org", "match_key": "m3@example.org",
                                          "novi_id": guid(3), "display_name": "Mem 3", "previous": None,
                                          "reason": "eligible, not on the list", "delivery_mode": "regular",
                                          "moderation_action": "", "delivery_status": "enabled"}])
    before = set(mailman.rosters[LIST])
    state, _ = one(novi, mailman, [guid(6)], rules)
    assert state.is_completed(), state.message
    assert set(mailman.rosters[LIST]) == before  # nobody removed on the dead run's account
    assert not state.result()["outcomes"]
    ledger = Ledger()
    assert last_run(ledger, RunState.CRASHED)["message"].startswith("crashed mid-apply")
    (row,) = ledger.read([LIST], match_keys=["m3@example.org"]).to_dict("records")
    assert row["novi_id"] == guid(3) and row["how"] == "subscribed"


def test_every_summary_is_its_documented_contract(member_blocks, tmp_path):
    """Issue 30: the summary is what `--json` prints and users script against; its keys are
    named once (tasks.core.schema.RunSummary, UndoSummary) and every kind of run keeps to them."""
    import yaml

    from flows.undo import undo_run
    from tasks.core.schema import ListSummary, RunSummary, UndoSummary

    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"lists": [{"list_id": LIST}]}))
    novi, mailman = FakeNovi(population()), FakeMailman({LIST: {}})
    synced = full(novi, mailman, tmp_path, rules).result()
    assert set(synced) == RunSummary.__required_keys__
    assert synced["lists"] and all(set(item) == set(ListSummary.__annotations__) for item in synced["lists"])
    lapse(novi.records[5])
    member, _ = one(novi, mailman, [guid(5)], rules)
    assert set(member.result()) == RunSummary.__required_keys__ | RunSummary.__optional_keys__
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        novi.install(mock)
        mailman.install(mock)
        # the first run subscribed everyone: its undo removes them all, which the guards refuse
        undone = undo_run(run=synced["flow_run_id"], dry_run=True, override_guards=True, mailman_block="m-mailman",
                          novi_block="m-novi", return_state=True)
    assert undone.is_completed(), undone.message
    summary = undone.result()
    assert summary["changes"] and set(summary) == UndoSummary.__required_keys__ | UndoSummary.__optional_keys__
