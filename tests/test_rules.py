import pytest

from tasks.errors import RulesError
from tasks.rules import load_rules, parse_rules, single_list_rules


def test_defaults_and_shortcut():
    rules = single_list_rules("members@example.org")
    rule = rules.lists[0]
    assert rule.list_id == "members.example.org"
    assert rule.statuses == ["current", "grace_period"]
    assert (rule.active_only, rule.persons_only, rule.exclude_opted_out) == (True, False, True)
    assert (rule.lapsed, rule.scope, rule.update_names) == ("unsubscribe", "managed", True)
    assert (rule.send_welcome, rule.send_goodbye, rule.allow_empty) == (False, False, False)
    assert rules.novi.address_fields == ["Email", "AccountEmail"]


def test_defaults_block_applies_to_every_list_and_lists_override(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("""
novi: {address_fields: [AccountEmail], page_size: 200}
defaults: {lapsed: hold, statuses: [Current]}
lists:
  - list_id: members@example.org
  - list_id: board.example.org
    groups: [Board of Directors]
    lapsed: unsubscribe
    protected: [Chair@Example.org]
""")
    rules = load_rules(path)
    a, b = rules.lists
    assert (a.lapsed, a.statuses) == ("hold", ["current"])
    assert (b.lapsed, b.groups, b.protected) == ("unsubscribe", ["board of directors"], ["chair@example.org"])
    assert rules.novi.page_size == 200


BAD = [
    ({"lists": []}, "lists"),
    ({}, "lists"),
    ({"lists": [{"list_id": "a.example.org", "lapse": "hold"}]}, "lapse"),
    ({"lists": [{"list_id": "a.example.org", "lapsed": "delete"}]}, "lapsed"),
    ({"lists": [{"list_id": "a.example.org", "scope": "all"}]}, "scope"),
    ({"lists": [{"list_id": "a.example.org", "statuses": []}]}, "statuses"),
    ({"lists": [{"list_id": "a.example.org", "protected": ["not-an-address"]}]}, "protected"),
    ({"lists": [{"list_id": "a@example.org"}, {"list_id": "a.example.org"}]}, "more than once"),
    ({"lists": [{"list_id": "a.example.org"}], "novi": {"page_size": 0}}, "page_size"),
    ({"lists": [{"list_id": "a.example.org"}], "novi": {"address_fields": ["Mail"]}}, "address_fields"),
    ({"lists": [{"list_id": "a.example.org"}], "extra": 1}, "extra"),
    ({"defaults": {"list_id": "x"}, "lists": [{"list_id": "a.example.org"}]}, "defaults cannot set list_id"),
    ({"lists": [{"list_id": "two words"}]}, "list_id"),
]


@pytest.mark.parametrize(("data", "mentions"), BAD, ids=[m for _, m in BAD])
def test_invalid_rules_are_clear_errors(data, mentions):
    with pytest.raises(RulesError) as caught:
        parse_rules(data, "rules.yaml")
    assert mentions in str(caught.value)
    assert str(caught.value).startswith("rules.yaml is not valid")


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(RulesError, match="does not exist"):
        load_rules(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lists: [\n")
    with pytest.raises(RulesError, match="not valid YAML"):
        load_rules(bad)
