"""Email addresses at the edge: Novi's quirks repaired, match keys, and what Mailman refuses.

Keys are normalised once, here, for both sides of the diff. Every function takes and returns
whole pandas Series so that a million records cost one pass, not a million calls.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

MAX_LENGTH = 254  # RFC 5321 path limit; Mailman stores longer ones but no MTA delivers them

# Mailman's validator refuses these characters anywhere (mailman/email/validate.py `_badchars`),
# as well as spaces, non-ASCII text, a leading '-', and a domain without a dot.
_LOCAL = r"[A-Za-z0-9!#$%&'*+/=?_`{}~.\-]+"
_DOMAIN = r"[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+"
_VALID = rf"(?!-){_LOCAL}@{_DOMAIN}"


def repair(raw: pd.Series) -> pd.Series:
    """Trimmed addresses with Novi's space-for-plus put back (`jane doe@x.org` → `jane+doe@x.org`).

    Empty strings become missing values, as Novi uses both for "none".
    """
    text = raw.astype("string").str.strip()
    text = text.str.replace(r" (?=[^@]*@)", "+", regex=True)
    return text.mask(text == "")


def match_key(address: pd.Series) -> pd.Series:
    """The key both sides are compared on: casefolded (Mailman stores addresses lower-cased)."""
    return address.astype("string").str.casefold()


def refusal(address: pd.Series) -> pd.Series:
    """Why Mailman would refuse each (repaired) address, or missing where it would accept it."""
    text = address.astype("string")
    missing = text.isna()
    filled = text.fillna("")
    checks = [
        (missing, "no email address in Novi"),
        (filled.str.len() > MAX_LENGTH, f"address longer than {MAX_LENGTH} characters"),
        (filled.str.contains(r"[\x00-\x1f\x7f]", regex=True), "control characters in the address"),
        (filled.str.contains(r"[^\x00-\x7f]", regex=True), "non-ASCII characters in the address"),
        (filled.str.contains(" ", regex=False), "space in the address"),
        (filled.str.count("@") != 1, "not exactly one @ in the address"),
        (filled.str.endswith("."), "address ends with a dot"),
        (~filled.str.contains(r"@[^@]*\.", regex=True), "domain without a dot"),
        # Mailman accepts it, but its member search reads `*` as a wildcard over every address
        # and name: such a record is almost surely a typo, and other tools would misread it.
        (filled.str.contains("*", regex=False), "a * in the address (a wildcard to Mailman's search)"),
        (~filled.str.fullmatch(_VALID), "characters or form Mailman refuses"),
    ]
    reason = np.select([c.to_numpy(dtype=bool) for c, _ in checks], [r for _, r in checks],
                       default="")
    return pd.Series(reason, index=address.index, dtype="string").mask(lambda s: s == "")


def banned(keys: pd.Series, bans: Sequence[str]) -> pd.Series:
    """Whether Mailman bans each address (match keys), as its BanManager judges: an exact ban,
    or a ban starting with `^` as a regular expression matched from the start, ignoring case.

    Exact bans are compared casefolded (Mailman compares them as stored): a ban that differs
    only in case still keeps the address off, rather than failing its subscribe every run. A
    pattern Python cannot compile is no ban (Mailman, also Python, could not apply it either)."""
    exact = {b.strip().casefold() for b in bans if not b.startswith("^")}
    hit = keys.isin(exact).fillna(False).to_numpy(dtype=bool, copy=True)
    for pattern in (b for b in bans if b.startswith("^")):
        try:
            compiled = re.compile(pattern, re.IGNORECASE)
        except re.error:
            continue
        hit |= keys.str.match(compiled).fillna(False).to_numpy(dtype=bool)
    return pd.Series(hit, index=keys.index)
