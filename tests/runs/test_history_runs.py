"""The history flows a user runs from the UI: why someone was removed, what changed on a list."""

from __future__ import annotations

import pandas as pd
from prefect.artifacts import Artifact
from prefect.client.orchestration import get_client

from tasks.ledger import Ledger
from tasks.report import SUMMARY_KEY
from tests.fakes import FakeMailman, FakeNovi
from tests.runs.sync_harness import LIST, population, run


def test_address_history_answers_why_someone_was_removed_in_the_ui(blocks, tmp_path):
    from flows.history import address_history
    from tasks.history import HISTORY_KEY

    records, roster = population()
    novi, mailman = FakeNovi(records), FakeMailman({LIST: roster})
    assert run(novi, mailman, tmp_path)[0].is_completed()
    state = address_history(address="EXP0@example.org", return_state=True)
    assert state.is_completed() and state.message == "1 change recorded for EXP0@example.org on 1 list"
    markdown = Artifact.get(HISTORY_KEY).data
    assert "| unsubscribe | applied | status expired |" in markdown.replace(f"| {LIST} ", "")
    assert "`address-history/on-demand`" in Artifact.get(SUMMARY_KEY).data  # the summary says how to ask
    nobody = address_history(address="nobody@example.org", return_state=True)
    assert nobody.is_completed() and nobody.message == "Nothing recorded for nobody@example.org"
    bad = address_history(address="not an address", return_state=True)
    assert bad.is_failed() and bad.message == "address must be one email address"


def test_list_history_answers_what_changed_on_a_list_this_week(blocks, tmp_path):
    """Issue 29, item 8: it took opening every version of a list's plan table."""
    from flows.history import list_history
    from tasks.history import LIST_HISTORY_KEY

    records, roster = population()
    novi, mailman = FakeNovi(records), FakeMailman({LIST: roster})
    first, _ = run(novi, mailman, tmp_path)
    assert first.is_completed()
    applied = Ledger().list_history(LIST, pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=1),
                                    pd.Timestamp.now(tz="UTC") + pd.Timedelta(minutes=1))
    state = list_history(list_id=LIST.replace(".", "@", 1), return_state=True)
    assert state.is_completed() and state.message.startswith(f"{len(applied)} changes on {LIST} from ")
    assert f"by 1 run: {len(applied)} applied (" in state.message
    markdown = Artifact.get(LIST_HISTORY_KEY).data
    assert markdown.count("| applied |") == len(applied) > 0
    assert "| exp0@example.org | unsubscribe | applied | status expired |" in markdown.lower()
    nothing = list_history(list_id="other@example.org", days=1, return_state=True)
    assert nothing.is_completed() and nothing.message.startswith("Nothing recorded on other.example.org from ")
    bad = list_history(list_id="not a list/../x", return_state=True)
    assert bad.is_failed() and "not a Mailman list id" in bad.message


def test_a_history_run_is_named_after_what_it_was_asked(blocks, monkeypatch):
    """Issue 29, item 7: every address-history run had one name; a name typed in the form is kept."""
    from types import SimpleNamespace

    import flows.history
    from flows.history import address_history, asked_name

    asked = address_history(address="jane@example.org", return_state=True)
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(asked.state_details.flow_run_id).name == "address-history-jane@example.org"
    for given, named in [("why jane", "why jane"), ("jane-q3", "jane-q3"), ("wise-cheetah", "list-history-m.example.org-7")]:
        monkeypatch.setattr(flows.history, "flow_run", SimpleNamespace(
            get_name=lambda given=given: given, get_parameters=lambda: {"list_id": "m.example.org", "days": 7}))
        assert asked_name("list-history", "list_id", "days") == named

