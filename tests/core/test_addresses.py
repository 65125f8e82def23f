import pandas as pd
import pytest

from tasks.core.addresses import match_key, refusal, repair

CASES = [
    # raw, repaired, match key, refusal (None = Mailman accepts it)
    ("jane@example.org", "jane@example.org", "jane@example.org", None),
    ("  Jane.Doe@Example.ORG ", "Jane.Doe@Example.ORG", "jane.doe@example.org", None),
    ("jane doe@example.org", "jane+doe@example.org", "jane+doe@example.org", None),
    ("a+tag@example.org", "a+tag@example.org", "a+tag@example.org", None),
    (None, None, None, "no email address in Novi"),
    ("", None, None, "no email address in Novi"),
    ("   ", None, None, "no email address in Novi"),
    ("jane@example org", "jane@example org", "jane@example org", "space in the address"),
    ("x@localhost", "x@localhost", "x@localhost", "domain without a dot"),
    ("x@example.org.", "x@example.org.", "x@example.org.", "address ends with a dot"),
    ("x@münchen.de", "x@münchen.de", "x@münchen.de", "non-ASCII characters in the address"),
    ("jürgen@example.org", "jürgen@example.org", "jürgen@example.org", "non-ASCII characters in the address"),
    ('"quoted"@example.org', '"quoted"@example.org', '"quoted"@example.org', "characters or form Mailman refuses"),
    ("-lead@example.org", "-lead@example.org", "-lead@example.org", "characters or form Mailman refuses"),
    ("a|b@example.org", "a|b@example.org", "a|b@example.org", "characters or form Mailman refuses"),
    ("x@@example.org", "x@@example.org", "x@@example.org", "not exactly one @ in the address"),
    ("no-at-sign.example.org", "no-at-sign.example.org", "no-at-sign.example.org",
     "not exactly one @ in the address"),
    ("a\r\nBcc: b@example.org", "a\r\nBcc:+b@example.org", "a\r\nbcc:+b@example.org",
     "control characters in the address"),
    ("*@example.org", "*@example.org", "*@example.org", "a * in the address (a wildcard to Mailman's search)"),
    ("a%b?c@example.org", "a%b?c@example.org", "a%b?c@example.org", None),
    ("x@exa..mple.org", "x@exa..mple.org", "x@exa..mple.org", "characters or form Mailman refuses"),
    ("a" * 250 + "@example.org", "a" * 250 + "@example.org", "a" * 250 + "@example.org",
     "address longer than 254 characters"),
]


@pytest.mark.parametrize(("raw", "repaired", "key", "why"), CASES,
                         ids=[repr(c[0])[:30] for c in CASES])
def test_repair_key_and_refusal(raw, repaired, key, why):
    fixed = repair(pd.Series([raw], dtype="object"))
    assert (None if pd.isna(fixed.iloc[0]) else fixed.iloc[0]) == repaired
    k = match_key(fixed).iloc[0]
    assert (None if pd.isna(k) else k) == key
    r = refusal(fixed).iloc[0]
    assert (None if pd.isna(r) else r) == why


def test_whole_columns_keep_their_index():
    raw = pd.Series(["a@example.org", None, "b c@example.org"], index=[10, 20, 30], dtype="object")
    fixed = repair(raw)
    assert list(fixed.index) == [10, 20, 30]
    assert refusal(fixed).isna().tolist() == [True, False, True]
