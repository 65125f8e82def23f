"""The Novi sandbox itself: Novi's API shape, auth, limits, churn and fault switches."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from sandbox import data
from sandbox.novi import Sandbox, create_app
from tasks.core.members import members_frame

KEY = "test-key"


@pytest.fixture
def sandbox():
    return Sandbox(size=200, seed=3, key=KEY, page_cap=50, webhook_url=None)


@pytest.fixture
def api(sandbox):
    client = TestClient(create_app(sandbox))
    client.headers["Authorization"] = f"Basic {KEY}"
    return client


def test_auth_is_the_key_as_is(sandbox):
    client = TestClient(create_app(sandbox))
    for header in (None, "Basic wrong", f"Bearer {KEY}", "Basic dGVzdC1rZXk="):
        headers = {"Authorization": header} if header else {}
        assert client.get("/api/members", headers=headers).status_code == 401
    assert client.get("/api/members", headers={"Authorization": f"Basic {KEY}"}).status_code == 200


def test_members_envelope_paging_and_cap(api):
    body = api.get("/api/members", params={"pageSize": 1000, "offset": 190}).json()
    assert body["TotalCount"] == 200 and len(body["Results"]) == 10
    assert len(api.get("/api/members", params={"pageSize": 1000, "offset": 0}).json()["Results"]) == 50
    record = body["Results"][0]
    assert {"UniqueID", "Email", "AccountEmail", "FirstName", "LastName", "Name", "Active", "MemberStatus",
            "MembershipExpires", "MemberType", "CustomerType", "Groups", "UnsubscribeFromEmails",
            "CustomFields"} <= set(record)


def test_one_member_and_novis_empty_not_found(api):
    uid = data.member_id(5)
    assert api.get(f"/api/members/{uid}").json()["UniqueID"] == uid
    assert api.get(f"/api/customers/{uid}").json()["UniqueID"] == uid
    missing = api.get("/api/members/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 200 and missing.content == b""
    assert api.get("/api/member-types").json()["TotalCount"] == 4
    assert {g["Name"] for g in api.get("/api/groups").json()["Results"]} >= {"Board of Directors"}


def test_data_is_deterministic_and_realistic():
    records = [data.make_member(1, i) for i in range(5000)]
    assert records == [data.make_member(1, i) for i in range(5000)]
    assert records != [data.make_member(2, i) for i in range(5000)]
    frame = members_frame(records)
    shares = frame["status"].value_counts(normalize=True)
    assert 0.6 < shares["current"] < 0.8 and shares["expired"] > 0.1
    assert {"grace_period", "non_member", "prospect"} <= set(shares.index)
    assert 0.005 < frame["quarantine"].notna().mean() < 0.05
    assert (~frame["active"]).sum() > 0 and (~frame["is_person"]).sum() > 0 and frame["opted_out"].sum() > 0
    assert frame["match_key"].duplicated().sum() > 0                       # the same address twice
    assert sum(1 for r in records if r["Email"] is None and r["AccountEmail"]) > 0
    assert sum(1 for r in records if r["Email"] and " " in r["Email"]) > 0   # "+" returned as a space
    assert data.make_member(1, 999_999)["UniqueID"] == data.member_id(999_999)  # any size, no memory


def test_churn_changes_what_it_says(api):
    before = {r["UniqueID"]: r for r in api.get("/api/members", params={"pageSize": 50, "offset": 0}).json()["Results"]}
    done = api.post("/_sandbox/churn", json={"lapse": 2, "renew": 1, "rename": 1, "change_address": 1,
                                              "opt_out": 1, "add": 2, "remove": 1, "end_term": 1,
                                              "change_chapter": 1, "lapse_company": 1}).json()
    assert {k: len(v) for k, v in done.items()} == {"lapse": 2, "renew": 1, "rename": 1, "change_address": 1,
                                                    "opt_out": 1, "add": 2, "remove": 1, "end_term": 1,
                                                    "change_chapter": 1, "lapse_company": 1}
    assert api.get("/api/members", params={"pageSize": 1, "offset": 0}).json()["TotalCount"] == 201
    for item in done["lapse"]:
        assert api.get(f"/api/members/{item['id']}").json()["MemberStatus"] == "expired"
    moved = done["change_address"][0]
    assert api.get(f"/api/members/{moved['id']}").json()["Email"] == moved["new"] != moved["old"]
    ended = api.get(f"/api/members/{done['end_term'][0]['id']}").json()["Committees"]
    assert any(s["CommitteeName"] == done["end_term"][0]["committee"] and s["EndDate"] for s in ended)
    chapter = done["change_chapter"][0]
    assert api.get(f"/api/members/{chapter['id']}").json()["CustomFields"]["Chapter"]["Value"] == chapter["new"]
    assert chapter["new"] != chapter["old"]
    company = api.get(f"/api/members/{done['lapse_company'][0]['id']}").json()
    assert company["CustomerType"] == "Company" and company["MemberStatus"] == "expired"
    removed = api.get(f"/api/members/{done['remove'][0]['id']}").json()
    assert removed["Active"] is False  # gone from the list, still readable one by one
    assert before  # the first page was readable before the churn


def test_companies_have_people_contacts_and_inheriting_members_found_by_parent_name(api):
    records = [data.make_member(3, i) for i in range(3000)]
    by_id = {r["UniqueID"]: r for r in records}
    companies = [r for r in records if r["CustomerType"] == "Company" and r["PrimaryContactUniqueId"]]
    assert companies
    for company in companies:
        for contact in (company["PrimaryContactUniqueId"], company["BillingContactUniqueId"]):
            if contact in by_id:  # the last company's contact may lie past the end
                assert by_id[contact]["ParentCustomerUniqueID"] == company["UniqueID"]
    assert any(r["MemberStatus"] == "inheriting" and r["ParentCustomerUniqueID"] for r in records)
    people = [r for r in api.get("/api/members", params={"pageSize": 200, "offset": 0}).json()["Results"]
              if r["ParentCustomerUniqueID"]]
    parent = api.get(f"/api/members/{people[0]['ParentCustomerUniqueID']}").json()
    found = api.get("/api/members", params={"pageSize": 100, "offset": 0, "parentName": parent["Name"].upper()}).json()
    assert found["TotalCount"] >= 1 and people[0]["UniqueID"] in {r["UniqueID"] for r in found["Results"]}
    assert all(r["ParentCustomerUniqueID"] == parent["UniqueID"] for r in found["Results"])


def test_a_page_is_each_record_as_read_alone_before_and_after_an_edit_and_a_churn(api, sandbox):
    """Pages serve each record's JSON made once: never a record as it was before it changed."""
    def page():
        return api.get("/api/members", params={"pageSize": 50, "offset": 0}).json()["Results"]

    first = page()
    assert first == [api.get(f"/api/members/{r['UniqueID']}").json() for r in first]
    assert first == [data.make_member(3, i) for i in range(50)]
    api.patch(f"/_sandbox/members/{data.member_id(7)}", json={"MemberStatus": "expired"})
    assert page()[7]["MemberStatus"] == "expired" and page()[6] == first[6]
    api.post("/_sandbox/churn", json={"lapse": 5, "rename": 5, "change_address": 5, "add": 3, "remove": 3})
    assert page() == [api.get(f"/api/members/{uid}").json() for uid in sandbox.site.order[:50]]


def test_edit_one_member(api):
    uid = data.member_id(7)
    assert api.patch(f"/_sandbox/members/{uid}", json={"MemberStatus": "expired"}).json()["MemberStatus"] == "expired"
    assert api.get(f"/api/members/{uid}").json()["MemberStatus"] == "expired"
    assert api.patch("/_sandbox/members/nope", json={}).status_code == 404


@pytest.mark.parametrize(("faults", "offset", "status", "check"), [
    ({"fail_offsets": [50]}, 50, 500, None),
    ({"html_offsets": [0]}, 0, 200, lambda r: r.headers["content-type"].startswith("text/html")),
    ({"short_offsets": [0]}, 0, 200, lambda r: len(r.json()["Results"]) == 25),
], ids=["500-page", "html-200", "short-page"])
def test_page_faults(api, faults, offset, status, check):
    api.post("/_sandbox/faults", json=faults)
    response = api.get("/api/members", params={"pageSize": 50, "offset": offset})
    assert response.status_code == status
    assert check is None or check(response)
    api.delete("/_sandbox/faults")
    assert api.get("/api/members", params={"pageSize": 50, "offset": offset}).status_code == 200


def test_total_changes_mid_sweep(api):
    api.post("/_sandbox/faults", json={"total_changes_after_pages": 1})
    first = api.get("/api/members", params={"pageSize": 50, "offset": 0}).json()["TotalCount"]
    second = api.get("/api/members", params={"pageSize": 50, "offset": 50}).json()["TotalCount"]
    assert (first, second) == (200, 201)


@pytest.mark.parametrize("retry_after", [True, False])
def test_rate_limit_answers_429(api, retry_after):
    api.post("/_sandbox/faults", json={"rate_limit_per_second": 2, "send_retry_after": retry_after})
    statuses = [api.get("/api/members", params={"pageSize": 1, "offset": 0}) for _ in range(4)]
    limited = [r for r in statuses if r.status_code == 429]
    assert limited and all(("Retry-After" in r.headers) == retry_after for r in limited)


def test_unknown_fault_names_are_refused(api):
    assert api.post("/_sandbox/faults", json={"fail_offset": 1}).status_code == 422


def test_webhooks_are_sent_novi_style_on_churn_and_on_demand():
    import json as jsonlib
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    received = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            received.append(jsonlib.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sandbox = Sandbox(size=50, seed=3, key=KEY, page_cap=50,
                          webhook_url=f"http://127.0.0.1:{server.server_port}/hook")
        api = TestClient(create_app(sandbox))
        api.headers["Authorization"] = f"Basic {KEY}"
        done = api.post("/_sandbox/churn", json={"lapse": 1, "rename": 1, "add": 1}).json()
        assert api.post("/_sandbox/webhook", json={"event": "customer.removed", "id": "abc"}).json()["status"] == 204
    finally:
        server.shutdown()
    # a lapse fires nothing (Novi derives status from dates); the rest fire their events
    assert received == [{"event": "customer.updated", "entityUniqueId": done["rename"][0]["id"]},
                        {"event": "customer.created", "entityUniqueId": done["add"][0]["id"]},
                        {"event": "customer.removed", "entityUniqueId": "abc"}]
