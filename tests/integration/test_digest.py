"""The change digest on a real core: it reaches a real SMTP sink (the one the core's mail goes
to), one message per run and destination, to the right people per list; a dry run sends none."""

from __future__ import annotations

from prefect_email import EmailServerCredentials

from tests.integration.helpers import lists_for, sync



def subject(message) -> str:
    return " ".join(str(message["Subject"]).split())  # unfolded, as a mail client shows it


def digests(core) -> list:
    return [m for m in core.messages() if subject(m).startswith("[novi-mailman]")]


def text(message) -> str:
    return message.get_payload(decode=True).decode(message.get_content_charset() or "utf-8")


def test_each_lists_people_hear_once_per_run_what_changed_and_a_dry_run_says_nothing(world, tmp_path):
    admin, novi, core = world["admin"], world["novi"], world["core"]
    members, board, quiet = lists_for(world, "digest-members", "digest-board", "digest-quiet")
    staff = f"membership@{world['domain']}"
    owner = f"chair@{world['domain']}"
    admin.add_role(board, owner, "owner")
    EmailServerCredentials(smtp_server="127.0.0.1", smtp_port=core.smtp_port, smtp_type="INSECURE").save(
        "it-digest-smtp", overwrite=True)
    by_mail = {"email_block": "it-digest-smtp", "from_address": f"novi-mailman@{world['domain']}"}
    rules = [{"list_id": members, "digest": {**by_mail, "to": [staff]}},
             {"list_id": board, "digest": {**by_mail, "to": "owners"}},
             {"list_id": quiet}]
    core.clear_messages()

    dry, _ = sync(tmp_path, rules, dry_run=True, mailman_block=world["mailman_block"])
    assert dry.is_completed() and digests(core) == []

    first, _ = sync(tmp_path, rules, mailman_block=world["mailman_block"])
    assert first.is_completed(), first.message
    sent = {str(m["To"]): m for m in digests(core)}
    assert set(sent) == {staff, owner}  # one each, nobody else; the quiet list sends none
    body = text(sent[staff])
    figures = next(f for f in first.result()["lists"] if f["list_id"] == members)
    assert f"== {members} ==" in body and f"Joined ({figures['changes']['subscribe']}):" in body
    records = {r["UniqueID"]: r for r in novi.records()}
    on_list = set(admin.roster(members))
    named = [r for r in records.values() if (r["Email"] or "").strip().lower() in on_list][:3]
    for record in named:  # people named with their Novi id, for staff to find the record
        assert f"<{record['Email'].strip().lower()}> (Novi {record['UniqueID']})" in body
    assert subject(sent[owner]).startswith("[novi-mailman] +") and f"== {board} ==" in text(sent[owner])
    assert members not in text(sent[owner])
    for secret in ("sandbox-api-key", "restpass", "it-digest-smtp"):
        assert secret not in body

    core.clear_messages()
    lapsing = next(r for r in named)
    novi.edit(lapsing["UniqueID"], MemberStatus="expired")
    churn, _ = sync(tmp_path, rules, mailman_block=world["mailman_block"])
    assert churn.is_completed(), churn.message
    sent = {str(m["To"]): m for m in digests(core)}
    assert set(sent) == {staff, owner}  # they were on both lists: one message each, for this run
    message = sent[staff]
    assert "Left (1):" in text(message)
    assert f"<{lapsing['Email'].strip().lower()}> (Novi {lapsing['UniqueID']}): status expired" in text(message)
