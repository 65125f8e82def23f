import pandas as pd
import pytest
import responses
from responses import matchers

from tasks.errors import CredentialsRefused, IncompleteSweep, TransientHTTPError, UnexpectedResponse
from tasks.core.members import members_frame
from tasks.novi import NoviClient, api_base, extract_members
from tests.conftest import novi_record
from tests.fakes import InFlight

SITE = "https://www.example.org"
MEMBERS = f"{SITE}/api/members"


def client(**kw) -> NoviClient:
    return NoviClient(SITE, "k3y/with+chars==", requests_per_second=None, sleep=lambda s: None, **kw)


def page(total, records):
    return {"TotalCount": total, "Results": records}


def recs(n, start=0):
    return [novi_record(f"id-{i:04d}", f"m{i}@example.org") for i in range(start, start + n)]


@pytest.mark.parametrize("given", [
    "https://www.example.org", "https://www.example.org/", "https://www.example.org/api",
    "https://www.example.org/api/", " https://www.example.org/API ",
])
def test_site_url_with_or_without_api(given):
    assert api_base(given).lower() == "https://www.example.org/api"


@pytest.mark.parametrize("given", ["www.example.org", "ftp://example.org", ""])
def test_site_url_must_be_http(given):
    with pytest.raises(ValueError):
        api_base(given)


@responses.activate
def test_key_sent_as_is_and_paged_by_records_received():
    # The server caps pages at 2 although 3 were asked for: offsets follow what arrived.
    everyone = recs(5)
    for offset in (0, 2, 4):
        responses.get(MEMBERS, json=page(5, everyone[offset:offset + 2]),
                      match=[matchers.query_param_matcher({"pageSize": "3", "offset": str(offset)}),
                             matchers.header_matcher({"Authorization": "Basic k3y/with+chars==",
                                                      "Accept": "application/json"})])
    records = client().members(page_size=3)
    assert [r["UniqueID"] for r in records] == [f"id-{i:04d}" for i in range(5)]
    assert len(responses.calls) == 3


@responses.activate
def test_exact_multiple_stops_without_an_extra_call():
    everyone = recs(4)
    responses.get(MEMBERS, json=page(4, everyone[:2]), match=[matchers.query_param_matcher({"pageSize": "2", "offset": "0"})])
    responses.get(MEMBERS, json=page(4, everyone[2:]), match=[matchers.query_param_matcher({"pageSize": "2", "offset": "2"})])
    assert len(client().members(page_size=2)) == 4
    assert len(responses.calls) == 2


@responses.activate
def test_empty_site_is_one_call_and_no_records():
    responses.get(MEMBERS, json=page(0, []))
    assert client().members() == []
    assert len(responses.calls) == 1


@responses.activate
def test_empty_page_before_the_total_fails_the_sweep():
    responses.get(MEMBERS, json=page(5, recs(2)))
    responses.get(MEMBERS, json=page(5, []))
    with pytest.raises(IncompleteSweep, match="empty page at offset 2 after 2 of 5"):
        client().members(page_size=2)


@responses.activate
def test_total_changing_mid_sweep_fails():
    responses.get(MEMBERS, json=page(4, recs(2)))
    responses.get(MEMBERS, json=page(5, recs(2, 2)))
    with pytest.raises(IncompleteSweep, match="changed from 4 to 5"):
        client().members(page_size=2)


def novi_pages(everyone: list[dict], cut: dict[int, int] | None = None) -> InFlight:
    """Novi's member list by offset; `cut` shortens the page at an offset to that many records."""
    def answer(query):
        offset, size = int(query["offset"]), int(query["pageSize"])
        return page(len(everyone), everyone[offset:offset + (cut or {}).get(offset, size)])
    return InFlight(answer)


@responses.activate
def test_whole_pages_are_asked_for_two_at_a_time_each_offset_once():
    served = novi_pages(recs(9))
    responses.add_callback(responses.GET, MEMBERS, callback=served)
    records = client().members(page_size=2)
    assert [r["UniqueID"] for r in records] == [f"id-{i:04d}" for i in range(9)]
    assert sorted(int(q["offset"]) for q in served.asked) == [0, 2, 4, 6, 8] and served.most == 2


@responses.activate
def test_a_page_cut_short_midway_ends_the_asking_ahead_and_the_sweep_stays_whole():
    served = novi_pages(recs(9), cut={2: 1})
    responses.add_callback(responses.GET, MEMBERS, callback=served)
    records = client().members(page_size=2)
    assert sorted(r["UniqueID"] for r in records) == [f"id-{i:04d}" for i in range(9)]
    # offsets 2 and 4 were asked ahead; after the short page the sweep goes on from offset 3,
    # one page at a time: the page at 4 is the one call wasted
    assert sorted(int(q["offset"]) for q in served.asked) == [0, 2, 3, 4, 5, 7]


@responses.activate
def test_a_first_page_cut_short_means_one_page_at_a_time():
    served = novi_pages(recs(6), cut={0: 1})
    responses.add_callback(responses.GET, MEMBERS, callback=served)
    assert len(client().members(page_size=2)) == 6
    assert [int(q["offset"]) for q in served.asked] == [0, 1, 3, 5] and served.most == 1


@responses.activate
def test_records_shifting_between_pages_fail_the_count_check():
    # A record moved: page two repeats id-0001 so only 3 distinct ids arrive for a total of 4.
    responses.get(MEMBERS, json=page(4, recs(2)))
    responses.get(MEMBERS, json=page(4, recs(2, 1)))
    with pytest.raises(IncompleteSweep, match="announced 4 members but the sweep found 3"):
        client().members(page_size=2)


@responses.activate
def test_429_then_success_continues_the_sweep():
    responses.get(MEMBERS, json=page(3, recs(2)))
    responses.get(MEMBERS, status=429, headers={"Retry-After": "1"})
    responses.get(MEMBERS, json=page(3, recs(1, 2)))
    assert len(client().members(page_size=2)) == 3
    assert len(responses.calls) == 3


@responses.activate
def test_500_page_fails_the_sweep_as_transient():
    responses.get(MEMBERS, json=page(3, recs(2)))
    responses.get(MEMBERS, status=500, body="oops")
    with pytest.raises(TransientHTTPError, match="answered 500"):
        client().members(page_size=2)


@pytest.mark.parametrize(("body", "content_type"), [
    ("<html><body>Sign in</body></html>", "text/html"),
    ('{"Results": []}', "application/json"),
    ('{"TotalCount": "7", "Results": []}', "application/json"),
    ('{"TotalCount": 1, "Results": {"a": 1}}', "application/json"),
    ('{"TotalCount": 1, "Results": [1]}', "application/json"),
    ('[]', "application/json"),
], ids=["html-200", "no-total", "string-total", "results-object", "results-not-records", "bare-array"])
@responses.activate
def test_unexpected_bodies_fail_the_extraction(body, content_type):
    responses.get(MEMBERS, body=body, content_type=content_type)
    with pytest.raises(UnexpectedResponse):
        client().members()


@responses.activate
def test_record_without_unique_id_fails():
    bad = novi_record("x", "x@example.org")
    del bad["UniqueID"]
    responses.get(MEMBERS, json=page(1, [bad]))
    with pytest.raises(UnexpectedResponse, match="no UniqueID"):
        client().members()


@responses.activate
def test_refused_key_says_so_without_the_key():
    responses.get(MEMBERS, status=401, body="")
    with pytest.raises(CredentialsRefused) as caught:
        client().member_total()
    assert "refused" in str(caught.value) and "k3y" not in str(caught.value)


@responses.activate
def test_one_member_and_novis_not_found():
    responses.get(f"{MEMBERS}/abc", json=novi_record("abc", "a@example.org"))
    responses.get(f"{MEMBERS}/nobody", body="", status=200)
    responses.get(f"{MEMBERS}/blank", json={"UniqueID": None})
    assert client().member("abc")["UniqueID"] == "abc"
    assert client().member("nobody") is None
    assert client().member("blank") is None


@responses.activate
def test_members_by_id_reads_each_distinct_id_once_and_leaves_out_the_unknown():
    responses.get(f"{MEMBERS}/abc", json=novi_record("abc", "a@example.org"))
    responses.get(f"{MEMBERS}/nobody", body="", status=200)
    found = client().members_by_id([" ABC ", "abc", "nobody", None, "  "])
    assert list(found) == ["abc"] and found["abc"]["UniqueID"] == "abc"
    assert [call.request.url for call in responses.calls] == [f"{MEMBERS}/abc", f"{MEMBERS}/nobody"]


def test_client_side_rate_limit_spaces_requests():
    slept = []
    c = NoviClient(SITE, "k", requests_per_second=10, sleep=slept.append)
    with responses.RequestsMock() as mock:
        mock.get(MEMBERS, json=page(3, recs(1)))
        mock.get(MEMBERS, json=page(3, recs(1, 1)))
        mock.get(MEMBERS, json=page(3, recs(1, 2)))
        c.members(page_size=1)
    # The sleep is fake (the clock does not move), so the second wait is for two slots.
    assert len(slept) == 2 and 0.05 < slept[0] <= 0.1 and 0.15 < slept[1] <= 0.2


# normalisation ----------------------------------------------------------------------------

NORMALISE = [
    ("plain person", novi_record("a", "Ann@Example.org", first="Ann", last="Lee"),
     {"email": "Ann@Example.org", "match_key": "ann@example.org", "display_name": "Ann Lee", "quarantine": None}),
    ("plus returned as space", novi_record("a", "ann lee@example.org"),
     {"email": "ann+lee@example.org", "match_key": "ann+lee@example.org", "quarantine": None}),
    ("null email falls back to AccountEmail", novi_record("a", None, AccountEmail="acct@example.org"),
     {"email": "acct@example.org", "quarantine": None}),
    ("empty email falls back too", novi_record("a", "  ", AccountEmail="acct@example.org"),
     {"email": "acct@example.org"}),
    ("no address at all", novi_record("a", None),
     {"email": None, "quarantine": "no email address in Novi"}),
    ("refused address", novi_record("a", "a@localhost"), {"quarantine": "domain without a dot"}),
    ("company uses Name", novi_record("c", "c@example.org", first=None, last="", person=False, Name="Acme Ltd"),
     {"display_name": "Acme Ltd", "is_person": False, "customer_type": "Company"}),
    ("first name only", novi_record("a", "a@example.org", first="Ann", last=""), {"display_name": "Ann"}),
    ("no names", novi_record("a", "a@example.org", first=None, last=""), {"display_name": ""}),
    ("status and flags", novi_record("a", "a@example.org", status="Grace_Period", active=False, opted_out=True),
     {"status": "grace_period", "active": False, "opted_out": True}),
    ("member type object", novi_record("a", "a@example.org", member_type="Student"),
     {"member_type": "Student", "member_type_id": "type-student"}),
    ("no member type", novi_record("a", "a@example.org", member_type=None), {"member_type": ""}),
    ("groups inline", novi_record("a", "a@example.org", groups=["Board", "Staff"]),
     {"group_names": ["Board", "Staff"], "group_ids": ["grp-board", "grp-staff"]}),
    ("null groups", novi_record("a", "a@example.org", Groups=None), {"group_names": []}),
    ("mistyped Active", novi_record("a", "a@example.org", Active="yes"),
     {"active": False, "quarantine": "Active is not true/false"}),
    ("missing MemberStatus", {k: v for k, v in novi_record("a", "a@example.org").items() if k != "MemberStatus"},
     {"quarantine": "MemberStatus is missing"}),
    ("numeric MemberStatus", novi_record("a", "a@example.org", MemberStatus=3), {"quarantine": "MemberStatus is not text"}),
    ("missing CustomerType", {k: v for k, v in novi_record("a", "a@example.org").items() if k != "CustomerType"},
     {"quarantine": "CustomerType is missing"}),
    ("Groups not a list", novi_record("a", "a@example.org", Groups="Board"), {"quarantine": "Groups is not a list"}),
    ("MemberType number", novi_record("a", "a@example.org", MemberType=7), {"quarantine": "MemberType is not an object"}),
    ("Email not text", novi_record("a", 42), {"quarantine": "Email is not text"}),
    # Novi promises a status on every record: a null one is unreadable, never a lapse (a removal).
    ("null MemberStatus", novi_record("a", "a@example.org", MemberStatus=None),
     {"quarantine": "MemberStatus is empty"}),
    ("blank MemberStatus", novi_record("a", "a@example.org", MemberStatus="  "),
     {"quarantine": "MemberStatus is empty"}),
    ("control characters and length in names", novi_record("a", "a@example.org", first="Ann\r\nBcc: x", last="L" * 300),
     {"display_name": ("Ann Bcc: x " + "L" * 300)[:200]}),
    ("CR/LF in an address", novi_record("a", "a@example.org\r\nBcc: b@example.org"),
     {"quarantine": "control characters in the address"}),
    ("a very long address", novi_record("a", "a" * 5000 + "@example.org"),
     {"quarantine": "address longer than 254 characters"}),
    ("expiry with offset", novi_record("a", "a@example.org", MembershipExpires="2026-12-31T23:00:00.1234567-05:00"),
     {"expires": pd.Timestamp("2027-01-01T04:00:00.1234567", tz="UTC")}),
]


@pytest.mark.parametrize(("record", "expected"), [(r, e) for _, r, e in NORMALISE], ids=[n for n, _, _ in NORMALISE])
def test_normalisation(record, expected):
    row = members_frame([record]).iloc[0]
    for column, value in expected.items():
        got = row[column]
        if isinstance(value, list):
            assert list(got) == value
        elif value is None:
            assert pd.isna(got), (column, got)
        else:
            assert got == value, (column, got)


def test_address_field_is_configurable():
    record = novi_record("a", "work@example.org", PersonalEmail="home@example.org")
    assert members_frame([record], ["PersonalEmail", "Email"]).iloc[0]["email"] == "home@example.org"
    assert members_frame([record], ["Email"]).iloc[0]["email"] == "work@example.org"


@responses.activate
def test_pages_normalised_as_they_arrive_make_the_frame_of_the_whole_sweep():
    """A record read twice (it moved between pages, and changed): the last read counts, where it
    was first seen, as in `NoviClient.members`."""
    everyone = recs(5)
    moved = {**everyone[1], "UniqueID": "ID-0001", "FirstName": "Moved", "MemberStatus": "expired"}
    pages = [everyone[:2], [everyone[2], moved], everyone[3:]]
    for offset, records in zip((0, 2, 4), pages):
        responses.get(MEMBERS, json=page(5, records), match=[matchers.query_param_matcher(
            {"pageSize": "2", "offset": str(offset)})])
    frame = extract_members.fn(client(pages_in_flight=1), 2, ["Email", "AccountEmail"])
    whole = members_frame(client(pages_in_flight=1).members(page_size=2), ["Email", "AccountEmail"])
    pd.testing.assert_frame_equal(frame, whole)
    assert frame["novi_id"].tolist() == ["id-0000", "ID-0001", "id-0002", "id-0003", "id-0004"]
    assert frame.loc[1, "status"] == "expired"


def test_empty_sweep_gives_an_empty_frame_with_every_column():
    frame = members_frame([])
    assert frame.empty and "match_key" in frame.columns and "quarantine" in frame.columns


ACME = novi_record("ACME-1", None, person=False, Name="Acme Ltd")


@responses.activate
def test_a_companys_people_are_read_by_its_name_and_only_its_own_are_kept():
    # If Novi ignored parentName= it would answer everyone: strangers must not be taken for its people.
    own = novi_record("p1", "p1@x.org", ParentCustomerUniqueID="acme-1")
    stranger = novi_record("p2", "p2@x.org", ParentCustomerUniqueID="other")
    responses.get(MEMBERS, json=page(3, [ACME, own, stranger]),
                  match=[matchers.query_param_matcher({"pageSize": "1000", "offset": "0", "parentName": "Acme Ltd"})])
    assert [r["UniqueID"] for r in client().people_of(ACME)] == ["p1"]


@responses.activate
def test_a_company_with_more_people_than_a_page_is_left_to_the_full_sync():
    responses.get(MEMBERS, json=page(5000, recs(1000)))
    with pytest.raises(IncompleteSweep, match="5000 records under the company 'Acme Ltd'"):
        client().people_of(ACME)
