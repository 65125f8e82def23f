import json
from urllib.parse import parse_qs, urlsplit

import pytest
import responses
from responses import matchers

from tasks.errors import CredentialsRefused, IncompleteSweep, TransientHTTPError, UnexpectedResponse
from tasks.core.schema import Outcome, dot_list_id
from tasks.mailman import MailmanClient, apply_changes, rest_base
from tests.fakes import InFlight

ALREADY, APPLIED, FAILED, PENDING = Outcome.ALREADY, Outcome.APPLIED, Outcome.FAILED, Outcome.PENDING

REST = "http://127.0.0.1:8001/3.1"
LIST = "members.example.org"


def client() -> MailmanClient:
    return MailmanClient("http://127.0.0.1:8001", "restadmin", "s3cret-pw", sleep=lambda s: None)


def row(email, name="", member_id=None, mail=False, list_id=LIST) -> dict:
    return {"list_id": list_id, "email": email, "display_name": name, "member_id": member_id, "mail": mail}


def form(call) -> dict:
    return {k: v if len(v) > 1 else v[0] for k, v in parse_qs(call.request.body).items()}


@pytest.mark.parametrize(("given", "expected"), [
    ("members@example.org", "members.example.org"), ("members.example.org", "members.example.org"),
    (" Members@Example.ORG ", "members.example.org"),
])
def test_list_ids_become_dot_form(given, expected):
    assert dot_list_id(given) == expected


@pytest.mark.parametrize("given", ["", "a@b@c", "two words"])
def test_bad_list_ids_are_refused(given):
    with pytest.raises(ValueError):
        dot_list_id(given)


@pytest.mark.parametrize("given", ["http://h:8001", "http://h:8001/", "http://h:8001/3.1", "http://h:8001/3.1/"])
def test_rest_url_with_or_without_version(given):
    assert rest_base(given) == "http://h:8001/3.1"


def roster_page(total, emails, start=0):
    body = {"start": start, "total_size": total}
    if emails:
        body["entries"] = [{"email": e, "display_name": e.split("@")[0].title(), "member_id": f"id-{e}"} for e in emails]
    return body


def find_matcher(status, page, count):
    return matchers.query_param_matcher({"list_id": LIST, "role": "member", "delivery_status": status,
                                         "count": str(count), "page": str(page)})


ROSTER_QUERY = ("fields=email&fields=display_name&fields=member_id&fields=moderation_action"
               "&fields=subscription_mode&fields=user")


@responses.activate
def test_roster_sends_count_page_and_fields_and_finds_bounced_and_held_members():
    url = f"{REST}/lists/{LIST}/roster/member"
    first = roster_page(3, ["a@x.org", "b@x.org"])
    first["entries"][0].update(moderation_action="hold")
    # Every address has a user; a membership held through it (Postorius) says so (issue 32)
    first["entries"][0].update(subscription_mode="as_user", user=f"{REST}/users/0a1b2c")
    first["entries"][1].update(subscription_mode="as_address", user=f"{REST}/users/ffee")
    for page, body in ((1, first), (2, roster_page(3, ["c@x.org"], start=2))):
        responses.get(url, json=body, match=[matchers.query_string_matcher(f"count=2&page={page}&{ROSTER_QUERY}")])
    for status, member in (("by_moderator", "id-b@x.org"), ("by_bounces", "id-c@x.org")):
        body = {"start": 0, "total_size": 1, "entries": [{"member_id": member}]} if member else \
            {"start": 0, "total_size": 0}
        responses.get(f"{REST}/members/find", json=body, match=[find_matcher(status, 1, 2)])
    frame = client().roster("members@example.org", page_size=2)
    assert frame["email"].tolist() == ["a@x.org", "b@x.org", "c@x.org"]
    assert frame["delivery_status"].tolist() == ["enabled", "by_moderator", "by_bounces"]
    assert frame["delivery_mode"].isna().all()  # not read with the roster (see ROSTER_FIELDS)
    assert frame["moderation_action"].tolist() == ["hold", "", ""]
    assert frame["account"].fillna("").tolist() == ["0a1b2c", "", ""]
    assert set(frame["list_id"]) == {LIST}
    assert responses.calls[0].request.headers["Authorization"].startswith("Basic ")


@responses.activate
def test_a_roster_without_holds_skips_the_held_member_search_only():
    responses.get(f"{REST}/lists/{LIST}/roster/member", json=roster_page(2, ["a@x.org", "b@x.org"]))
    find = responses.get(f"{REST}/members/find", json={"start": 0, "total_size": 1, "entries": [{"member_id": "x"}]})
    frame = client().roster(LIST, with_held=False)
    assert frame["email"].tolist() == ["a@x.org", "b@x.org"] and set(frame["delivery_status"]) == {"enabled"}
    asked = sorted(parse_qs(urlsplit(c.request.url).query)["delivery_status"][0] for c in responses.calls
                   if "members/find" in c.request.url)
    assert find.call_count == 1 and asked == ["by_bounces"]


@responses.activate
def test_empty_roster_has_no_entries_key():
    responses.get(f"{REST}/lists/{LIST}/roster/member", json={"start": 0, "total_size": 0})
    responses.get(f"{REST}/members/find", json={"start": 0, "total_size": 0})
    frame = client().roster(LIST)
    assert frame.empty and list(frame.columns)[:3] == ["list_id", "email", "match_key"]
    assert len(responses.calls) == 1  # nobody to search for a delivery status


@responses.activate
def test_roster_page_missing_before_the_total_fails():
    url = f"{REST}/lists/{LIST}/roster/member"
    responses.get(url, json=roster_page(3, ["a@x.org", "b@x.org"]))
    responses.get(url, json={"start": 2, "total_size": 3})
    with pytest.raises(IncompleteSweep, match="empty page 2 after 2 of 3"):
        client().roster(LIST, page_size=2)


@responses.activate
def test_roster_total_changing_fails():
    url = f"{REST}/lists/{LIST}/roster/member"
    responses.get(url, json=roster_page(3, ["a@x.org", "b@x.org"]))
    responses.get(url, json=roster_page(4, ["c@x.org", "d@x.org"]))
    with pytest.raises(IncompleteSweep, match="changed from 3 to 4"):
        client().roster(LIST, page_size=2)


def paged_roster(emails: list[str], size: int, totals: dict[int, int] | None = None) -> InFlight:
    """A roster served by page number; `totals` gives the total a page announces instead (a
    member added while the list is read)."""
    def answer(query):
        page = int(query["page"])
        return roster_page((totals or {}).get(page, len(emails)), emails[(page - 1) * size:page * size],
                           start=(page - 1) * size)
    return InFlight(answer)


@responses.activate
def test_roster_pages_are_read_two_at_a_time_and_come_out_in_order():
    emails = [f"m{i:02d}@x.org" for i in range(9)]
    served = paged_roster(emails, size=2)
    responses.add_callback(responses.GET, f"{REST}/lists/{LIST}/roster/member", callback=served)
    responses.get(f"{REST}/members/find", json={"start": 0, "total_size": 0})
    frame = client().roster(LIST, page_size=2, with_held=False)
    assert frame["email"].tolist() == emails
    assert sorted(int(q["page"]) for q in served.asked) == [1, 2, 3, 4, 5]  # each once: no call beyond the bound
    assert served.most == 2


@responses.activate
def test_a_roster_total_changing_mid_read_fails_with_pages_in_flight():
    emails = [f"m{i:02d}@x.org" for i in range(9)]
    served = paged_roster(emails, size=2, totals={4: 10})
    responses.add_callback(responses.GET, f"{REST}/lists/{LIST}/roster/member", callback=served)
    responses.get(f"{REST}/members/find", json={"start": 0, "total_size": 0})
    with pytest.raises(IncompleteSweep, match="changed from 9 to 10"):
        client().roster(LIST, page_size=2, with_held=False)
    assert served.now == 0  # nothing still asking once the read has failed


@responses.activate
def test_roster_read_failure_is_transient_and_redacted():
    responses.get(f"{REST}/lists/{LIST}/roster/member", status=500, json={"title": "500 Internal Server Error"})
    with pytest.raises(TransientHTTPError) as caught:
        client().roster(LIST)
    assert "s3cret" not in str(caught.value)
    assert len(responses.calls) == 4  # the read and its three retries


@pytest.mark.parametrize(("version", "untested_version"), [("GNU Mailman 3.3.10 (Tom Sawyer)", False),
                                                       ("GNU Mailman 3.3.8 (Tom Sawyer)", False),
                                                       ("GNU Mailman 3.3.5 (Tom Sawyer)", True)])
@responses.activate
def test_a_supported_core_answers_its_version(version, untested_version):
    from tasks.mailman import untested

    responses.get(f"{REST}/system/versions", json={"mailman_version": version})
    assert client().supported_version() == version and untested(version) is untested_version


@pytest.mark.parametrize("version", ["GNU Mailman 3.3.3 (Tom Sawyer)", "GNU Mailman 3.2.2 (La Villa Strangiato)"])
@responses.activate
def test_a_core_too_old_is_refused_naming_the_feature_it_lacks(version):
    from tasks.errors import UnsupportedMailman

    responses.get(f"{REST}/system/versions", json={"mailman_version": version})
    with pytest.raises(UnsupportedMailman, match=r"older than 3\.3\.4.*digest.*upgrade the Mailman core"):
        client().supported_version()


@responses.activate
def test_a_subscribe_restores_digest_stopped_delivery_and_moderation():
    responses.post(f"{REST}/members", status=201, headers={"Location": f"{REST}/members/new1"})
    responses.get(f"{REST}/lists/{LIST}/member/jane%40x.org", json={"email": "jane@x.org", "member_id": "new1"})
    patch = responses.patch(f"{REST}/members/new1", status=204)
    change = {"list_id": LIST, "email": "jane@x.org", "display_name": "Jane", "mail": False, "request": None,
              "delivery_mode": "mime_digests", "moderation_action": "hold", "delivery_status": "by_user"}
    assert apply_changes(client(), "subscribe", [change])[0]["outcome"] == APPLIED
    sent = form(responses.calls[0])
    assert sent["delivery_mode"] == "mime_digests" and sent["delivery_status"] == "by_user"
    assert patch.call_count == 1 and form(patch.calls[0]) == {"moderation_action": "hold"}


@responses.activate
def test_a_subscribe_with_defaults_sends_no_preference_and_no_patch():
    responses.post(f"{REST}/members", status=201)
    change = {"list_id": LIST, "email": "jane@x.org", "display_name": "Jane", "mail": False, "request": None,
              "delivery_mode": "regular", "moderation_action": "", "delivery_status": "enabled"}
    assert apply_changes(client(), "subscribe", [change])[0]["outcome"] == APPLIED
    assert len(responses.calls) == 1
    assert not {"delivery_mode", "delivery_status"} & set(form(responses.calls[0]))


@responses.activate
def test_wrong_password():
    responses.get(f"{REST}/system/versions", status=401, json={"title": "401 Unauthorized"})
    with pytest.raises(CredentialsRefused, match="refused"):
        client().version()


SUBSCRIBE_ANSWERS = [
    (201, None, APPLIED),
    (409, {"title": "409 Conflict", "description": "Member already subscribed"}, ALREADY),
    (409, {"title": "409 Conflict", "description": "Subscription request already pending"}, PENDING),
    (202, {"token": "t", "token_owner": "moderator"}, PENDING),
    (400, {"title": "400 Bad Request", "description": 'Invalid Parameter "subscriber": .'}, FAILED),
]


@pytest.mark.parametrize(("status", "body", "outcome"), SUBSCRIBE_ANSWERS,
                         ids=["201", "409-member", "409-pending", "202", "400"])
@responses.activate
def test_subscribe_sends_pre_flags_and_no_welcome(status, body, outcome):
    responses.post(f"{REST}/members", status=status, json=body)
    got, detail = client().subscribe(LIST, "Jane+x@Example.org", "Jane X", welcome=False)
    assert got == outcome
    sent = form(responses.calls[0])
    assert sent == {"list_id": LIST, "subscriber": "Jane+x@Example.org", "display_name": "Jane X",
                    "pre_verified": "true", "pre_confirmed": "true", "pre_approved": "true",
                    "send_welcome_message": "false"}
    if status == 400:
        assert "Invalid Parameter" in detail


@responses.activate
def test_subscribe_asks_for_welcome_only_when_the_rule_does():
    responses.post(f"{REST}/members", status=201)
    client().subscribe(LIST, "a@x.org", "A", welcome=True)
    assert form(responses.calls[0])["send_welcome_message"] == "true"


@responses.activate
def test_mass_unsubscribe_is_lower_cased_json():
    responses.delete(f"{REST}/lists/{LIST}/roster/member", json={"a@x.org": True, "b@x.org": False})
    assert client().unsubscribe_many(LIST, ["A@X.org", "b@x.org"]) == {"a@x.org": True, "b@x.org": False}
    assert json.loads(responses.calls[0].request.body) == {"emails": ["a@x.org", "b@x.org"]}


@responses.activate
def test_rename_patches_the_address():
    responses.patch(f"{REST}/addresses/a%2Bb%40x.org", status=204)
    assert client().rename("a+b@x.org", "New Name") == (APPLIED, "")
    assert form(responses.calls[0]) == {"display_name": "New Name"}


@responses.activate
def test_rename_of_a_membership_held_through_an_account_patches_the_account():
    """Measured on 3.3.10: the roster shows the user's name for such a membership, and a PATCH
    on the address leaves it as it was; on the user it changes."""
    responses.patch(f"{REST}/users/0a1b2c", status=204)
    assert client().rename("nick@x.org", "Nicholas Lee", "0a1b2c") == (APPLIED, "")
    assert form(responses.calls[0]) == {"display_name": "Nicholas Lee"}


@pytest.mark.parametrize(("action", "status"), [("hold", "by_moderator"), ("release", "enabled")])
@responses.activate
def test_hold_and_release_patch_preferences(action, status):
    responses.patch(f"{REST}/members/m1/preferences", status=204)
    rows = [row("a@x.org", "A", "m1")]
    assert apply_changes(client(), action, rows) == [{"email": "a@x.org", "outcome": APPLIED, "detail": ""}]
    assert form(responses.calls[0]) == {"delivery_status": status}


@responses.activate
def test_apply_unsubscribe_batch_outcomes():
    responses.delete(f"{REST}/lists/{LIST}/roster/member", json={"a@x.org": True, "b@x.org": False})
    rows = [row(e) for e in ("a@x.org", "b@x.org", "c@x.org")]
    outcomes = apply_changes(client(), "unsubscribe", rows)
    assert [o["outcome"] for o in outcomes] == [APPLIED, ALREADY, FAILED]
    assert len(responses.calls) == 1


@responses.activate
def test_apply_subscribe_batch_keeps_going_past_a_refused_address():
    responses.post(f"{REST}/members", status=400, json={"description": 'Invalid Parameter "subscriber": .'})
    responses.post(f"{REST}/members", status=201)
    rows = [row(e, "X") for e in ("bad@x.org", "good@x.org")]
    assert [o["outcome"] for o in apply_changes(client(), "subscribe", rows)] == [FAILED, APPLIED]


@responses.activate
def test_goodbye_lists_unsubscribe_one_by_one():
    responses.delete(f"{REST}/lists/{LIST}/member/a%40x.org", status=204)
    responses.delete(f"{REST}/lists/{LIST}/member/b%40x.org", status=404)
    rows = [row(e, mail=True) for e in ("A@x.org", "b@x.org")]
    outcomes = apply_changes(client(), "unsubscribe", rows)
    assert [o["outcome"] for o in outcomes] == [APPLIED, ALREADY]


@responses.activate
def test_transient_failure_in_a_batch_raises_for_the_retry():
    responses.post(f"{REST}/members", status=503)
    with pytest.raises(TransientHTTPError):
        apply_changes(client(), "subscribe", [row("a@x.org", "A")])


@responses.activate
def test_a_database_race_answered_400_is_transient():
    # Measured on Mailman 3.3.10: two subscribes creating the same new address at once.
    responses.post(f"{REST}/members", status=400, json={
        "title": "400 Bad Request", "description": "(raised as a result of Query-invoked autoflush; ...) "
        "(sqlite3.IntegrityError) UNIQUE constraint failed: address.email [parameters: ('a@x.org', None)]"})
    with pytest.raises(TransientHTTPError) as caught:
        apply_changes(client(), "subscribe", [row("a@x.org", "A")])
    assert "a@x.org" not in str(caught.value)


def test_mass_unsubscribe_batch_must_be_one_list():
    with pytest.raises(ValueError):
        apply_changes(client(), "unsubscribe", [row("a@x.org"), row("b@x.org", list_id="other.x.org")])


@responses.activate
def test_missing_list_says_so():
    responses.get(f"{REST}/lists/{LIST}/roster/member", status=404, json={"title": "404 Not Found"})
    from tasks.errors import ListNotFound
    with pytest.raises(ListNotFound, match="Mailman has no list members.example.org"):
        client().roster(LIST)


@pytest.mark.parametrize("entry", [{"display_name": "x"}, {"email": None}, {"email": "no-at-sign"}, "text"])
@responses.activate
def test_unusable_roster_entries_fail_the_read(entry):
    from tasks.errors import UnexpectedResponse
    responses.get(f"{REST}/lists/{LIST}/roster/member", json={"start": 0, "total_size": 1, "entries": [entry]})
    responses.get(f"{REST}/members/find", json={"start": 0, "total_size": 0})
    with pytest.raises(UnexpectedResponse):
        client().roster(LIST)


@pytest.mark.parametrize(("body", "content_type"), [
    ("<html>502 Bad Gateway</html>", "text/html"), ("{not json", "application/json"), ("[]", "application/json"),
    ('{"total_size": "3", "entries": []}', "application/json"),
    ('{"total_size": 1, "entries": {"email": "a@x.org"}}', "application/json"),
], ids=["html-200", "malformed-json", "array", "string-total", "entries-object"])
@responses.activate
def test_bad_roster_bodies_fail_the_read(body, content_type):
    from tasks.errors import UnexpectedResponse
    responses.get(f"{REST}/lists/{LIST}/roster/member", body=body, content_type=content_type)
    with pytest.raises(UnexpectedResponse):
        client().roster(LIST)


# a one-member lookup is exact ------------------------------------------------------------

@responses.activate
def test_a_member_lookup_reads_that_address_only_never_a_wildcard_search():
    """`*@example.org` sent to members/find?subscriber= matches every member of the domain
    (measured on 3.3.10): the lookup must name the member resource of exactly that address."""
    responses.get(f"{REST}/lists/{LIST}/member/jane%40example.org",
                  json={"email": "jane@example.org", "member_id": "m1", "display_name": "Jane"})
    responses.get(f"{REST}/members/m1/all/preferences", json={"delivery_status": "by_moderator"})
    found = client().membership(LIST, ["*@example.org", "Jane@example.org"])
    assert found[["email", "member_id", "delivery_status"]].to_dict("records") == [
        {"email": "jane@example.org", "member_id": "m1", "delivery_status": "by_moderator"}]
    assert not any("members/find" in call.request.url for call in responses.calls)
    assert not any("%2A" in call.request.url for call in responses.calls)  # Mailman answers 500 for it


@responses.activate
def test_a_lookup_answered_with_another_address_is_refused():
    from tasks.errors import UnexpectedResponse

    responses.get(f"{REST}/lists/{LIST}/member/jane%40example.org",
                  json={"email": "someone@example.org", "member_id": "m9", "display_name": ""})
    with pytest.raises(UnexpectedResponse, match="not the member asked for"):
        client().membership(LIST, ["jane@example.org"])


@responses.activate
def test_bans_of_a_list_and_global_bans_are_read_whole():
    responses.get(f"{REST}/lists/a.example.org/bans", json={"total_size": 2, "start": 0, "entries": [
        {"email": "x@y.org", "list_id": "a.example.org"}, {"email": r"^.*@spam\.org$", "list_id": "a.example.org"}]})
    responses.get(f"{REST}/bans", json={"total_size": 0, "start": 0})  # Mailman leaves out an empty page's entries
    from tasks.mailman import read_bans

    assert read_bans(client(), ["a.example.org"]) == {"a.example.org": ["x@y.org", r"^.*@spam\.org$"]}
    assert [c.request.url.split("?")[0] for c in responses.calls] == [f"{REST}/bans", f"{REST}/lists/a.example.org/bans"]


@responses.activate
def test_a_ban_entry_without_an_email_is_refused():
    responses.get(f"{REST}/bans", json={"total_size": 1, "start": 0, "entries": [{"list_id": None}]})
    with pytest.raises(UnexpectedResponse, match="global bans: an entry has no email"):
        client().bans()


@responses.activate
def test_the_preferences_of_a_member_gone_since_the_roster_read_are_unknown_not_a_failed_run():
    from tasks.mailman import read_preferences
    import pandas as pd

    responses.get(f"{REST}/members/m1/all/preferences", json={"delivery_mode": "mime_digests",
                                                              "delivery_status": "by_user"})
    responses.get(f"{REST}/members/m2/all/preferences", status=404, json={"title": "404 Not Found"})
    wanting = pd.DataFrame({"list_id": [LIST, LIST], "member_id": ["m1", "m2"]})
    read = read_preferences.fn(client(), wanting)
    assert read.iloc[0][["delivery_mode", "delivery_status"]].tolist() == ["mime_digests", "by_user"]
    assert read.iloc[1][["delivery_mode", "delivery_status"]].isna().all()


@responses.activate
def test_moderators_are_read_from_their_own_roster_and_given_and_taken_by_role():
    responses.get(f"{REST}/lists/{LIST}/roster/moderator", json={"total_size": 1, "start": 0, "entries": [
        {"email": "Chair@Example.org", "member_id": "m1", "role": "moderator"}]})
    frame = client().moderators(LIST)
    assert frame.to_dict("records") == [{"email": "chair@example.org", "match_key": "chair@example.org",
                                         "member_id": "m1"}]
    responses.post(f"{REST}/members", status=201)
    responses.post(f"{REST}/members", status=409, json={"title": "409 Conflict", "description": "Member already subscribed"})
    responses.delete(f"{REST}/lists/{LIST}/moderator/old%40example.org", status=204)
    responses.delete(f"{REST}/lists/{LIST}/moderator/gone%40example.org", status=404)
    results = apply_changes(client(), "moderate", [row("new@example.org", "New"), row("again@example.org")])
    assert [r["outcome"] for r in results] == [APPLIED, ALREADY]
    assert form(responses.calls[1]) == {"list_id": LIST, "subscriber": "new@example.org", "display_name": "New",
                                        "role": "moderator", "pre_verified": "true", "pre_confirmed": "true",
                                        "pre_approved": "true"}
    results = apply_changes(client(), "unmoderate", [row("old@example.org", member_id="m2"),
                                                     row("gone@example.org", member_id="m3"),
                                                     row("forgotten@example.org")])  # no id: no call
    assert [r["outcome"] for r in results] == [APPLIED, ALREADY, ALREADY]
    assert len(responses.calls) == 5
